/**
 * A small, test-only virtio-blk *driver* (not the real one, which comes later): it binds to a {@link BlkDevice}
 * through the {@link VirtioBus} over the loopback transport and builds requests with the driver-side
 * `SplitVirtqueue`, byte by byte from the spec's layout — an independent builder, so the device's parser is never
 * used to produce its own input.
 *
 * Two levels: `request()` builds a well-formed request (header, data split into `segments` descriptors, a status
 * byte pre-set to 0xff so a missing write shows), and `submitRaw()` takes arbitrary scatter lists for hostile
 * input. Guest memory for hostile tests comes from an {@link Arena} filled with a pattern, so a test can assert
 * that nothing but the expected bytes changed.
 */
import assert from 'node:assert/strict';
import { BlkDevice, type BlkDeviceOptions } from '../../../src/devices/blk/blk-device.js';
import {
  BLK_CONFIG_NUM_QUEUES,
  BLK_DWZ_SEGMENT_SIZE,
  BLK_REQ_HEADER_SIZE,
  BlkFeature,
  VIRTIO_ID_BLOCK,
} from '../../../src/devices/blk/blk-layout.js';
import type { BlockBackend } from '../../../src/devices/blk/block-backend.js';
import {
  LoopbackTransport,
  type LoopbackTransportOptions,
} from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import type { VirtioError } from '../../../src/virtio/errors.js';
import type { GuestMemory } from '../../../src/virtio/guest-memory.js';

/** Every device-specific feature the test driver understands. */
export const ALL_BLK_FEATURES: readonly number[] = [
  BlkFeature.VIRTIO_BLK_F_SIZE_MAX,
  BlkFeature.VIRTIO_BLK_F_SEG_MAX,
  BlkFeature.VIRTIO_BLK_F_RO,
  BlkFeature.VIRTIO_BLK_F_BLK_SIZE,
  BlkFeature.VIRTIO_BLK_F_FLUSH,
  BlkFeature.VIRTIO_BLK_F_MQ,
  BlkFeature.VIRTIO_BLK_F_DISCARD,
  BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES,
];

/** Status byte value before the device writes it. */
export const STATUS_UNSET = 0xff;

export async function settle(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
}

/** A request header (`struct virtio_blk_outhdr`), built by hand: le32 type, le32 reserved, le64 sector. */
export function header(type: number, sector: bigint | number): Uint8Array {
  const h = new Uint8Array(BLK_REQ_HEADER_SIZE);
  const v = new DataView(h.buffer);
  v.setUint32(0, type >>> 0, true);
  v.setUint32(4, 0, true);
  v.setBigUint64(8, BigInt.asUintN(64, BigInt(sector)), true);
  return h;
}

/** DISCARD / WRITE_ZEROES segments, built by hand: le64 sector, le32 num_sectors, le32 flags. */
export function segments(
  list: readonly { sector: bigint | number; count: number; flags?: number }[],
): Uint8Array {
  const out = new Uint8Array(list.length * BLK_DWZ_SEGMENT_SIZE);
  const v = new DataView(out.buffer);
  list.forEach((s, i) => {
    const o = i * BLK_DWZ_SEGMENT_SIZE;
    v.setBigUint64(o, BigInt.asUintN(64, BigInt(s.sector)), true);
    v.setUint32(o + 8, s.count >>> 0, true);
    v.setUint32(o + 12, (s.flags ?? 0) >>> 0, true);
  });
  return out;
}

/** Splits `total` bytes into `n` pieces of uneven sizes (all > 0 when possible). */
export function splitLengths(total: number, n: number): number[] {
  if (n <= 1 || total <= 1) return [total];
  const out: number[] = [];
  let left = total;
  for (let i = 0; i < n - 1 && left > 1; i++) {
    const k = Math.max(1, Math.floor((left * (i % 2 === 0 ? 1 : 3)) / (2 * (n - i))));
    out.push(k);
    left -= k;
  }
  out.push(left);
  return out;
}

export interface Completion {
  readonly status: number;
  readonly usedLen: number;
  /** Device-written data (IN, GET_ID). */
  readonly data: Uint8Array;
}

export interface RequestSpec {
  readonly type: number;
  readonly sector?: bigint | number;
  /** Device-readable data after the header (OUT data, segments). */
  readonly out?: Uint8Array;
  /** Device-writable data bytes before the status (IN, GET_ID). */
  readonly inLen?: number;
  /** Descriptors to split each data part into (default 1). */
  readonly segments?: number;
  /** Kick at once (default true). */
  readonly kick?: boolean;
}

/** The driver's side: only what VirtioConfigOps and the Virtqueue API give any driver. */
export class BlkClient {
  readonly dev: VirtioBusDevice;
  readonly vqs: readonly Virtqueue[];
  /** Completions in the order the driver received them: `[queue, token id]`. */
  readonly order: [number, number][] = [];
  #nextId = 0;

  constructor(dev: VirtioBusDevice, vqs: readonly Virtqueue[]) {
    this.dev = dev;
    this.vqs = vqs;
  }

  get memory(): GuestMemory {
    return this.dev.ops.memory;
  }

  /** Adds a chain of raw scatter lists; resolves with the used length. */
  submitRaw(
    queue: number,
    out: readonly ScatterEntry[],
    inn: readonly ScatterEntry[],
    kick = true,
  ): Promise<number> {
    const vq = this.vqs[queue] ?? assert.fail(`no queue ${queue}`);
    const id = this.#nextId++;
    const done = new Promise<number>((resolve) => {
      vq.addBuf(out, inn, { id, queue, resolve });
    });
    if (kick) vq.kick();
    return done;
  }

  kick(queue = 0): void {
    this.vqs[queue]?.kick();
  }

  /** A well-formed request; buffers are allocated, then freed on completion. */
  async request(spec: RequestSpec, queue = 0): Promise<Completion> {
    const { allocator, memory } = this.dev.ops;
    const allocs: number[] = [];
    const alloc = (len: number): number => {
      const a = allocator.alloc(Math.max(len, 1), 1);
      allocs.push(a);
      return a;
    };
    const n = spec.segments ?? 1;
    const out: ScatterEntry[] = [];
    const hdr = alloc(BLK_REQ_HEADER_SIZE);
    memory.write(hdr, header(spec.type, spec.sector ?? 0));
    out.push({ addr: hdr, len: BLK_REQ_HEADER_SIZE });
    if (spec.out !== undefined && spec.out.length > 0) {
      let off = 0;
      for (const len of splitLengths(spec.out.length, n)) {
        const a = alloc(len);
        memory.write(a, spec.out.subarray(off, off + len));
        out.push({ addr: a, len });
        off += len;
      }
    }
    const inn: ScatterEntry[] = [];
    const inLen = spec.inLen ?? 0;
    if (inLen > 0) {
      for (const len of splitLengths(inLen, n)) {
        const a = alloc(len);
        memory.fill(a, len, 0xee);
        inn.push({ addr: a, len });
      }
    }
    const status = alloc(1);
    memory.writeU8(status, STATUS_UNSET);
    inn.push({ addr: status, len: 1 });
    const usedLen = await this.submitRaw(queue, out, inn, spec.kick ?? true);
    const data = new Uint8Array(inLen);
    let off = 0;
    for (const e of inn.slice(0, -1)) {
      memory.read(e.addr, data.subarray(off, off + e.len));
      off += e.len;
    }
    const result = { status: memory.readU8(status), usedLen, data };
    for (const a of allocs) allocator.free(a);
    return result;
  }

  /** The queue callback: drain, re-enable, re-check (Linux's pattern). */
  onUsed(vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const token = used.token as { id: number; queue: number; resolve: (len: number) => void };
        this.order.push([token.queue, token.id]);
        token.resolve(used.len);
      }
    } while (!vq.enableCb());
  }
}

interface BlkTestDriver extends VirtioDriver {
  client: BlkClient | undefined;
}

function blkDriver(featureTable: readonly number[]): BlkTestDriver {
  const driver: BlkTestDriver = {
    name: 'blk-test',
    idTable: [{ device: VIRTIO_ID_BLOCK, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable,
    client: undefined,
    async probe(dev) {
      const numQueues = dev.hasFeature(BlkFeature.VIRTIO_BLK_F_MQ)
        ? await dev.readConfigU16(BLK_CONFIG_NUM_QUEUES)
        : 1;
      const specs = Array.from({ length: numQueues }, (_, i) => ({
        name: `req${i}`,
        callback: (vq: Virtqueue) => {
          driver.client?.onUsed(vq);
        },
      }));
      const vqs = await dev.findVqs(specs);
      driver.client = new BlkClient(
        dev,
        vqs.map((q) => q ?? assert.fail('missing queue')),
      );
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
  };
  return driver;
}

export interface BlkSetup {
  readonly bus: VirtioBus;
  readonly transport: LoopbackTransport;
  readonly device: BlkDevice;
  readonly dev: VirtioBusDevice;
  readonly client: BlkClient;
  /** Every fault the device controller reported. */
  readonly faults: VirtioError[];
  /** Every request the device answered with an error, and back-end failures. */
  readonly requestErrors: VirtioError[];
  /** Adds the transport to the bus again (after removeDevice) and returns the new driver instance. */
  rebind(): Promise<BlkClient>;
}

export async function setupBlk(
  backend: BlockBackend,
  options: {
    readonly device?: Omit<BlkDeviceOptions, 'backend'>;
    readonly transport?: LoopbackTransportOptions;
    readonly featureTable?: readonly number[];
  } = {},
): Promise<BlkSetup> {
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  const driver = blkDriver(options.featureTable ?? ALL_BLK_FEATURES);
  await bus.registerDriver(driver);
  const requestErrors: VirtioError[] = [];
  const device = new BlkDevice({
    ...options.device,
    backend,
    onRequestError: (e) => requestErrors.push(e),
  });
  const faults: VirtioError[] = [];
  const transport = new LoopbackTransport(device, {
    memorySize: 4 << 20,
    ...options.transport,
    onFault: (f) => faults.push(f),
  });
  const dev = await bus.addDevice(transport);
  const client = driver.client ?? assert.fail(`not bound: ${errors.map((e) => e.message).join('; ')}`);
  const bound = (): BlkClient | undefined => driver.client;
  const rebind = async (): Promise<BlkClient> => {
    driver.client = undefined;
    await bus.addDevice(transport);
    return bound() ?? assert.fail(`not bound again: ${errors.map((e) => e.message).join('; ')}`);
  };
  return { bus, transport, device, dev, client, faults, requestErrors, rebind };
}

/**
 * A block of guest memory filled with a pattern, from which hostile tests carve buffers; `changes()` lists every
 * byte that differs from the pattern, so a test can assert that only the status byte was written.
 */
export class Arena {
  readonly base: number;
  readonly size: number;
  readonly #memory: GuestMemory;
  #next = 0;
  static readonly PATTERN = 0xa5;

  constructor(setup: BlkSetup, size = 64 << 10) {
    this.#memory = setup.transport.memory;
    this.base = setup.transport.allocator.alloc(size, 4096);
    this.size = size;
    this.#memory.fill(this.base, size, Arena.PATTERN);
  }

  /** A buffer of `len` bytes, 64 bytes away from the previous one (guard gap). */
  take(len: number, content?: Uint8Array): ScatterEntry {
    const addr = this.base + this.#next;
    this.#next += len + 64;
    assert.ok(this.#next <= this.size, 'arena exhausted');
    if (content !== undefined) this.#memory.write(addr, content);
    return { addr, len };
  }

  /** A copy of the arena's bytes now: the baseline for {@link changes}. */
  snapshot(): Uint8Array {
    return this.#memory.slice(this.base, this.size).slice();
  }

  /** Addresses whose byte differs from `before`. */
  changes(before: Uint8Array): number[] {
    const now = this.#memory.slice(this.base, this.size);
    const out: number[] = [];
    for (let i = 0; i < now.length; i++) if (now[i] !== before[i]) out.push(this.base + i);
    return out;
  }
}

/** One back-end call held by a {@link GatedBackend} until released. */
export interface HeldCall {
  readonly op: string;
  readonly offset: number;
  readonly length: number;
  release(): void;
}

/**
 * Wraps a back end so that every call waits until the test releases it: requests stay in flight and complete
 * in whatever order the test chooses. `log` records calls starting and finishing.
 */
export class GatedBackend implements BlockBackend {
  readonly inner: BlockBackend;
  readonly held: HeldCall[] = [];
  readonly log: string[] = [];
  /** When true, calls run at once (no gate). */
  open = false;
  #waiters: (() => void)[] = [];

  constructor(inner: BlockBackend) {
    this.inner = inner;
  }

  get size(): number {
    return this.inner.size;
  }

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  /** Resolves once at least `n` calls are held. */
  async waitHeld(n: number): Promise<void> {
    while (this.held.length < n) await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  readv(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#gate('readv', offset, total(bufs), () => this.inner.readv(offset, bufs));
  }

  writev(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#gate('writev', offset, total(bufs), () => this.inner.writev(offset, bufs));
  }

  flush(): Promise<void> {
    return this.#gate('flush', 0, 0, () => this.inner.flush());
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#gate(
      'discard',
      offset,
      length,
      () => this.inner.discard?.(offset, length) ?? Promise.resolve(),
    );
  }

  writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    return this.#gate(
      unmap ? 'writeZeroes+unmap' : 'writeZeroes',
      offset,
      length,
      () => this.inner.writeZeroes?.(offset, length, unmap) ?? Promise.resolve(),
    );
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  async #gate(op: string, offset: number, length: number, run: () => Promise<void>): Promise<void> {
    this.log.push(`${op}:${offset}:start`);
    if (!this.open) {
      await new Promise<void>((resolve) => {
        this.held.push({ op, offset, length, release: resolve });
        const waiters = this.#waiters;
        this.#waiters = [];
        for (const w of waiters) w();
      });
    }
    await run();
    this.log.push(`${op}:${offset}:end`);
  }
}

function total(bufs: readonly Uint8Array[]): number {
  return bufs.reduce((n, b) => n + b.length, 0);
}

/** A deterministic PRNG (mulberry32) for reproducible random sectors and data. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

export function randomBytes(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 256);
  return out;
}
