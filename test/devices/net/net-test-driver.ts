/**
 * A small, test-only virtio-net *driver* for the device's unit tests: it binds to a {@link NetDevice} through
 * the {@link VirtioBus} over the loopback transport and builds every header, frame and control command byte by
 * byte from the spec's layout with the driver-side `SplitVirtqueue` — an independent builder, never the device's
 * own parsers. Receive buffers are posted explicitly (`postRx`), so a test decides how many there are and how
 * they are split into descriptors; what the device used comes back raw (`rxUsed`) and reassembled (`frames`).
 */
import assert from 'node:assert/strict';
import { NetDevice, type NetDeviceOptions } from '../../../src/devices/net/net-device.js';
import {
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_HDR_SIZE,
  NetFeature,
  VIRTIO_ID_NET,
} from '../../../src/devices/net/net-layout.js';
import type { NetRequestError } from '../../../src/devices/net/net-errors.js';
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
import { MemoryNetBackend } from './memory-net-backend.js';

export const ALL_NET_FEATURES: readonly number[] = Object.values(NetFeature);

export async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A virtio_net_hdr, built by hand (§5.1.6). */
export interface HdrFields {
  readonly flags?: number;
  readonly gsoType?: number;
  readonly hdrLen?: number;
  readonly gsoSize?: number;
  readonly csumStart?: number;
  readonly csumOffset?: number;
  readonly numBuffers?: number;
}

export function netHdr(h: HdrFields = {}): Uint8Array {
  const b = new Uint8Array(NET_HDR_SIZE);
  const v = new DataView(b.buffer);
  v.setUint8(0, h.flags ?? 0);
  v.setUint8(1, h.gsoType ?? 0);
  v.setUint16(2, h.hdrLen ?? 0, true);
  v.setUint16(4, h.gsoSize ?? 0, true);
  v.setUint16(6, h.csumStart ?? 0, true);
  v.setUint16(8, h.csumOffset ?? 0, true);
  v.setUint16(10, h.numBuffers ?? 0, true);
  return b;
}

export function readHdr(b: Uint8Array): Required<HdrFields> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    flags: v.getUint8(0),
    gsoType: v.getUint8(1),
    hdrLen: v.getUint16(2, true),
    gsoSize: v.getUint16(4, true),
    csumStart: v.getUint16(6, true),
    csumOffset: v.getUint16(8, true),
    numBuffers: v.getUint16(10, true),
  };
}

/** An Ethernet frame: destination, source, EtherType, then `payload` bytes (a counting pattern, or given). */
export function ethFrame(
  dst: string,
  src: string,
  payload: number | Uint8Array,
  etherType = 0x0800,
): Uint8Array {
  const body =
    typeof payload === 'number'
      ? Uint8Array.from({ length: payload }, (_, i) => (i * 7 + 3) & 0xff)
      : payload;
  const f = new Uint8Array(14 + body.length);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = etherType >> 8;
  f[13] = etherType & 0xff;
  f.set(body, 14);
  return f;
}

/** A frame with an 802.1Q tag for `vlan`. */
export function vlanFrame(dst: string, src: string, vlan: number, payload: number): Uint8Array {
  const inner = ethFrame(dst, src, payload);
  const f = new Uint8Array(inner.length + 4);
  f.set(inner.subarray(0, 12), 0);
  f[12] = 0x81;
  f[13] = 0x00;
  f[14] = (vlan >> 8) & 0x0f;
  f[15] = vlan & 0xff;
  f.set(inner.subarray(12), 16);
  return f;
}

export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((h) => parseInt(h, 16)));
}

/** `{le32 n; macs}` twice: a VIRTIO_NET_CTRL_MAC_TABLE_SET payload. */
export function macTables(unicast: readonly string[], multicast: readonly string[]): Uint8Array {
  const out = new Uint8Array(8 + 6 * (unicast.length + multicast.length));
  const v = new DataView(out.buffer);
  let off = 0;
  for (const table of [unicast, multicast]) {
    v.setUint32(off, table.length, true);
    off += 4;
    for (const m of table) {
      out.set(macBytes(m), off);
      off += 6;
    }
  }
  return out;
}

export interface UsedRx {
  readonly bytes: Uint8Array;
  readonly len: number;
}

export interface RxFrame {
  readonly hdr: Required<HdrFields>;
  readonly frame: Uint8Array;
  readonly buffers: number;
}

export class NetClient {
  readonly dev: VirtioBusDevice;
  readonly vqs: readonly Virtqueue[];
  readonly pairs: number;
  readonly hasCtrl: boolean;
  /** Used receive buffers per pair, in used order (contents copied at the used length). */
  readonly rxUsed: UsedRx[][];
  #nextId = 0;

  constructor(dev: VirtioBusDevice, vqs: readonly Virtqueue[], pairs: number, hasCtrl: boolean) {
    this.dev = dev;
    this.vqs = vqs;
    this.pairs = pairs;
    this.hasCtrl = hasCtrl;
    this.rxUsed = Array.from({ length: pairs }, () => []);
  }

  get memory(): GuestMemory {
    return this.dev.ops.memory;
  }

  #alloc(len: number): number {
    return this.dev.ops.allocator.alloc(Math.max(len, 1), 1);
  }

  /** Posts `count` receive buffers of `size` bytes each, each split into `segments` descriptors. */
  postRx(pair: number, count: number, size: number, segments = 1, kick = true): void {
    const vq = this.vqs[2 * pair] ?? assert.fail(`no rx queue ${pair}`);
    for (let i = 0; i < count; i++) {
      const inn: ScatterEntry[] = [];
      let left = size;
      for (let s = 0; s < segments; s++) {
        const len = s === segments - 1 ? left : Math.max(1, Math.floor(size / segments));
        const addr = this.#alloc(len);
        this.memory.fill(addr, len, 0xee);
        inn.push({ addr, len });
        left -= len;
      }
      vq.addInbuf(inn, { kind: 'rx', pair, inn });
    }
    if (kick) vq.kick();
  }

  /** Sends header + frame in `segments` descriptors; resolves with the used length. */
  send(pair: number, frame: Uint8Array, hdr: HdrFields = {}, segments = 1): Promise<number> {
    const bytes = new Uint8Array(NET_HDR_SIZE + frame.length);
    bytes.set(netHdr(hdr));
    bytes.set(frame, NET_HDR_SIZE);
    const out: ScatterEntry[] = [];
    let off = 0;
    for (let s = 0; s < segments; s++) {
      const len = s === segments - 1 ? bytes.length - off : Math.max(1, Math.floor(bytes.length / segments));
      const addr = this.#alloc(len);
      this.memory.write(addr, bytes.subarray(off, off + len));
      out.push({ addr, len });
      off += len;
    }
    return this.submitRaw(2 * pair + 1, out, []);
  }

  /** Any chain on any queue; resolves with the used length. */
  submitRaw(
    queue: number,
    out: readonly ScatterEntry[],
    inn: readonly ScatterEntry[],
    kick = true,
  ): Promise<number> {
    const vq = this.vqs[queue] ?? assert.fail(`no queue ${queue}`);
    const id = this.#nextId++;
    const done = new Promise<number>((resolve) => {
      vq.addBuf(out, inn, { kind: 'raw', id, resolve });
    });
    if (kick) vq.kick();
    return done;
  }

  /** A control command; resolves with the ack byte (0xff when the device wrote none) and the used length. */
  async ctrl(
    cls: number,
    cmd: number,
    data: Uint8Array = new Uint8Array(0),
  ): Promise<{ ack: number; usedLen: number }> {
    assert.ok(this.hasCtrl, 'no control queue');
    const head = this.#alloc(2 + data.length);
    this.memory.writeU8(head, cls);
    this.memory.writeU8(head + 1, cmd);
    this.memory.write(head + 2, data);
    const ack = this.#alloc(1);
    this.memory.writeU8(ack, 0xff);
    const usedLen = await this.submitRaw(
      2 * this.pairs,
      [{ addr: head, len: 2 + data.length }],
      [{ addr: ack, len: 1 }],
    );
    return { ack: this.memory.readU8(ack), usedLen };
  }

  /** Copies a raw buffer's bytes out of guest memory. */
  read(entries: readonly ScatterEntry[], len: number): Uint8Array {
    const out = new Uint8Array(len);
    let off = 0;
    for (const e of entries) {
      if (off >= len) break;
      const k = Math.min(e.len, len - off);
      this.memory.read(e.addr, out.subarray(off, off + k));
      off += k;
    }
    return out;
  }

  /** Frames received on `pair`, reassembled from num_buffers (consumes rxUsed). */
  frames(pair: number): RxFrame[] {
    const used = this.rxUsed[pair] as UsedRx[];
    const out: RxFrame[] = [];
    while (used.length > 0) {
      const first = used[0] as UsedRx;
      const hdr = readHdr(first.bytes.subarray(0, NET_HDR_SIZE));
      const n = Math.max(1, hdr.numBuffers);
      assert.ok(used.length >= n, `frame needs ${n} buffers, ${used.length} used`);
      const parts = used.splice(0, n);
      let total = 0;
      for (const p of parts) total += p.len;
      const all = new Uint8Array(total);
      let off = 0;
      for (const p of parts) {
        all.set(p.bytes, off);
        off += p.len;
      }
      out.push({ hdr, frame: all.slice(NET_HDR_SIZE), buffers: n });
    }
    return out;
  }

  onUsed(vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const token = used.token as
          | { kind: 'rx'; pair: number; inn: ScatterEntry[] }
          | { kind: 'raw'; id: number; resolve: (len: number) => void };
        if (token.kind === 'rx') {
          this.rxUsed[token.pair]?.push({ bytes: this.read(token.inn, used.len), len: used.len });
        } else {
          token.resolve(used.len);
        }
      }
    } while (!vq.enableCb());
  }
}

interface NetTestDriver extends VirtioDriver {
  client: NetClient | undefined;
  configChanges: number;
}

function netDriver(featureTable: readonly number[]): NetTestDriver {
  const driver: NetTestDriver = {
    name: 'net-test',
    idTable: [{ device: VIRTIO_ID_NET, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable,
    client: undefined,
    configChanges: 0,
    async probe(dev) {
      const pairs = dev.hasFeature(NetFeature.VIRTIO_NET_F_MQ)
        ? await dev.readConfigU16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS)
        : 1;
      const hasCtrl = dev.hasFeature(NetFeature.VIRTIO_NET_F_CTRL_VQ);
      const cb = (vq: Virtqueue) => {
        driver.client?.onUsed(vq);
      };
      const specs = [];
      for (let i = 0; i < pairs; i++)
        specs.push({ name: `rx${i}`, callback: cb }, { name: `tx${i}`, callback: cb });
      if (hasCtrl) specs.push({ name: 'ctrl', callback: cb });
      const vqs = await dev.findVqs(specs);
      driver.client = new NetClient(
        dev,
        vqs.map((q) => q ?? assert.fail('missing queue')),
        pairs,
        hasCtrl,
      );
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
    configChanged() {
      driver.configChanges++;
    },
  };
  return driver;
}

export interface NetSetup {
  readonly transport: LoopbackTransport;
  readonly device: NetDevice;
  readonly backends: readonly MemoryNetBackend[];
  readonly client: NetClient;
  readonly faults: VirtioError[];
  readonly requestErrors: NetRequestError[];
  configChanges(): number;
}

export async function setupNet(
  options: {
    readonly device?: Omit<NetDeviceOptions, 'backends'>;
    readonly backends?: readonly MemoryNetBackend[];
    readonly transport?: LoopbackTransportOptions;
    readonly featureTable?: readonly number[];
  } = {},
): Promise<NetSetup> {
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  const driver = netDriver(options.featureTable ?? ALL_NET_FEATURES);
  await bus.registerDriver(driver);
  const backends = options.backends ?? [new MemoryNetBackend()];
  const requestErrors: NetRequestError[] = [];
  const device = new NetDevice({
    ...options.device,
    backends,
    onRequestError: (e) => requestErrors.push(e),
  });
  const faults: VirtioError[] = [];
  const transport = new LoopbackTransport(device, {
    memorySize: 8 << 20,
    ...options.transport,
    onFault: (f) => faults.push(f),
  });
  await bus.addDevice(transport);
  const client = driver.client ?? assert.fail(`not bound: ${errors.map((e) => e.message).join('; ')}`);
  return {
    transport,
    device,
    backends,
    client,
    faults,
    requestErrors,
    configChanges: () => driver.configChanges,
  };
}
