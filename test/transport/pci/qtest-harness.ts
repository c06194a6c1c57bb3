/**
 * Shared set-up for the tests that drive QEMU's real devices over qtest: the Debian packages (QEMU) installed
 * by the project's own script, raw disk images in a temporary directory, and a last-resort kill of every QEMU
 * this test process started (each carries `ringvm-qtest-<pid>-<n>` on its command line).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processesWith, run, script } from '../../guest/guest-harness.js';

/** Installs QEMU when missing (a fresh machine: minutes). */
export async function ensureQemu(): Promise<void> {
  const inst = await run(script('install-packages'), [], 20 * 60_000);
  assert.equal(inst.code, 0, `install-packages failed:\n${inst.stdout}\n${inst.stderr}`);
}

/** SIGKILLs every QEMU started by this process that is still alive. */
export function killLeftoverQemus(): void {
  for (const pid of processesWith(`ringvm-qtest-${process.pid}-`)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }
}

/** A temporary directory for images, removed by `cleanup`. */
export function workDir(prefix: string): {
  dir: string;
  image: (name: string, bytes: Uint8Array) => string;
  cleanup: () => void;
} {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    image: (name, bytes) => {
      const path = join(dir, name);
      writeFileSync(path, bytes);
      return path;
    },
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** `-drive` arguments for a raw image. */
export function rawDrive(id: string, file: string, extra = ''): string[] {
  return ['-drive', `if=none,id=${id},file=${file},format=raw${extra}`];
}
