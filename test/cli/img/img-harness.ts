/**
 * Runs `ringvm img` (the built bin, as a process) and the real qemu-img / qemu-io on the same files.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

export interface Ran {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function ran(cmd: string, args: readonly string[], cwd?: string): Ran {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    ...(cwd !== undefined && { cwd }),
  });
  if (r.error !== undefined) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `ringvm img ARGS` in `cwd`. */
export function img(args: readonly string[], cwd?: string): Ran {
  return ran(process.execPath, [BIN, 'img', ...args], cwd);
}

/** `ringvm img ARGS`, which must exit 0; returns stdout. */
export function imgOk(args: readonly string[], cwd?: string): string {
  const r = img(args, cwd);
  if (r.status !== 0)
    throw new Error(`ringvm img ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** A QEMU tool (qemu-img, qemu-io), which must exit with `expect` (default 0); returns stdout. */
export function qemu(
  tool: 'qemu-img' | 'qemu-io',
  args: readonly string[],
  expect = 0,
  cwd?: string,
): string {
  const r = ran(tool, args, cwd);
  if (r.status !== expect) {
    throw new Error(
      `${tool} ${args.join(' ')} exited ${r.status} (expected ${expect}):\n${r.stderr}${r.stdout}`,
    );
  }
  return r.stdout;
}

/** `qemu-img info --output=json` of FILE. */
export function qemuInfo(file: string, extra: readonly string[] = []): Record<string, unknown> {
  return JSON.parse(qemu('qemu-img', ['info', '--output=json', ...extra, file])) as Record<string, unknown>;
}
