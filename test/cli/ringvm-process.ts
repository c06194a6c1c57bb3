/**
 * The compiled `ringvm` command as a child process, for tests that run it as a user would.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** build/src/cli/main.js, next to the compiled tests. */
export const mainJs = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
/** The tests run from build/ (the command exists compiled); under tsx they do not. */
export const compiled = import.meta.url.endsWith('.js') && existsSync(mainJs);

/** Runs `ringvm ARGS` with stdin /dev/null; resolves with its exit status and everything it printed. */
export function ringvm(args: string[]): Promise<{ status: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [mainJs, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('close', (status) => {
      resolve({ status, out, err });
    });
  });
}

/** A long-running `ringvm serve` child process (see {@link serveProcess}). */
export interface ServeProcess {
  readonly child: ChildProcess;
  /** Resolves with the exit status when the process has ended. */
  readonly exit: Promise<number | null>;
  out(): string;
  err(): string;
  /** Resolves when every export printed its `listening` line; rejects if the process ends or `timeoutMs` passes. */
  listening(exports: number, timeoutMs?: number): Promise<void>;
  /** SIGTERM, and SIGKILL if it has not ended after `graceMs`; resolves with the exit status. */
  stop(graceMs?: number): Promise<number | null>;
}

/** Starts `ringvm serve ARGS` (stdin /dev/null), collecting what it prints. */
export function serveProcess(args: string[]): ServeProcess {
  const child = spawn(process.execPath, [mainJs, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  let ended = false;
  const exit = new Promise<number | null>((resolve) => {
    child.once('close', (code) => {
      ended = true;
      resolve(code);
    });
  });
  const stop = async (graceMs = 30_000): Promise<number | null> => {
    if (ended) return exit;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    try {
      return await exit;
    } finally {
      clearTimeout(timer);
    }
  };
  const listening = async (exports: number, timeoutMs = 60_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while ((out.match(/ listening on /g) ?? []).length < exports) {
      if (ended || Date.now() > deadline) {
        throw new Error(
          `ringvm serve ${args.join(' ')}: not listening (${ended ? 'exited' : 'timed out'})\n${out}\n${err}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  return { child, exit, out: () => out, err: () => err, listening, stop };
}

/**
 * `node` arguments of `ringvm run` booting a UML guest whose eth0 is one net export on `netdev` (a --netdev value
 * with id n0), the host directory `share` at /host, running `command`; `exportKeys` are more export keys.
 */
export function netGuestRunArgs(share: string, netdev: string, command: string, exportKeys = ''): string[] {
  return [
    mainJs,
    'run',
    '--share',
    share,
    '--netdev',
    netdev,
    '--export',
    `type=vhost-user-net,id=e0,netdev=n0${exportKeys}`,
    '--',
    command,
  ];
}
