/**
 * Crash consistency at the library level: a child process writes a qcow2 image through Qcow2Image (data,
 * write-zeroes, flushes; with and without lazy refcounts, a backing file, a small metadata cache that forces
 * evictions) and is SIGKILLed at a random moment. Every time, `qemu-img check` finds no corruption (leaked
 * clusters are allowed; a dirty lazy-refcounts image must instead be repaired by `qemu-img check -r all`) and every write acknowledged before the last completed flush reads back intact —
 * through ringvm and through QEMU. A read-write reopen by ringvm then repairs a dirty image and leaves it
 * consistent.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Qcow2Image } from '../../../../src/backends/block/qcow2/index.js';
import { isZeroWrite, slotOrder, slotPattern } from './crash-writer.js';
import {
  assertQemuCheckClean,
  ensureQemuUtils,
  firstDifference,
  prng,
  qemuImg,
  qemuImgStatus,
  randomBytes,
  tempDir,
} from './qemu-tools.js';

const tmp = tempDir('ringvm-qcow2-crash-');
const writer = join(import.meta.dirname, 'crash-writer.js');
const MiB = 1 << 20;

before(async () => {
  await ensureQemuUtils();
});
after(() => {
  tmp.cleanup();
});

/** Runs the writer until `killAfterMs` past READY (or until it is done); returns the last flushed write. */
function runAndKill(args: string[], killAfterMs: number): Promise<{ lastFlushed: number; done: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writer, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timer: NodeJS.Timeout | undefined;
    const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (timer === undefined && out.includes('READY\n'))
        timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      if (out.includes('DONE\n')) child.kill('SIGKILL');
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      if (timer !== undefined) clearTimeout(timer);
      if (signal !== 'SIGKILL') {
        reject(new Error(`writer exited ${code} ${signal}: ${err}`));
        return;
      }
      const flushed = [...out.matchAll(/^F (\d+)$/gm)].map((m) => Number(m[1]));
      resolve({
        lastFlushed: flushed.length === 0 ? -1 : (flushed[flushed.length - 1] as number),
        done: out.includes('DONE'),
      });
    });
  });
}

describe('SIGKILL while writing a qcow2 image', () => {
  const configs = [
    {
      name: '64 KiB clusters',
      clusterSize: 65536,
      lazy: false,
      backing: false,
      cache: 32 * MiB,
      slot: 48 * 1024,
    },
    {
      name: 'lazy refcounts',
      clusterSize: 65536,
      lazy: true,
      backing: false,
      cache: 32 * MiB,
      slot: 40 * 1024,
    },
    {
      name: '4 KiB clusters, tiny cache',
      clusterSize: 4096,
      lazy: false,
      backing: true,
      cache: 16 * 1024,
      slot: 6144,
    },
    {
      name: '512 B clusters, backing file, lazy',
      clusterSize: 512,
      lazy: true,
      backing: true,
      cache: 4096,
      slot: 2560,
    },
  ];
  for (const cfg of configs) {
    test(cfg.name, { timeout: 300_000 }, async () => {
      const rand = prng(cfg.clusterSize + (cfg.lazy ? 1 : 0));
      for (let round = 0; round < 5; round++) {
        const path = tmp.path(`crash-${cfg.clusterSize}-${cfg.lazy}-${round}.qcow2`);
        const slots = 1024;
        const size = Math.ceil((slots * cfg.slot) / MiB) * MiB;
        let base: Uint8Array | undefined;
        if (cfg.backing) {
          base = randomBytes(rand, size);
          writeFileSync(`${path}.base`, base);
          await Qcow2Image.create(path, {
            clusterSize: cfg.clusterSize,
            lazyRefcounts: cfg.lazy,
            backingFile: `${path}.base`,
            backingFormat: 'raw',
          });
        } else {
          await Qcow2Image.create(path, { size, clusterSize: cfg.clusterSize, lazyRefcounts: cfg.lazy });
        }
        const seed = rand();
        const killAfter = 20 + (rand() % 400);
        const { lastFlushed } = await runAndKill(
          [path, String(seed), String(cfg.slot), String(slots), String(cfg.cache), String(3 + (rand() % 20))],
          killAfter,
        );
        if (cfg.lazy) {
          // A dirty lazy-refcounts image has stale refcounts by design; QEMU repairs it, as ringvm does below.
          const copy = `${path}.qemu-repair.qcow2`;
          copyFileSync(path, copy);
          const repaired = qemuImgStatus('check', '-r', 'all', copy);
          assert.equal(repaired.status, 0, repaired.stdout + repaired.stderr);
        } else {
          assertQemuCheckClean(path, true);
        }
        const order = slotOrder(seed, slots);
        // Every write up to the last completed flush is there, through ringvm and through QEMU.
        const qemuRaw = `${path}.raw`;
        qemuImg('convert', '-O', 'raw', path, qemuRaw);
        const viaQemu = new Uint8Array(readFileSync(qemuRaw));
        const image = await Qcow2Image.open(path, { readOnly: true });
        try {
          const got = new Uint8Array(cfg.slot);
          for (let i = 0; i <= lastFlushed; i++) {
            const slot = order[i] as number;
            const expected = isZeroWrite(i) ? new Uint8Array(cfg.slot) : slotPattern(i, cfg.slot);
            await image.readv(slot * cfg.slot, [got]);
            assert.equal(
              firstDifference(got, expected),
              -1,
              `round ${round}: flushed write ${i} (slot ${slot}) via ringvm`,
            );
            const q = viaQemu.subarray(slot * cfg.slot, (slot + 1) * cfg.slot);
            assert.equal(firstDifference(q, expected), -1, `round ${round}: flushed write ${i} via QEMU`);
          }
          // Slots never written still show the backing file (or zeros).
          const written = new Set(order.slice(0, lastFlushed + 1));
          for (let s = 0; s < slots; s += 37) {
            if (written.has(s) || order.indexOf(s) <= lastFlushed + 64) continue; // maybe written after the flush
            await image.readv(s * cfg.slot, [got]);
            const expected = base?.subarray(s * cfg.slot, (s + 1) * cfg.slot) ?? new Uint8Array(cfg.slot);
            assert.equal(firstDifference(got, expected), -1, `round ${round}: untouched slot ${s}`);
          }
        } finally {
          await image.close();
        }
        // A read-write open (rebuilding refcounts when dirty) and close leave a consistent image.
        const rw = await Qcow2Image.open(path, { readOnly: false });
        await rw.close();
        assertQemuCheckClean(path, true);
        assert.ok(lastFlushed >= -1);
      }
    });
  }
});
