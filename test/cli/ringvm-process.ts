/**
 * The compiled `ringvm` command as a child process, for tests that run it as a user would.
 */
import { spawn } from 'node:child_process';
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
