/**
 * The child process of crash.test.ts: writes a qcow2 image through Qcow2Image until it is SIGKILLed. Write i
 * fills slot perm(i) (slots never overlap, and straddle cluster boundaries) with a pattern naming i; every few
 * writes it flushes (every tenth write is a write-zeroes) and then prints `F <i>`: writes 0..i are durable. Arguments: image path, seed, slot bytes,
 * slot count, cache bytes, flush interval.
 */
import { Qcow2Image } from '../../../../src/backends/block/qcow2/index.js';

export function slotPattern(i: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const view = new DataView(out.buffer);
  for (let p = 0; p + 4 <= length; p += 4) view.setUint32(p, (i * 2654435761 + p) >>> 0, true);
  return out;
}

/** Write i is a write-zeroes instead of data. */
export function isZeroWrite(i: number): boolean {
  return i % 10 === 9;
}

/** A permutation of [0, n) from `seed` (the parent recomputes it). */
export function slotOrder(seed: number, n: number): number[] {
  const order = Array.from({ length: n }, (_, k) => k);
  let x = seed >>> 0 || 1;
  for (let k = n - 1; k > 0; k--) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    const j = x % (k + 1);
    [order[k], order[j]] = [order[j] as number, order[k] as number];
  }
  return order;
}

async function main(): Promise<void> {
  const [path, seedArg, slotArg, slotsArg, cacheArg, flushArg] = process.argv.slice(2);
  if (path === undefined || flushArg === undefined)
    throw new Error('usage: crash-writer PATH SEED SLOT SLOTS CACHE FLUSH');
  const slotBytes = Number(slotArg);
  const order = slotOrder(Number(seedArg), Number(slotsArg));
  const every = Number(flushArg);
  const image = await Qcow2Image.open(path, { readOnly: false, cacheBytes: Number(cacheArg) });
  process.stdout.write('READY\n');
  for (let i = 0; i < order.length; i++) {
    const slot = order[i] as number;
    if (isZeroWrite(i)) {
      await image.writeZeroes(slot * slotBytes, slotBytes, true);
    } else {
      const data = slotPattern(i, slotBytes);
      image.writevSync(slot * slotBytes, [data.subarray(0, 1536), data.subarray(1536)]);
    }
    if (i % every === every - 1) {
      await image.flush();
      process.stdout.write(`F ${i}\n`);
    }
  }
  process.stdout.write('DONE\n');
  setInterval(() => undefined, 1000);
}

if (process.argv[1]?.endsWith('crash-writer.js') === true) {
  main().catch((e: unknown) => {
    process.stderr.write(`${String(e)}\n`);
    process.exit(1);
  });
}
