/**
 * # vhost-user front end ("virtio-user")
 *
 * `VhostUserFrontend` implements the driver model's {@link VirtioConfigOps} over a vhost-user connection: ringvm
 * plays QEMU's part, and the device is whatever back end listens on the socket (qemu-storage-daemon's
 * vhost-user-blk export, ringvm's own {@link VhostUserExport}, any libvhost-user device). The same drivers that
 * run on the loopback and virtio-pci transports run here unchanged; no guest CPU is involved.
 *
 * - **Guest memory**: one memfd (`memorySize`, default 64 MiB) mapped MAP_SHARED here and wrapped as a
 *   {@link GuestMemory} at guest address 0; the back end maps the same fd (SET_MEM_TABLE). The "userspace address"
 *   reported for it is the guest address + {@link USER_ADDR_OFFSET}: the back end only uses it to translate the
 *   ring addresses of SET_VRING_ADDR, which are sent in that space. A {@link GuestAllocator} over the memory serves
 *   rings and driver buffers.
 * - **Handshake** ({@link VhostUserFrontend.connect}): SET_OWNER, GET_FEATURES; with
 *   VHOST_USER_F_PROTOCOL_FEATURES, GET/SET_PROTOCOL_FEATURES acking REPLY_ACK, CONFIG, MQ and RESET_DEVICE when
 *   offered; GET_QUEUE_NUM with MQ. With REPLY_ACK every request without a reply body is sent with NEED_REPLY and
 *   waits for its acknowledgement; a refusal rejects with `REQUEST_REFUSED`.
 * - **Status** is emulated (the protocol has no status register): kept locally; FEATURES_OK sticks if the
 *   SET_FEATURES sent by `finalizeFeatures` was accepted. A hung-up back end reads as DEVICE_NEEDS_RESET.
 * - **Config space**: GET_CONFIG / SET_CONFIG (CONFIG protocol feature). Reads always fetch from offset 0
 *   (libvhost-user's blk export ignores the offset) and slice; the generation is always 0 (no config-change
 *   channel is set up).
 * - **Queues** (`findVqs`): SET_MEM_TABLE, then per ring SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR,
 *   SET_VRING_KICK with a kick eventfd (the queue's notify writes it) and SET_VRING_CALL with a call eventfd
 *   (watched on the event loop: readable → `vq.interrupt()`), then SET_VRING_ENABLE 1 with protocol features.
 *   Ring size: `spec.size`, else `queueSize` (default 256; vhost-user has no way to ask the maximum).
 * - **Reset**: GET_VRING_BASE on every ring (the back end stops it), then RESET_DEVICE when negotiated.
 * - **Hang-up**: pending protocol calls reject with `DISCONNECTED`; every queue first delivers what was already
 *   used, then is marked broken with that error and its callback runs (so a driver such as virtio-blk fails its
 *   requests at once: `QUEUE_BROKEN` with the `DISCONNECTED` error as cause); the config handler runs.
 * - **close()**: after the device left the bus (the driver must not touch the memory any more): stops the
 *   watches, closes the socket and eventfds, unmaps the memory, closes the memfd.
 */
import {
  closeFd,
  connectUnix,
  eventfd,
  eventfdRead,
  eventfdWrite,
  ftruncate,
  mapShared,
  memfdCreate,
  watchReadable,
  type FdWatch,
  type MappedMemory,
} from '../../sys/index.js';
import type { VirtioConfigOps, VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import { GuestAllocator } from '../../virtio/guest-allocator.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { isValidSplitQueueSize, type SplitQueueAddresses } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import { DeviceStatus } from '../../virtio/status.js';
import { FrontendChannel, type ReplyKind } from './frontend-channel.js';
import { VhostUserFrontendError } from './frontend-errors.js';
import {
  decodeConfig,
  decodeU64,
  encodeConfig,
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
} from './payloads.js';
import {
  CONFIG_HEADER_SIZE,
  FrontendRequest as R,
  MAX_CONFIG_SIZE,
  U64_SIZE,
  VHOST_SET_CONFIG_TYPE_FRONTEND,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VRING_STATE_SIZE,
  VhostUserProtocolFeature as P,
  frontendRequestName,
} from './protocol.js';

export { VhostUserFrontendError } from './frontend-errors.js';
export type { VhostUserFrontendErrorCode } from './frontend-errors.js';

/** Reported userspace address = guest address + this (any consistent value does; see the module comment). */
export const USER_ADDR_OFFSET = 0x1000_0000_0000;
export const FRONTEND_DEFAULT_MEMORY = 64 << 20;
export const FRONTEND_DEFAULT_QUEUE_SIZE = 256;

const PROTOCOL_FEATURES_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
/** Protocol features this front end acks when offered. */
const WANTED_PROTOCOL_FEATURES = [P.REPLY_ACK, P.CONFIG, P.MQ, P.RESET_DEVICE].reduce(
  (s, b) => s | (1n << BigInt(b)),
  0n,
);

export interface VhostUserFrontendOptions {
  /** The virtio device id (§5) of what the back end serves: vhost-user does not say (2 = block). */
  readonly deviceId: number;
  /** Bytes of guest memory (a memfd), a multiple of the page size; default 64 MiB. */
  readonly memorySize?: number;
  /** Ring size when the driver asks none (default 256). */
  readonly queueSize?: number;
  /** Keep retrying the connection this long while the socket is missing or refuses (default 0: once). */
  readonly connectTimeoutMs?: number;
  /**
   * Drop the connection (REPLY_TIMEOUT) when a reply takes longer than this. Default: wait as long as it takes,
   * as QEMU does; a test rig facing a back end that may hang sets one.
   */
  readonly replyTimeoutMs?: number;
  /**
   * Device feature bits to hide from the driver (never offered by getFeatures), like QEMU's per-device feature
   * properties. E.g. qemu-storage-daemon 7.2 offers VIRTIO_BLK_F_SIZE_MAX with size_max = 0.
   */
  readonly hideFeatures?: bigint;
}

interface LiveQueue {
  readonly vq: SplitVirtqueue;
  readonly spec: VirtqueueSpec;
  readonly addresses: SplitQueueAddresses;
  readonly kickFd: number;
  readonly callFd: number;
  watch: FdWatch | undefined;
}

function protoBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

export class VhostUserFrontend implements VirtioConfigOps {
  readonly deviceId: number;
  readonly vendorId = 0;
  readonly location: string;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly socketPath: string;
  /** The back end's GET_FEATURES answer (bit 30, VHOST_USER_F_PROTOCOL_FEATURES, included). */
  readonly backendFeatures: bigint;
  /** Protocol features negotiated (0 without VHOST_USER_F_PROTOCOL_FEATURES). */
  readonly protocolFeatures: bigint;
  /** Queues the back end has (GET_QUEUE_NUM with MQ, else unknown: Infinity). */
  readonly queueNum: number;
  /** Counters for tests and benchmarks. */
  readonly stats = { kicks: 0, interrupts: 0 };

  readonly #channel: FrontendChannel;
  readonly #mapping: MappedMemory;
  readonly #memfd: number;
  readonly #queueSize: number;
  readonly #hidden: bigint;
  #queues: (LiveQueue | null)[] = [];
  #status = 0;
  #featuresAccepted = false;
  #configHandler: (() => void) | undefined;
  #closed = false;

  private constructor(init: {
    socketPath: string;
    deviceId: number;
    channel: FrontendChannel;
    mapping: MappedMemory;
    memfd: number;
    memory: GuestMemory;
    queueSize: number;
    backendFeatures: bigint;
    protocolFeatures: bigint;
    queueNum: number;
    hidden: bigint;
  }) {
    this.socketPath = init.socketPath;
    this.location = `vhost-user:${init.socketPath}`;
    this.deviceId = init.deviceId;
    this.#channel = init.channel;
    this.#mapping = init.mapping;
    this.#memfd = init.memfd;
    this.memory = init.memory;
    this.allocator = new GuestAllocator(this.memory, { base: 0x1000 });
    this.#queueSize = init.queueSize;
    this.backendFeatures = init.backendFeatures;
    this.protocolFeatures = init.protocolFeatures;
    this.queueNum = init.queueNum;
    this.#hidden = init.hidden;
  }

  /**
   * Connects to the back end at `socketPath`, creates and maps the guest memory and runs the handshake. Rejects
   * with a {@link VhostUserFrontendError} (`CONNECT_FAILED`, `DISCONNECTED`, `BAD_REPLY`...), leaving nothing open.
   */
  static async connect(socketPath: string, options: VhostUserFrontendOptions): Promise<VhostUserFrontend> {
    const size = options.memorySize ?? FRONTEND_DEFAULT_MEMORY;
    const queueSize = options.queueSize ?? FRONTEND_DEFAULT_QUEUE_SIZE;
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new VhostUserFrontendError('INVALID_STATE', `memorySize ${size} is not whole pages`, size);
    }
    if (!isValidSplitQueueSize(queueSize)) {
      throw new VhostUserFrontendError(
        'INVALID_STATE',
        `queueSize ${queueSize} is not a power of two`,
        queueSize,
      );
    }
    const replyTimeoutMs = options.replyTimeoutMs;
    if (replyTimeoutMs !== undefined && !(Number.isSafeInteger(replyTimeoutMs) && replyTimeoutMs > 0)) {
      throw new VhostUserFrontendError(
        'INVALID_STATE',
        `replyTimeoutMs ${replyTimeoutMs} is not a positive whole number of milliseconds`,
        replyTimeoutMs,
      );
    }
    const fd = await connectWithRetry(socketPath, options.connectTimeoutMs ?? 0);
    const location = `vhost-user:${socketPath}`;
    let frontend: VhostUserFrontend | undefined;
    let hungUp: VhostUserFrontendError | undefined;
    const channel = new FrontendChannel(
      fd,
      location,
      (e) => {
        if (frontend === undefined) hungUp = e;
        else frontend._hangUp(e);
      },
      replyTimeoutMs,
    );
    let memfd = -1;
    let mapping: MappedMemory | undefined;
    try {
      memfd = memfdCreate('ringvm-guest-ram');
      ftruncate(memfd, size);
      mapping = mapShared(memfd, size);
      const memory = new GuestMemory([{ guestAddr: 0, bytes: mapping.bytes }]);
      await channel.call(R.SET_OWNER, undefined, 'none');
      const features = decodeU64(await replyBody(channel, R.GET_FEATURES, undefined, U64_SIZE));
      let protocol = 0n;
      let queueNum = Infinity;
      if ((features & PROTOCOL_FEATURES_BIT) !== 0n) {
        const offered = decodeU64(await replyBody(channel, R.GET_PROTOCOL_FEATURES, undefined, U64_SIZE));
        protocol = offered & WANTED_PROTOCOL_FEATURES;
        await channel.call(R.SET_PROTOCOL_FEATURES, encodeU64(protocol), 'none');
        if ((protocol & protoBit(P.MQ)) !== 0n) {
          queueNum = Number(decodeU64(await replyBody(channel, R.GET_QUEUE_NUM, undefined, U64_SIZE)));
        }
      }
      if (hungUp !== undefined) throw hungUp;
      frontend = new VhostUserFrontend({
        socketPath,
        deviceId: options.deviceId,
        channel,
        mapping,
        memfd,
        memory,
        queueSize,
        backendFeatures: features,
        protocolFeatures: protocol,
        queueNum,
        hidden: options.hideFeatures ?? 0n,
      });
      return frontend;
    } catch (e) {
      channel.close();
      if (mapping !== undefined) mapping.unmap();
      if (memfd >= 0) closeFd(memfd);
      throw e;
    }
  }

  /** Whether the back end is gone (hung up) or the front end closed. */
  get isDisconnected(): boolean {
    return this.#channel.error !== undefined;
  }

  /** Why the connection is down, if it is. */
  get error(): VhostUserFrontendError | undefined {
    return this.#channel.error;
  }

  // ---- VirtioConfigOps: status and features ----

  getStatus(): Promise<number> {
    const needsReset = this.#channel.error !== undefined && !this.#closed;
    return Promise.resolve(this.#status | (needsReset ? DeviceStatus.DEVICE_NEEDS_RESET : 0));
  }

  async setStatus(status: number): Promise<void> {
    if (status === 0) {
      await this.reset();
      return;
    }
    this.#checkUp();
    // FEATURES_OK sticks only when the back end took the features (§3.1.1 step 6, emulated).
    this.#status = this.#featuresAccepted ? status : status & ~DeviceStatus.FEATURES_OK;
  }

  /**
   * Stops every ring (GET_VRING_BASE: the back end finishes and hands back its index), then RESET_DEVICE when
   * negotiated. On a hung-up back end there is nothing to stop: only the local state is reset.
   */
  async reset(): Promise<void> {
    this.#status = 0;
    this.#featuresAccepted = false;
    if (this.#channel.error !== undefined) return;
    for (const q of this.#queues) {
      if (q === null) continue;
      await replyBody(
        this.#channel,
        R.GET_VRING_BASE,
        encodeVringState({ index: q.vq.index, num: 0 }),
        VRING_STATE_SIZE,
      );
    }
    if (this.#has(P.RESET_DEVICE)) await this.#set(R.RESET_DEVICE);
  }

  getFeatures(): Promise<bigint> {
    return Promise.resolve(this.backendFeatures & ~PROTOCOL_FEATURES_BIT & ~this.#hidden);
  }

  async finalizeFeatures(features: bigint): Promise<void> {
    this.#featuresAccepted = false;
    const withProtocol =
      this.protocolFeatures !== 0n || (this.backendFeatures & PROTOCOL_FEATURES_BIT) !== 0n;
    try {
      await this.#set(R.SET_FEATURES, encodeU64(features | (withProtocol ? PROTOCOL_FEATURES_BIT : 0n)));
    } catch (e) {
      if (e instanceof VhostUserFrontendError && e.code === 'REQUEST_REFUSED') return;
      throw e;
    }
    this.#featuresAccepted = true;
  }

  // ---- config space ----

  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    this.#checkConfig(offset, length);
    const end = offset + length;
    const reply = await replyBody(
      this.#channel,
      R.GET_CONFIG,
      encodeConfig(0, VHOST_SET_CONFIG_TYPE_FRONTEND, new Uint8Array(end)),
    );
    if (reply.length !== CONFIG_HEADER_SIZE + end) {
      throw new VhostUserFrontendError(
        'BAD_REPLY',
        `${this.location}: GET_CONFIG 0+${end} answered with ${reply.length} bytes (the back end refused it)`,
        reply.length,
      );
    }
    return decodeConfig(reply).data.slice(offset, end);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    this.#checkConfig(offset, data.length);
    await this.#set(R.SET_CONFIG, encodeConfig(offset, VHOST_SET_CONFIG_TYPE_FRONTEND, data));
  }

  generation(): Promise<number> {
    return Promise.resolve(0);
  }

  onConfigChange(handler: () => void): void {
    this.#configHandler = handler;
  }

  // ---- queues ----

  async findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]> {
    this.#checkUp();
    if (this.#queues.length !== 0) {
      throw new VhostUserFrontendError(
        'INVALID_STATE',
        `${this.location}: queues exist already, delVqs first`,
        0,
      );
    }
    const made: (LiveQueue | null)[] = [];
    try {
      await this.#set(
        R.SET_MEM_TABLE,
        encodeMemTable([
          {
            guestAddr: 0n,
            size: BigInt(this.#mapping.length),
            userAddr: BigInt(USER_ADDR_OFFSET),
            mmapOffset: 0n,
          },
        ]),
        [this.#memfd],
      );
      for (let index = 0; index < specs.length; index++) {
        const spec = specs[index];
        if (spec === null || spec === undefined) {
          made.push(null);
          continue;
        }
        if (index >= this.queueNum) {
          throw this.#queueError(`the back end has ${this.queueNum} queues; queue ${index} was asked`, index);
        }
        made.push(await this.#setupQueue(index, spec, features));
      }
      if ((this.backendFeatures & PROTOCOL_FEATURES_BIT) !== 0n) {
        for (const q of made) {
          if (q !== null)
            await this.#set(R.SET_VRING_ENABLE, encodeVringState({ index: q.vq.index, num: 1 }));
        }
      }
    } catch (e) {
      for (const q of made) if (q !== null) this.#release(q);
      throw e;
    }
    this.#queues = made;
    return made.map((q) => q?.vq ?? null);
  }

  /** Frees every queue's rings and eventfds. Reset the device first (the back end must have stopped them). */
  delVqs(): Promise<void> {
    const queues = this.#queues;
    this.#queues = [];
    for (const q of queues) if (q !== null) this.#release(q);
    return Promise.resolve();
  }

  /** The driver-side queue `index` made by findVqs. */
  virtqueue(index: number): SplitVirtqueue | undefined {
    return this.#queues[index]?.vq;
  }

  /**
   * Closes the connection and frees everything: watches, eventfds, the socket, the memory mapping and the memfd.
   * Call it after the device left the bus: the memory is unmapped, so nothing may touch it afterwards.
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#channel.close();
    const queues = this.#queues;
    this.#queues = [];
    for (const q of queues) if (q !== null) this.#closeFds(q);
    this.#mapping.unmap();
    closeFd(this.#memfd);
    return Promise.resolve();
  }

  /** @internal The channel saw the back end hang up. */
  _hangUp(error: VhostUserFrontendError): void {
    if (this.#closed) return;
    for (const q of this.#queues) {
      if (q === null) continue;
      q.watch?.close();
      q.watch = undefined;
      q.vq.interrupt(); // completions that arrived before the hang-up still count
      q.vq.markBroken(error);
      q.spec.callback?.(q.vq);
    }
    this.#configHandler?.();
  }

  // ---- internals ----

  async #setupQueue(index: number, spec: VirtqueueSpec, features: bigint): Promise<LiveQueue> {
    const size = spec.size ?? this.#queueSize;
    if (!isValidSplitQueueSize(size)) {
      throw this.#queueError(`queue ${index} size ${size} is not a power of two ≤ 32768`, index);
    }
    const addresses = SplitVirtqueue.allocate(this.allocator, size);
    let kickFd = -1;
    let callFd = -1;
    try {
      kickFd = eventfd(0, { nonBlocking: true });
      callFd = eventfd(0, { nonBlocking: true });
      const kick = kickFd;
      const vq = SplitVirtqueue.forSpec(spec, {
        index,
        memory: this.memory,
        allocator: this.allocator,
        size,
        addresses,
        features,
        notify: () => {
          this.stats.kicks++;
          eventfdWrite(kick, 1);
        },
      });
      const q: LiveQueue = { vq, spec, addresses, kickFd, callFd, watch: undefined };
      const call = callFd;
      q.watch = watchReadable(callFd, () => {
        eventfdRead(call);
        this.stats.interrupts++;
        vq.interrupt();
      });
      const user = (addr: number) => BigInt(addr + USER_ADDR_OFFSET);
      await this.#set(R.SET_VRING_NUM, encodeVringState({ index, num: size }));
      await this.#set(R.SET_VRING_BASE, encodeVringState({ index, num: 0 }));
      await this.#set(
        R.SET_VRING_ADDR,
        encodeVringAddr({
          index,
          flags: 0,
          desc: user(addresses.descTable),
          used: user(addresses.usedRing),
          avail: user(addresses.availRing),
          log: 0n,
        }),
      );
      await this.#set(R.SET_VRING_KICK, encodeU64(BigInt(index)), [kickFd]);
      await this.#set(R.SET_VRING_CALL, encodeU64(BigInt(index)), [callFd]);
      return q;
    } catch (e) {
      if (kickFd >= 0) closeFd(kickFd);
      if (callFd >= 0) closeFd(callFd);
      SplitVirtqueue.release(this.allocator, addresses);
      throw e;
    }
  }

  #closeFds(q: LiveQueue): void {
    q.watch?.close();
    q.watch = undefined;
    closeFd(q.kickFd);
    closeFd(q.callFd);
  }

  #release(q: LiveQueue): void {
    this.#closeFds(q);
    q.vq.reset();
    SplitVirtqueue.release(this.allocator, q.addresses);
  }

  #has(bit: number): boolean {
    return (this.protocolFeatures & protoBit(bit)) !== 0n;
  }

  /** A request without a reply body: acknowledged when REPLY_ACK was negotiated. */
  async #set(request: number, payload?: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const kind: ReplyKind = this.#has(P.REPLY_ACK) ? 'ack' : 'none';
    await this.#channel.call(request, payload, kind, fds);
  }

  #checkUp(): void {
    const error = this.#channel.error;
    if (error !== undefined) throw error;
  }

  #checkConfig(offset: number, length: number): void {
    this.#checkUp();
    if (!this.#has(P.CONFIG)) {
      throw new VhostUserFrontendError(
        'UNSUPPORTED',
        `${this.location}: the back end offers no config space (no CONFIG protocol feature)`,
        offset,
      );
    }
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > MAX_CONFIG_SIZE
    ) {
      throw new VhostUserFrontendError(
        'INVALID_STATE',
        `${this.location}: config access ${offset}+${length} is outside 0..${MAX_CONFIG_SIZE}`,
        offset,
      );
    }
  }

  #queueError(message: string, index: number): VhostUserFrontendError {
    return new VhostUserFrontendError('QUEUE_SETUP', `${this.location}: ${message}`, index);
  }
}

/** Sends a request with a reply body and returns the payload; `size` checks it when given. */
async function replyBody(
  channel: FrontendChannel,
  request: number,
  payload: Uint8Array | undefined,
  size?: number,
): Promise<Uint8Array> {
  const m = await channel.call(request, payload, 'body');
  const body = m?.payload ?? new Uint8Array(0);
  if (size !== undefined && body.length !== size) {
    throw new VhostUserFrontendError(
      'BAD_REPLY',
      `${channel.location}: a ${frontendRequestName(request)} reply of ${body.length} bytes (${size} expected)`,
      request,
    );
  }
  return body;
}

async function connectWithRetry(path: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return connectUnix(path);
    } catch (e) {
      if (Date.now() >= deadline) {
        throw new VhostUserFrontendError(
          'CONNECT_FAILED',
          `cannot connect to vhost-user socket ${path}: ${(e as Error).message}`,
          path,
          { cause: e },
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
