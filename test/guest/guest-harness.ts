/**
 * Shared harness for tests that boot the real UML guest (scripts/guest/*): run a script in its own process
 * group (killed whole on timeout), boot a guest command, deterministic data, waits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** The repository root: the nearest ancestor holding scripts/guest (works from test/ and from build/test/). */
export function repoRoot(): string {
  let dir = import.meta.dirname;
  for (;;) {
    if (existsSync(join(dir, 'scripts', 'guest', 'run-uml'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`no scripts/guest/run-uml above ${import.meta.dirname}`);
    dir = up;
  }
}

export const root = repoRoot();
export const script = (name: string) => join(root, 'scripts', 'guest', name);

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a script in its own process group; on timeout the whole group (linux.uml and its helpers) is killed. */
export function run(file: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const child = spawn(file, args, { cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      killGroup(child);
      reject(new Error(`${file} ${args.join(' ')} timed out after ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - start });
    });
  });
}

export function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export function runUml(args: string[], timeoutMs = 120_000): Promise<RunResult> {
  return run(script('run-uml'), ['--timeout', String(Math.ceil(timeoutMs / 1000) - 5), ...args], timeoutMs);
}

/** Deterministic pseudo-random bytes (xorshift32), so a zero-filled or shifted image cannot pass. */
export function pattern(bytes: number, seed: number): Buffer {
  const words = new Uint32Array(bytes / 4);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return Buffer.from(words.buffer);
}

export async function waitFor(path: string, timeoutMs: number, what: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms\n${what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const MiB = 1024 * 1024;

/** The argv of process `pid`, or [] if it has exited (even between finding its pid and reading this). */
export function commandLine(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
  } catch {
    return []; // ENOENT, or ESRCH when it exits while the file is open
  }
}

/** Pids whose command line contains `needle` (UML's helper processes share the kernel's command line). */
export function processesWith(needle: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    if (commandLine(Number(name)).some((arg) => arg.includes(needle))) pids.push(Number(name));
  }
  return pids;
}
