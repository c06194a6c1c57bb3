/**
 * Real peers for the qcow2 tests: qemu-img and qemu-io from qemu-utils (installed by the project's own
 * scripts/guest/install-packages), temporary directories, and helpers that read a whole image through ringvm.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockBackend } from '../../../../src/devices/blk/block-backend.js';
import { run, script } from '../../../guest/guest-harness.js';

/** Installs qemu-utils when missing (a fresh machine: minutes). */
export async function ensureQemuUtils(): Promise<void> {
  const inst = await run(script('install-packages'), [], 20 * 60_000);
  assert.equal(inst.code, 0, `install-packages failed:\n${inst.stdout}\n${inst.stderr}`);
}

/** Runs qemu-img; throws with its output on a non-zero exit. */
export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs qemu-img, returning the exit status and output instead of throwing. */
export function qemuImgStatus(...args: string[]): { status: number; stdout: string; stderr: string } {
  try {
    return { status: 0, stdout: qemuImg(...args), stderr: '' };
  } catch (e) {
    const err = e as { status?: number; stdout?: string; stderr?: string };
    return { status: err.status ?? -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** Runs qemu-io commands on an image (format qcow2 unless told). */
export function qemuIo(path: string, commands: readonly string[], format = 'qcow2'): string {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(path);
  const out = execFileSync('qemu-io', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.doesNotMatch(out, /error|failed/i, out);
  return out;
}

export interface QemuCheck {
  readonly status: number;
  readonly json: {
    'check-errors'?: number;
    corruptions?: number;
    leaks?: number;
    'image-end-offset'?: number;
  };
  readonly text: string;
}

/** `qemu-img check --output=json` (exit status 0 clean, 2 corruptions, 3 leaks). */
export function qemuCheck(path: string): QemuCheck {
  const r = qemuImgStatus('check', '--output=json', path);
  return {
    status: r.status,
    json: JSON.parse(r.stdout || '{}') as QemuCheck['json'],
    text: r.stdout + r.stderr,
  };
}

/** Asserts `qemu-img check` finds no corruption (and, unless allowed, no leak). */
export function assertQemuCheckClean(path: string, allowLeaks = false): void {
  const c = qemuCheck(path);
  assert.ok(
    c.status === 0 || (allowLeaks && c.status === 3),
    `qemu-img check ${path}: status ${c.status}\n${c.text}`,
  );
  assert.equal(c.json.corruptions ?? 0, 0, c.text);
  assert.equal(c.json['check-errors'] ?? 0, 0, c.text);
  if (!allowLeaks) assert.equal(c.json.leaks ?? 0, 0, c.text);
}

/** A temporary directory, removed by `cleanup`. */
export function tempDir(prefix: string): {
  dir: string;
  path: (name: string) => string;
  cleanup: () => void;
} {
  const dir = mkdtempSync(join(tmpdir(), `${prefix}${process.pid}-`));
  return {
    dir,
    path: (name) => join(dir, name),
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Reads the whole disk of `backend` (in `chunk`-byte reads, split across two buffers to exercise vectors). */
export async function readAll(backend: BlockBackend, chunk = 1 << 20): Promise<Uint8Array> {
  const out = new Uint8Array(backend.size);
  for (let pos = 0; pos < backend.size; pos += chunk) {
    const n = Math.min(chunk, backend.size - pos);
    const half = Math.floor(n / 2 / 512) * 512;
    await backend.readv(pos, [out.subarray(pos, pos + half), out.subarray(pos + half, pos + n)]);
  }
  return out;
}

/** A deterministic pseudo-random generator (xorshift32). */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 4) {
    const v = rand();
    out[i] = v & 0xff;
    if (i + 1 < n) out[i + 1] = (v >>> 8) & 0xff;
    if (i + 2 < n) out[i + 2] = (v >>> 16) & 0xff;
    if (i + 3 < n) out[i + 3] = (v >>> 24) & 0xff;
  }
  return out;
}

/** The first index where `a` and `b` differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  if (Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length)))
    return -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}
