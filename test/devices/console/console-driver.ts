/**
 * A test-only virtio-console *driver* that plays Linux drivers/char/virtio_console.c's side of the protocol
 * through the bus and a driver-side SplitVirtqueue: with MULTIPORT it fills the control receiveq, sets DRIVER_OK,
 * sends DEVICE_READY(1), answers DEVICE_ADD with receive buffers and PORT_READY(1), answers CONSOLE_PORT with
 * PORT_OPEN(1) (Linux init_port_console), and records PORT_NAME, PORT_OPEN and RESIZE. Without MULTIPORT it
 * sets up port 0 on queues 0/1 as the console.
 *
 * The wire format is built here from the spec's numbers, independently of src/devices/console/console-layout.ts,
 * so the tests check the device against the spec rather than against itself.
 */
import assert from 'node:assert/strict';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../../src/virtio/driver/virtqueue.js';

// The spec's numbers (§5.3), written out independently of the device's layout module.
export const F_SIZE = 0;
export const F_MULTIPORT = 1;
export const F_EMERG_WRITE = 2;
export const EV = {
  DEVICE_READY: 0,
  DEVICE_ADD: 1,
  DEVICE_REMOVE: 2,
  PORT_READY: 3,
  CONSOLE_PORT: 4,
  RESIZE: 5,
  PORT_OPEN: 6,
  PORT_NAME: 7,
} as const;
export const BAD_ID = 0xffff_ffff;

export function controlBytes(id: number, event: number, value: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, id >>> 0, true);
  v.setUint16(4, event, true);
  v.setUint16(6, value, true);
  return b;
}

export interface ReceivedControl {
  readonly id: number;
  readonly event: number;
  readonly value: number;
  readonly payload: Uint8Array;
}

export interface DriverPort {
  readonly id: number;
  name: string | undefined;
  console: boolean;
  hostOpen: boolean;
  size: { cols: number; rows: number } | undefined;
  /** Bytes received from the device, in order. */
  readonly received: Uint8Array[];
  receivedBytes: number;
}

export interface ConsoleDriverOptions {
  /** Feature bits the driver knows (default: SIZE and MULTIPORT, like Linux). */
  readonly featureTable?: readonly number[];
  /** Receive buffers per port and their size. */
  readonly rxBuffers?: number;
  readonly rxBufferSize?: number;
  /** Control receive buffers and their size. */
  readonly controlBuffers?: number;
  readonly controlBufferSize?: number;
  /** Transmit chunk size. */
  readonly txChunk?: number;
  /** Answer DEVICE_ADD with PORT_READY(1) (default true). */
  readonly autoPortReady?: boolean;
  /** Send DEVICE_READY(1) after DRIVER_OK (default true). */
  readonly sendDeviceReady?: boolean;
}

interface Buf {
  readonly addr: number;
  readonly len: number;
}

/** The driver's state for one bound console device. */
export class ConsoleDriverInstance {
  readonly dev: VirtioBusDevice;
  readonly options: ConsoleDriverOptions;
  multiport = false;
  maxPorts = 1;
  vqs: (Virtqueue | null)[] = [];
  readonly ports = new Map<number, DriverPort>();
  /** Every control message received from the device, in order. */
  readonly control: ReceivedControl[] = [];
  readonly #txWaiters = new Map<number, (() => void)[]>();

  constructor(dev: VirtioBusDevice, options: ConsoleDriverOptions) {
    this.dev = dev;
    this.options = options;
  }

  get #memory() {
    return this.dev.ops.memory;
  }

  get #allocator() {
    return this.dev.ops.allocator;
  }

  async probe(): Promise<void> {
    this.multiport = this.dev.hasFeature(F_MULTIPORT);
    this.maxPorts = this.multiport ? await this.dev.readConfigU32(4) : 1;
    const count = this.multiport ? 2 * (this.maxPorts + 1) : 2;
    const specs = [];
    for (let q = 0; q < count; q++) {
      const index = q;
      specs.push({
        name: `q${q}`,
        callback: (vq: Virtqueue) => {
          this.#interrupt(index, vq);
        },
      });
    }
    this.vqs = await this.dev.findVqs(specs);
    if (this.multiport) {
      const n = this.options.controlBuffers ?? 16;
      for (let i = 0; i < n; i++) this.addControlBuffer(this.options.controlBufferSize ?? 256);
    } else {
      const port = this.#addPort(0, false);
      port.console = true;
    }
    // Buffers added before DRIVER_OK are seen by the device when it activates; kicks come after.
    await this.dev.ready();
    this.vq(this.multiport ? 2 : 0).kick();
    if (this.multiport && (this.options.sendDeviceReady ?? true))
      this.sendControl(BAD_ID, EV.DEVICE_READY, 1);
  }

  vq(index: number): Virtqueue {
    return this.vqs[index] ?? assert.fail(`no queue ${index}`);
  }

  rxQueue(port: number): number {
    return port === 0 ? 0 : 2 + 2 * port;
  }

  txQueue(port: number): number {
    return port === 0 ? 1 : 3 + 2 * port;
  }

  port(id: number): DriverPort {
    return this.ports.get(id) ?? assert.fail(`driver has no port ${id}`);
  }

  /** All bytes port `id` received, concatenated. */
  receivedOn(id: number): Uint8Array {
    return concat(this.port(id).received);
  }

  #buffer(len: number): Buf {
    return { addr: this.#allocator.alloc(len, 8), len };
  }

  #free(b: Buf): void {
    this.#allocator.free(b.addr);
  }

  addControlBuffer(size: number): void {
    const b = this.#buffer(size);
    this.vq(2).addInbuf([{ addr: b.addr, len: b.len }], b);
  }

  /** Sends a control message (8 bytes, or `raw` as given) on the control transmitq. */
  sendControl(id: number, event: number, value: number): void {
    this.sendRaw(3, controlBytes(id, event, value));
  }

  /** Adds `bytes` as a device-readable buffer (plus `writable` device-writable bytes) on queue `q`, and kicks. */
  sendRaw(q: number, bytes: Uint8Array, writable = 0): void {
    const out: ScatterEntry[] = [];
    const inn: ScatterEntry[] = [];
    const bufs: Buf[] = [];
    if (bytes.length > 0) {
      const b = this.#buffer(bytes.length);
      this.#memory.write(b.addr, bytes);
      out.push({ addr: b.addr, len: b.len });
      bufs.push(b);
    }
    if (writable > 0) {
      const b = this.#buffer(writable);
      inn.push({ addr: b.addr, len: b.len });
      bufs.push(b);
    }
    this.vq(q).addBuf(out, inn, bufs);
    this.vq(q).kick();
  }

  /** Adds `bytes` on queue `q` as two device-readable descriptors cut at `cut`, and kicks. */
  sendSplit(q: number, bytes: Uint8Array, cut: number): void {
    const parts = [bytes.subarray(0, cut), bytes.subarray(cut)].filter((p) => p.length > 0);
    const bufs = parts.map((p) => {
      const b = this.#buffer(p.length);
      this.#memory.write(b.addr, p);
      return b;
    });
    this.vq(q).addBuf(
      bufs.map((b) => ({ addr: b.addr, len: b.len })),
      [],
      bufs,
    );
    this.vq(q).kick();
  }

  /** Adds a receive-queue buffer with a device-readable part (hostile), and kicks. */
  addBadRxBuffer(q: number): void {
    const r = this.#buffer(16);
    const w = this.#buffer(16);
    this.vq(q).addBuf([{ addr: r.addr, len: r.len }], [{ addr: w.addr, len: w.len }], { bad: [r, w] });
    this.vq(q).kick();
  }

  /** Guest opens / closes port `id` (PORT_OPEN from the driver). */
  openPort(id: number, open = true): void {
    this.sendControl(id, EV.PORT_OPEN, open ? 1 : 0);
  }

  /**
   * Writes `data` to port `id` in chunks of `txChunk` bytes, waiting for free descriptors; resolves when the
   * device has used every chunk.
   */
  async write(id: number, data: Uint8Array): Promise<void> {
    const q = this.txQueue(id);
    const vq = this.vq(q);
    const chunk = this.options.txChunk ?? 4096;
    for (let off = 0; off < data.length; off += chunk) {
      while (vq.numFree === 0) await this.#waitTx(q);
      const piece = data.subarray(off, Math.min(off + chunk, data.length));
      const b = this.#buffer(piece.length);
      this.#memory.write(b.addr, piece);
      vq.addOutbuf([{ addr: b.addr, len: b.len }], [b]);
      vq.kick();
    }
    while (vq.numFree !== vq.size) await this.#waitTx(q);
  }

  #waitTx(q: number): Promise<void> {
    return new Promise((resolve) => {
      const list = this.#txWaiters.get(q) ?? [];
      list.push(resolve);
      this.#txWaiters.set(q, list);
    });
  }

  #addPort(id: number, kick = true): DriverPort {
    const port: DriverPort = {
      id,
      name: undefined,
      console: false,
      hostOpen: false,
      size: undefined,
      received: [],
      receivedBytes: 0,
    };
    this.ports.set(id, port);
    const vq = this.vq(this.rxQueue(id));
    const n = this.options.rxBuffers ?? 32;
    const size = this.options.rxBufferSize ?? 4096;
    for (let i = 0; i < n; i++) {
      const b = this.#buffer(size);
      vq.addInbuf([{ addr: b.addr, len: b.len }], b);
    }
    if (kick) vq.kick();
    return port;
  }

  // ---- interrupts ----

  #interrupt(q: number, vq: Virtqueue): void {
    if (q === 2 && this.multiport) this.#controlIn(vq);
    else if (q === 3 && this.multiport) this.#txDone(q, vq);
    else if (q % 2 === 0) this.#rx(q === 0 ? 0 : (q - 2) / 2, vq);
    else this.#txDone(q, vq);
  }

  #rx(id: number, vq: Virtqueue): void {
    let refilled = false;
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const b = used.token as Buf;
        const data = new Uint8Array(used.len);
        this.#memory.read(b.addr, data);
        const port = this.ports.get(id);
        if (port !== undefined) {
          port.received.push(data);
          port.receivedBytes += data.length;
        }
        vq.addInbuf([{ addr: b.addr, len: b.len }], b);
        refilled = true;
      }
    } while (!vq.enableCb());
    if (refilled) vq.kick();
  }

  #txDone(q: number, vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        for (const b of used.token as Buf[]) this.#free(b);
      }
    } while (!vq.enableCb());
    const waiters = this.#txWaiters.get(q) ?? [];
    this.#txWaiters.set(q, []);
    for (const w of waiters) w();
  }

  #controlIn(vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const b = used.token as Buf;
        const bytes = new Uint8Array(used.len);
        this.#memory.read(b.addr, bytes);
        vq.addInbuf([{ addr: b.addr, len: b.len }], b);
        if (bytes.length >= 8) {
          const v = new DataView(bytes.buffer);
          this.#handle({
            id: v.getUint32(0, true),
            event: v.getUint16(4, true),
            value: v.getUint16(6, true),
            payload: bytes.slice(8),
          });
        }
      }
    } while (!vq.enableCb());
    vq.kick();
  }

  #handle(m: ReceivedControl): void {
    this.control.push(m);
    switch (m.event) {
      case EV.DEVICE_ADD:
        if (m.id >= this.maxPorts || this.ports.has(m.id)) return;
        this.#addPort(m.id);
        if (this.options.autoPortReady ?? true) this.sendControl(m.id, EV.PORT_READY, 1);
        return;
      case EV.PORT_NAME:
        this.port(m.id).name = new TextDecoder().decode(m.payload);
        return;
      case EV.CONSOLE_PORT:
        if (m.value === 0) return;
        this.port(m.id).console = true;
        this.sendControl(m.id, EV.PORT_OPEN, 1); // Linux init_port_console
        return;
      case EV.PORT_OPEN:
        this.port(m.id).hostOpen = m.value === 1;
        return;
      case EV.RESIZE: {
        const v = new DataView(m.payload.buffer, m.payload.byteOffset, m.payload.byteLength);
        this.port(m.id).size = { cols: v.getUint16(0, true), rows: v.getUint16(2, true) };
        return;
      }
      default:
        return;
    }
  }
}

/** A VirtioDriver for console devices that keeps its instances for the tests. */
export interface TestConsoleDriver extends VirtioDriver {
  readonly instances: Map<VirtioBusDevice, ConsoleDriverInstance>;
  configChanges: number;
}

export function consoleDriver(options: ConsoleDriverOptions = {}): TestConsoleDriver {
  const driver: TestConsoleDriver = {
    name: 'test-virtio-console',
    idTable: [{ device: 3, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable: options.featureTable ?? [F_SIZE, F_MULTIPORT],
    instances: new Map(),
    configChanges: 0,
    async probe(dev) {
      const instance = new ConsoleDriverInstance(dev, options);
      driver.instances.set(dev, instance);
      await instance.probe();
    },
    async remove(dev) {
      await dev.reset();
      const instance = driver.instances.get(dev);
      for (const vq of instance?.vqs ?? []) {
        if (vq === null) continue;
        for (let t = vq.detachUnusedBuf(); t !== null; t = vq.detachUnusedBuf()) {
          const list: Buf[] = Array.isArray(t) ? (t as Buf[]) : isBad(t) ? t.bad : [t as Buf];
          for (const b of list) dev.ops.allocator.free(b.addr);
        }
      }
      driver.instances.delete(dev);
      await dev.delVqs();
    },
    configChanged() {
      driver.configChanges++;
    },
  };
  return driver;
}

function isBad(t: unknown): t is { bad: Buf[] } {
  return typeof t === 'object' && t !== null && 'bad' in t;
}

export function concat(chunks: readonly Uint8Array[]): Uint8Array {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** Yields to the event loop until `cond` holds (or fails after `timeoutMs`). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Lets every pending microtask and immediate run. */
export async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Deterministic pseudo-random bytes (xorshift), so a failure is reproducible. */
export function patternBytes(n: number, seed = 0x1234_5678): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
