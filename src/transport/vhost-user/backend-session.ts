/**
 * # vhost-user back-end session
 *
 * One front-end connection (QEMU, Linux UML's virtio_uml) serving one {@link VirtioDevice}: the protocol
 * state machine of QEMU's docs/interop/vhost-user.rst, in pure TypeScript. Host effects (mmap, close, eventfd
 * writes) go through an injected {@link VhostHostIo}; sockets and epoll belong to the server that drives it.
 *
 * ## Driving it (the server's side)
 *
 * ```ts
 * const session = new VhostUserBackendSession(device, hostIo, { onFault: log, onRingChange: rewatch });
 * // every recvmsg on the connection:
 * const { replies, error } = session.receive(bytes, fdsFromScmRights);
 * for (const r of replies) sendAll(sock, r);          // in order, before reading more
 * if (error !== null) { log(error); closeSocket(sock); } // the session already closed every fd and unmapped
 * // the data path, for each ring i: wait on session.ring(i).kickFd (or poll when .polling), then:
 * session.kick(i);                                      // the device serves queue i; calls go to hostIo.signalCall
 * // the front-end hung up:
 * session.close();                                      // unmaps, closes fds, resets the device; reusable
 * ```
 *
 * `receive` = {@link VhostUserMessageParser} + {@link VhostUserBackendSession.handle}; a server with its own
 * parser calls `handle(message)` per message: it returns the reply bytes (or null) and whether the connection
 * must end. Nothing here throws into the event loop: every failure is a returned {@link VhostUserError}.
 *
 * ## Mapping vhost-user onto the core
 *
 * - **Features.** GET_FEATURES offers the device's features plus VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
 *   SET_FEATURES must stay within the offer, and the device must accept the set (the {@link DeviceController}
 *   runs FEATURES_OK on it: VERSION_1 required, `validateFeatures`); otherwise the connection ends.
 * - **Memory.** SET_MEM_TABLE / ADD_MEM_REG map each region's fd (libvhost-user's way: `mmap_offset + size`
 *   bytes from file offset 0, then a view at `mmap_offset`, so an unaligned offset still works), close the fd,
 *   and build a {@link GuestMemory} of guest-physical regions. Ring addresses arrive as front-end user addresses
 *   and are translated through the table (each part must lie in one region).
 * - **Ring states** (spec, "Ring states"). A ring is *started* by SET_VRING_KICK (an fd, or the "no fd" bit:
 *   the data path polls) and *stopped* by GET_VRING_BASE. It is *enabled* by SET_VRING_ENABLE 1; rings start
 *   disabled, and SET_FEATURES without bit 30 enables them all at once. A ring is served when it is started,
 *   enabled, sized and addressed. A disabled ring is not served at all (the spec's "process without side
 *   effects" mode is not modelled: nothing is consumed until it is enabled).
 * - **Activation.** The device model is activated (the controller walks ACKNOWLEDGE → DRIVER → FEATURES_OK →
 *   queue enable → DRIVER_OK) with exactly the rings that are served, each with nextAvail = its vring base and
 *   nextUsed = used.idx read from guest memory (SET_VRING_BASE: "The device is supposed to read the next index
 *   in the Used Ring from the respective vring structure in guest memory"). Whenever that set changes, the
 *   memory table or the features change, or a served ring is reconfigured, the device is reset (each served
 *   ring's nextAvail kept as its base) and activated again with the new set — so a device always sees a fixed
 *   set of queues per activation, as the device contract says. Chains in flight at such a reset are lost
 *   (counted in `stats.inFlightDropped`); the devices in this project complete every chain inside `kick`, and
 *   give back the chains they popped ahead of need (`VirtioDevice.quiesce`, called before a base is read).
 * - **GET_VRING_BASE** stops the ring, closes its kick fd (the front-end sends a new one to restart it, as
 *   libvhost-user expects) and replies with the next avail index the back-end would process. The spec asks
 *   nothing more of in-flight requests for split rings (its INFLIGHT_SHMFD extension exists for them; not
 *   offered). When every ring is stopped the device is reset: "suspended", it writes nothing and signals
 *   nothing.
 * - **Guest faults** (a bad ring or chain) follow the core: the device goes DEVICE_NEEDS_RESET, the fault is
 *   reported through `onFault`, and the served rings' error eventfds (SET_VRING_ERR) are signalled.
 *   GET_STATUS (protocol feature STATUS) shows DEVICE_NEEDS_RESET. The connection stays up.
 * - **REPLY_ACK.** A request with NEED_REPLY gets a u64 reply, 0 on success, unless it already has a reply
 *   body (GET_*). Replies are sent for NEED_REPLY even when REPLY_ACK was not negotiated (libvhost-user does
 *   the same: a front-end that asks is waiting). A request that ends the connection with NEED_REPLY gets a
 *   non-zero reply first.
 * - **Front-end errors** (malformed messages, ring index out of range, addresses outside the table, wrong fd
 *   counts, unsupported requests, ...) end the connection: the session closes every fd it holds, unmaps every
 *   region, resets the device, and returns the error.
 * - **SET_STATUS** is recorded for GET_STATUS; 0 resets the device state like RESET_DEVICE (QEMU sends 0 when
 *   it stops the device and re-sends features, memory and rings to start it again). Other values do not drive
 *   the controller: QEMU sets DRIVER_OK without FEATURES_OK there, and rings already tell when to run.
 */
import { DeviceController } from '../../virtio/device/device-controller.js';
import type { InterruptSink, VirtioDevice } from '../../virtio/device/virtio-device.js';
import { VirtioError, hex } from '../../virtio/errors.js';
import { featureBit, featureSet, hasFeature } from '../../virtio/features.js';
import { GuestMemory, MAX_GUEST_ADDRESS } from '../../virtio/guest-memory.js';
import {
  USED_IDX_OFFSET,
  availRingSize,
  descTableSize,
  isValidSplitQueueSize,
  usedRingSize,
} from '../../virtio/split/layout.js';
import { DeviceStatus } from '../../virtio/status.js';
import {
  VhostUserProtocolError,
  VhostUserSessionError,
  type VhostUserError,
  type VhostUserSessionErrorCode,
} from './errors.js';
import type { MappedRegion, VhostHostIo } from './host-io.js';
import { VhostUserMessageParser, type VhostUserMessage } from './message-parser.js';
import { encodeReply, encodeReplyU64, encodeReplyVringState, encodeRequest } from './message-writer.js';
import {
  decodeConfig,
  decodeMemTable,
  decodeSingleMemRegion,
  decodeU64,
  decodeVringAddr,
  decodeVringState,
  encodeConfig,
  memTableRegionCount,
  type MemRegion,
  type VringAddr,
} from './payloads.js';
import {
  BackendRequest,
  FLAG_NEED_REPLY,
  FrontendRequest,
  MEM_REGION_SIZE,
  MEM_TABLE_HEADER_SIZE,
  MEM_TABLE_MAX_REGIONS,
  VHOST_SET_CONFIG_TYPE_MIGRATION,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_VRING_F_LOG,
  VRING_BASE_SPLIT_MASK,
  VRING_FD_INDEX_MASK,
  VRING_FD_NOFD_MASK,
  VhostUserProtocolFeature,
  frontendRequestName,
} from './protocol.js';

const R = FrontendRequest;
const PROTOCOL_FEATURES_BIT = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);

/** The protocol features this back-end implements (and offers). */
export const SUPPORTED_PROTOCOL_FEATURES = featureSet(
  VhostUserProtocolFeature.MQ,
  VhostUserProtocolFeature.REPLY_ACK,
  VhostUserProtocolFeature.CONFIG,
  VhostUserProtocolFeature.RESET_DEVICE,
  VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS,
  VhostUserProtocolFeature.STATUS,
  // UML's virtio_uml needs the back-end channel: without it, it requests its vring interrupts on irq 0 and the
  // probe fails (EBUSY). It is also how configuration changes reach the front end.
  VhostUserProtocolFeature.BACKEND_REQ,
);

/**
 * Memory slots reported by GET_MAX_MEM_SLOTS (libvhost-user's VHOST_USER_MAX_RAM_SLOTS). Each slot is one
 * mapping the back-end holds; the bound keeps a front-end from making it hold arbitrarily many.
 */
export const DEFAULT_MAX_MEM_SLOTS = 32;

/** The reply status of a failed NEED_REPLY request ("non-zero on failure"). */
const REPLY_FAILURE = 1n;

export interface VhostUserSessionOptions {
  /** Every fault: guest faults from the device model, and the front-end errors that end the connection. */
  readonly onFault?: (fault: VirtioError) => void;
  /**
   * Ring `ringIndex` changed its kick fd, started/stopped or enabled state: the data path re-reads
   * `session.ring(ringIndex)`. Runs before a replaced kick fd (`previousKickFd`) is closed.
   */
  readonly onRingChange?: (ringIndex: number, previousKickFd: number | null) => void;
  /** GET_MAX_MEM_SLOTS (default {@link DEFAULT_MAX_MEM_SLOTS}). */
  readonly maxMemSlots?: number;
}

/** What the data path needs to know about one ring. */
export interface VhostRingInfo {
  readonly index: number;
  /** The eventfd the front-end writes on a kick; null when none (never set, stopped, or polling). */
  readonly kickFd: number | null;
  /** SET_VRING_KICK came with the "no fd" bit: poll the ring and call `kick` instead of waiting on an fd. */
  readonly polling: boolean;
  readonly callFd: number | null;
  readonly errFd: number | null;
  readonly started: boolean;
  readonly enabled: boolean;
  /** The ring is active in the device: `kick` serves it. */
  readonly live: boolean;
}

export type HandleResult =
  | { readonly close: false; readonly reply: Uint8Array | null }
  | { readonly close: true; readonly reply: Uint8Array | null; readonly error: VhostUserError };

export interface ReceiveResult {
  /** Replies to send, in order. */
  readonly replies: Uint8Array[];
  /** Non-null: the connection must end (after sending `replies`); the session is already closed. */
  readonly error: VhostUserError | null;
}

export interface VhostUserSessionStats {
  /** Kicks passed to the device. */
  kicks: number;
  /** Call eventfd signals. */
  calls: number;
  /** Error eventfd signals. */
  errs: number;
  /** Device activations. */
  activations: number;
  /** Chains in flight when the device was reset by a ring or memory change. */
  inFlightDropped: number;
  /** Configuration-change notifications sent over the back-end channel. */
  configChanges: number;
  /** Configuration-change notifications the front-end could not be told about (no back-end channel). */
  configChangesDropped: number;
}

interface RingState {
  size: number | null;
  addr: VringAddr | null;
  base: number;
  kickFd: number | null;
  polling: boolean;
  callFd: number | null;
  errFd: number | null;
  started: boolean;
  enabled: boolean;
  live: boolean;
}

interface MappedMemRegion {
  readonly guestAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mapping: MappedRegion;
  readonly bytes: Uint8Array;
  /**
   * ADD_MEM_REGs of this very region not yet matched by a REM_MEM_REG. A front end with several vhost devices
   * on one connection (QEMU's multiqueue vhost-user-net: one per queue pair) adds every region once per device.
   */
  adds: number;
}

/** A validated region, before mapping. */
interface RegionSpec {
  readonly guestAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mmapOffset: number;
}

function newRing(): RingState {
  return {
    size: null,
    addr: null,
    base: 0,
    kickFd: null,
    polling: false,
    callFd: null,
    errFd: null,
    started: false,
    enabled: false,
    live: false,
  };
}

function fail(code: VhostUserSessionErrorCode, message: string, value: unknown, cause?: unknown): never {
  throw new VhostUserSessionError(code, message, value, cause === undefined ? undefined : { cause });
}

/** A u64 that must be usable as an exact JavaScript number (< 2^53). */
function safe(value: bigint): number | null {
  return value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : null;
}

export class VhostUserBackendSession {
  readonly device: VirtioDevice;
  readonly controller: DeviceController;
  readonly hostIo: VhostHostIo;
  readonly stats: VhostUserSessionStats = {
    kicks: 0,
    calls: 0,
    errs: 0,
    activations: 0,
    inFlightDropped: 0,
    configChanges: 0,
    configChangesDropped: 0,
  };

  readonly #onFault: ((fault: VirtioError) => void) | undefined;
  readonly #onRingChange: ((ringIndex: number, previousKickFd: number | null) => void) | undefined;
  readonly #maxMemSlots: number;
  readonly #parser = new VhostUserMessageParser({ mode: 'requests' });
  readonly #rings: RingState[];
  #regions: MappedMemRegion[] = [];
  #memory: GuestMemory | null = null;
  #ackedFeatures: bigint | null = null;
  #protocolFeatures = 0n;
  #owner = false;
  #frontendStatus = 0;
  /** The controller is configured for the rings marked live (DRIVER_OK written). */
  #live = false;
  /** Memory or features changed since activation: activate again. */
  #stale = false;
  /** Error eventfds were signalled for the current DEVICE_NEEDS_RESET. */
  #errSignalled = false;
  /** The back-end channel (SET_BACKEND_REQ_FD): a socket for requests to the front end. */
  #backendReqFd: number | null = null;

  constructor(device: VirtioDevice, hostIo: VhostHostIo, options: VhostUserSessionOptions = {}) {
    this.device = device;
    this.hostIo = hostIo;
    this.#onFault = options.onFault;
    this.#onRingChange = options.onRingChange;
    this.#maxMemSlots = options.maxMemSlots ?? DEFAULT_MAX_MEM_SLOTS;
    const sink: InterruptSink = {
      signalUsed: (queueIndex) => {
        this.#signalUsed(queueIndex);
      },
      signalConfig: () => {
        this.#signalConfig();
      },
    };
    this.controller = new DeviceController(device, sink, {
      onFault: (fault) => {
        this.#onFault?.(fault);
      },
    });
    this.#rings = device.queueMaxSizes.map(newRing);
  }

  // ---- the server's entry points ----

  /** Parses `chunk` (with the fds received with it) and handles every whole message in it. */
  receive(chunk: Uint8Array, fds: readonly number[] = []): ReceiveResult {
    this.#parser.push(chunk, fds);
    const replies: Uint8Array[] = [];
    for (;;) {
      let message: VhostUserMessage | null;
      try {
        message = this.#parser.next();
      } catch (e) {
        const error =
          e instanceof VhostUserProtocolError ? e : this.#internal(e, 'parsing the message stream');
        this.#onFault?.(error);
        this.close();
        return { replies, error };
      }
      if (message === null) return { replies, error: null };
      const result = this.handle(message);
      if (result.reply !== null) replies.push(result.reply);
      if (result.close) return { replies, error: result.error };
    }
  }

  /**
   * Handles one parsed request. The session takes ownership of `message.fds` (keeps or closes each). On
   * `close: true` the session has already closed itself; send `reply` if not null, then end the connection.
   */
  handle(message: VhostUserMessage): HandleResult {
    const fds = [...message.fds];
    const needReply = (message.flags & FLAG_NEED_REPLY) !== 0;
    try {
      const body = this.#dispatch(message, fds);
      const reply = body ?? (needReply ? encodeReplyU64(message.request, 0n) : null);
      return { close: false, reply };
    } catch (e) {
      const error =
        e instanceof VhostUserSessionError || e instanceof VhostUserProtocolError
          ? e
          : this.#internal(e, `handling ${frontendRequestName(message.request)}`);
      this.#onFault?.(error);
      for (const fd of fds.splice(0)) this.hostIo.closeFd(fd);
      this.close();
      const reply =
        needReply && !hasReplyBody(message.request) ? encodeReplyU64(message.request, REPLY_FAILURE) : null;
      return { close: true, reply, error };
    } finally {
      // Fds a handler did not take (REM_MEM_REG's optional one, ...) are closed unused.
      for (const fd of fds) this.hostIo.closeFd(fd);
    }
  }

  /** The front-end notified ring `ringIndex` (its kick fd was readable, or a poll). False if not served. */
  kick(ringIndex: number): boolean {
    const ring = this.#rings[ringIndex];
    if (ring === undefined || !ring.live) return false;
    this.stats.kicks++;
    this.controller.notify(ringIndex);
    return true;
  }

  /**
   * Whether live ring `ringIndex` has chains made available that the device has not taken yet: what a data path
   * that polls before sleeping looks at.
   */
  hasAvailable(ringIndex: number): boolean {
    const ring = this.#rings[ringIndex];
    if (ring === undefined || !ring.live) return false;
    return this.controller.queue(ringIndex)?.hasAvailable() === true;
  }

  /** What the data path needs about ring `ringIndex` (undefined if the device has no such queue). */
  ring(ringIndex: number): VhostRingInfo | undefined {
    const r = this.#rings[ringIndex];
    if (r === undefined) return undefined;
    return {
      index: ringIndex,
      kickFd: r.kickFd,
      polling: r.polling,
      callFd: r.callFd,
      errFd: r.errFd,
      started: r.started,
      enabled: r.enabled,
      live: r.live,
    };
  }

  /** Number of rings (the device's queues). */
  get ringCount(): number {
    return this.#rings.length;
  }

  /** The guest memory built from the memory table, or null before SET_MEM_TABLE. */
  get memory(): GuestMemory | null {
    return this.#memory;
  }

  /** The features acked by SET_FEATURES (bit 30 included), or null before. */
  get ackedFeatures(): bigint | null {
    return this.#ackedFeatures;
  }

  /** The protocol features set by SET_PROTOCOL_FEATURES. */
  get protocolFeatures(): bigint {
    return this.#protocolFeatures;
  }

  /** Whether SET_OWNER was received. */
  get owned(): boolean {
    return this.#owner;
  }

  /**
   * The connection is gone (or must go): resets the device, closes every fd the session holds, unmaps every
   * region and forgets the negotiation. The session is then ready for the next connection. Idempotent.
   */
  close(): void {
    this.#resetDeviceState();
    this.#unmapAll();
    this.#memory = null;
    for (const fd of this.#parser.reset()) this.hostIo.closeFd(fd);
    if (this.#backendReqFd !== null) {
      this.hostIo.closeFd(this.#backendReqFd);
      this.#backendReqFd = null;
    }
    this.#protocolFeatures = 0n;
    this.#owner = false;
  }

  // ---- dispatch ----

  #dispatch(m: VhostUserMessage, fds: number[]): Uint8Array | null {
    const p = m.payload;
    switch (m.request) {
      case R.GET_FEATURES:
        return encodeReplyU64(m.request, this.#offeredFeatures());
      case R.SET_FEATURES:
        this.#setFeatures(decodeU64(p));
        return null;
      case R.SET_OWNER:
        this.#owner = true;
        return null;
      case R.RESET_OWNER:
        // Deprecated: "back-ends either ignore this message, or use it to disable all rings".
        for (const [i, r] of this.#rings.entries()) this.#setEnabled(i, r, false);
        this.#reconcile();
        return null;
      case R.GET_PROTOCOL_FEATURES:
        return encodeReplyU64(m.request, SUPPORTED_PROTOCOL_FEATURES);
      case R.SET_PROTOCOL_FEATURES: {
        const v = decodeU64(p);
        const extra = v & ~SUPPORTED_PROTOCOL_FEATURES;
        if (extra !== 0n) {
          fail(
            'PROTOCOL_FEATURE_NOT_OFFERED',
            `SET_PROTOCOL_FEATURES ${hex(v)}: bits ${hex(extra)} were not offered`,
            v,
          );
        }
        this.#protocolFeatures = v;
        return null;
      }
      case R.GET_QUEUE_NUM:
        return encodeReplyU64(m.request, BigInt(this.#rings.length));
      case R.SET_MEM_TABLE:
        this.#setMemTable(p, fds);
        return null;
      case R.SET_VRING_NUM:
        this.#setVringNum(p);
        return null;
      case R.SET_VRING_ADDR:
        this.#setVringAddr(p);
        return null;
      case R.SET_VRING_BASE:
        this.#setVringBase(p);
        return null;
      case R.GET_VRING_BASE:
        return this.#getVringBase(m.request, p);
      case R.SET_VRING_KICK:
      case R.SET_VRING_CALL:
      case R.SET_VRING_ERR:
        this.#setVringFd(m.request, p, fds);
        return null;
      case R.SET_VRING_ENABLE: {
        const { index, num } = decodeVringState(p);
        const ring = this.#ring(index, 'SET_VRING_ENABLE');
        if (num !== 0 && num !== 1)
          fail('BAD_VALUE', `SET_VRING_ENABLE of ring ${index}: ${num} is not 0 or 1`, num);
        this.#setEnabled(index, ring, num === 1);
        this.#reconcile();
        return null;
      }
      case R.GET_CONFIG:
        return this.#getConfig(m.request, p);
      case R.SET_CONFIG:
        return this.#setConfig(m.request, p, (m.flags & FLAG_NEED_REPLY) !== 0);
      case R.RESET_DEVICE:
        this.#resetDeviceState();
        return null;
      case R.SET_BACKEND_REQ_FD: {
        const fd = fds.shift();
        if (fd === undefined) fail('WRONG_FD_COUNT', 'SET_BACKEND_REQ_FD carries no fd', 0);
        if (this.#backendReqFd !== null) this.hostIo.closeFd(this.#backendReqFd);
        this.#backendReqFd = fd;
        return null;
      }
      case R.GET_MAX_MEM_SLOTS:
        return encodeReplyU64(m.request, BigInt(this.#maxMemSlots));
      case R.ADD_MEM_REG:
        this.#addMemReg(p, fds);
        return null;
      case R.REM_MEM_REG:
        this.#remMemReg(p);
        return null;
      case R.SET_STATUS: {
        const v = decodeU64(p);
        if (v > 0xffn) fail('BAD_VALUE', `SET_STATUS ${hex(v)} is not a status byte`, v);
        if (v === 0n) this.#resetDeviceState();
        else this.#frontendStatus = Number(v);
        return null;
      }
      case R.GET_STATUS: {
        const needsReset = (this.controller.status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
        const status = this.#frontendStatus | (needsReset ? DeviceStatus.DEVICE_NEEDS_RESET : 0);
        return encodeReplyU64(m.request, BigInt(status));
      }
      default:
        return fail(
          'UNSUPPORTED_REQUEST',
          `${frontendRequestName(m.request)} is not supported (its feature was never offered)`,
          m.request,
        );
    }
  }

  // ---- features ----

  #offeredFeatures(): bigint {
    return this.controller.deviceFeatures | PROTOCOL_FEATURES_BIT;
  }

  #setFeatures(v: bigint): void {
    const extra = v & ~this.#offeredFeatures();
    if (extra !== 0n)
      fail('FEATURE_NOT_OFFERED', `SET_FEATURES ${hex(v)}: bits ${hex(extra)} were not offered`, v);
    // The same features again (the next queue pair's vhost device of a multiqueue QEMU netdev): nothing changes,
    // and the running rings are not reset under the pairs already started.
    if (this.#live && v === this.#ackedFeatures) return;
    if (this.#live) this.#deactivate();
    this.#negotiate(v & ~PROTOCOL_FEATURES_BIT);
    this.#ackedFeatures = v;
    // "upon receiving a VHOST_USER_SET_FEATURES message from the front-end without
    // VHOST_USER_F_PROTOCOL_FEATURES set, the back-end must enable all rings immediately."
    if (!hasFeature(v, VHOST_USER_F_PROTOCOL_FEATURES)) {
      for (const [i, r] of this.#rings.entries()) this.#setEnabled(i, r, true);
    }
    this.#reconcile();
  }

  /** Resets the controller and runs it to FEATURES_OK with `features`; the device must accept them. */
  #negotiate(features: bigint): void {
    const c = this.controller;
    c.reset();
    c.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
    c.setDriverFeatures(features);
    c.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
    if ((c.status & DeviceStatus.FEATURES_OK) === 0) {
      const why = c.lastFault?.message ?? 'refused';
      c.reset();
      fail(
        'FEATURES_REJECTED',
        `the device refused features ${hex(features)}: ${why}`,
        features,
        c.lastFault,
      );
    }
  }

  // ---- memory ----

  #setMemTable(p: Uint8Array, fds: number[]): void {
    const n = memTableRegionCount(p);
    const room = (p.length - MEM_TABLE_HEADER_SIZE) / MEM_REGION_SIZE;
    if (n < 1 || n > MEM_TABLE_MAX_REGIONS || n > room) {
      fail(
        'BAD_MEMORY_REGION',
        `SET_MEM_TABLE: ${n} regions (1 to ${Math.min(MEM_TABLE_MAX_REGIONS, room)} fit this payload)`,
        n,
      );
    }
    if (fds.length !== n) {
      fail('WRONG_FD_COUNT', `SET_MEM_TABLE: ${n} regions but ${fds.length} fds`, {
        regions: n,
        fds: fds.length,
      });
    }
    const specs = decodeMemTable(p, n).map((r, i) => this.#checkRegion(r, `region ${i}`));
    checkOverlaps(specs);
    const mapped = this.#mapRegions(specs, fds.splice(0));
    if (this.#live) this.#deactivate();
    this.#unmapAll();
    this.#regions = mapped;
    this.#rebuildMemory();
    this.#reconcile();
  }

  #addMemReg(p: Uint8Array, fds: number[]): void {
    const region = decodeSingleMemRegion(p);
    const same = this.#findRegion(region);
    if (same !== undefined) {
      // Already mapped (another vhost device of the same front end): counted, its fd not needed.
      same.adds++;
      for (const fd of fds.splice(0)) this.hostIo.closeFd(fd);
      return;
    }
    if (this.#regions.length >= this.#maxMemSlots) {
      fail(
        'BAD_MEMORY_REGION',
        `ADD_MEM_REG: all ${this.#maxMemSlots} memory slots are in use`,
        this.#maxMemSlots,
      );
    }
    const spec = this.#checkRegion(region, 'ADD_MEM_REG region');
    checkOverlaps([...this.#regions.map((r) => ({ ...r, mmapOffset: 0 })), spec]);
    const [mapped] = this.#mapRegions([spec], fds.splice(0));
    if (this.#live) this.#deactivate();
    this.#regions.push(mapped as MappedMemRegion);
    this.#rebuildMemory();
    this.#reconcile();
  }

  /** The mapped region `r` names: "identified by its guest address, user address and size" (not the offset). */
  #findRegion(r: MemRegion): MappedMemRegion | undefined {
    return this.#regions.find(
      (m) =>
        BigInt(m.guestAddr) === r.guestAddr && BigInt(m.userAddr) === r.userAddr && BigInt(m.size) === r.size,
    );
  }

  #remMemReg(p: Uint8Array): void {
    const r = decodeSingleMemRegion(p);
    const region = this.#findRegion(r);
    if (region === undefined) {
      fail('REGION_NOT_FOUND', `REM_MEM_REG: no region at guest ${hex(r.guestAddr)} size ${hex(r.size)}`, r);
    }
    if (region.adds > 1) {
      // Still added by another vhost device of the front end: stays mapped.
      region.adds--;
      return;
    }
    if (this.#live) this.#deactivate();
    const [gone] = this.#regions.splice(this.#regions.indexOf(region), 1);
    gone?.mapping.unmap();
    this.#rebuildMemory();
    this.#reconcile();
  }

  #checkRegion(r: MemRegion, what: string): RegionSpec {
    const guestAddr = safe(r.guestAddr);
    const size = safe(r.size);
    const userAddr = safe(r.userAddr);
    const mmapOffset = safe(r.mmapOffset);
    if (guestAddr === null || size === null || userAddr === null || mmapOffset === null || size === 0) {
      fail(
        'BAD_MEMORY_REGION',
        `${what}: guest ${hex(r.guestAddr)} size ${hex(r.size)} user ${hex(r.userAddr)} offset ${hex(r.mmapOffset)} is not usable`,
        r,
      );
    }
    if (
      guestAddr + size > MAX_GUEST_ADDRESS ||
      userAddr + size > MAX_GUEST_ADDRESS ||
      mmapOffset + size > MAX_GUEST_ADDRESS
    ) {
      fail(
        'BAD_MEMORY_REGION',
        `${what}: ends past 2^53 (guest ${hex(guestAddr)}, user ${hex(userAddr)}, size ${hex(size)})`,
        r,
      );
    }
    return { guestAddr, size, userAddr, mmapOffset };
  }

  /** Maps each region with its fd; closes every fd in all cases; on failure unmaps what was mapped. */
  #mapRegions(specs: readonly RegionSpec[], fds: readonly number[]): MappedMemRegion[] {
    const mapped: MappedMemRegion[] = [];
    try {
      specs.forEach((s, i) => {
        const fd = fds[i] as number;
        const length = s.mmapOffset + s.size;
        let mapping: MappedRegion;
        try {
          mapping = this.hostIo.mapShared(fd, length, 0);
        } catch (e) {
          fail(
            'MAP_FAILED',
            `mapping fd ${fd} (${hex(length)} bytes) failed: ${e instanceof Error ? e.message : String(e)}`,
            fd,
            e,
          );
        }
        if (mapping.bytes.length < length) {
          mapping.unmap();
          fail(
            'MAP_FAILED',
            `fd ${fd}: mapped ${mapping.bytes.length} bytes, the region needs ${length}`,
            fd,
          );
        }
        mapped.push({
          guestAddr: s.guestAddr,
          size: s.size,
          userAddr: s.userAddr,
          mapping,
          bytes: mapping.bytes.subarray(s.mmapOffset, length),
          adds: 1,
        });
      });
    } catch (e) {
      for (const m of mapped) m.mapping.unmap();
      throw e;
    } finally {
      for (const fd of fds) this.hostIo.closeFd(fd);
    }
    return mapped;
  }

  #rebuildMemory(): void {
    this.#memory =
      this.#regions.length === 0
        ? null
        : new GuestMemory(this.#regions.map((r) => ({ guestAddr: r.guestAddr, bytes: r.bytes })));
  }

  #unmapAll(): void {
    const regions = this.#regions;
    this.#regions = [];
    for (const r of regions) r.mapping.unmap();
  }

  /** Front-end user address → guest-physical, for `len` bytes inside one region; null if not mapped. */
  #translate(userAddr: bigint, len: number): number | null {
    const uva = safe(userAddr);
    if (uva === null) return null;
    for (const r of this.#regions) {
      if (uva >= r.userAddr && uva + len <= r.userAddr + r.size) return r.guestAddr + (uva - r.userAddr);
    }
    return null;
  }

  // ---- rings ----

  #ring(index: number, what: string): RingState {
    const ring = this.#rings[index];
    if (ring === undefined) {
      fail('RING_INDEX_OUT_OF_RANGE', `${what}: ring ${index} (the device has ${this.#rings.length})`, index);
    }
    return ring;
  }

  #setVringNum(p: Uint8Array): void {
    const { index, num } = decodeVringState(p);
    const ring = this.#ring(index, 'SET_VRING_NUM');
    const max = this.device.queueMaxSizes[index] as number;
    if (!isValidSplitQueueSize(num) || num > max) {
      fail(
        'BAD_RING_SIZE',
        `SET_VRING_NUM of ring ${index}: ${num} is not a power of two from 1 to ${max}`,
        num,
      );
    }
    if (ring.live) this.#stale = true;
    ring.size = num;
    this.#reconcile();
  }

  #setVringAddr(p: Uint8Array): void {
    const addr = decodeVringAddr(p);
    const ring = this.#ring(addr.index, 'SET_VRING_ADDR');
    if ((addr.flags & ~VHOST_VRING_F_LOG) !== 0) {
      fail(
        'BAD_VALUE',
        `SET_VRING_ADDR of ring ${addr.index}: undefined flags ${hex(addr.flags)}`,
        addr.flags,
      );
    }
    if (this.#memory === null) {
      fail('NO_MEMORY_TABLE', `SET_VRING_ADDR of ring ${addr.index} before any memory table`, addr.index);
    }
    this.#translateRing(addr.index, addr, ring.size ?? 1);
    if (ring.live) this.#stale = true;
    ring.addr = addr;
    this.#reconcile();
  }

  /** Guest-physical addresses of a ring's three parts for `size` entries, or a RING_ADDRESS_NOT_MAPPED error. */
  #translateRing(
    index: number,
    addr: VringAddr,
    size: number,
  ): { desc: number; avail: number; used: number } {
    const part = (what: string, uva: bigint, len: number): number => {
      const gpa = this.#translate(uva, len);
      if (gpa === null) {
        fail(
          'RING_ADDRESS_NOT_MAPPED',
          `ring ${index}: ${what} at user address ${hex(uva)} (+${len}) is not inside one memory region`,
          uva,
        );
      }
      return gpa;
    };
    return {
      desc: part('descriptor table', addr.desc, descTableSize(size)),
      avail: part('available ring', addr.avail, availRingSize(size)),
      used: part('used ring', addr.used, usedRingSize(size)),
    };
  }

  #setVringBase(p: Uint8Array): void {
    const { index, num } = decodeVringState(p);
    const ring = this.#ring(index, 'SET_VRING_BASE');
    if ((num & ~VRING_BASE_SPLIT_MASK) !== 0) {
      fail('BAD_VALUE', `SET_VRING_BASE of ring ${index}: ${hex(num)} has reserved bits 16-31 set`, num);
    }
    if (ring.live) this.#stale = true;
    ring.base = num;
    this.#reconcile();
  }

  #getVringBase(request: number, p: Uint8Array): Uint8Array {
    const { index } = decodeVringState(p);
    const ring = this.#ring(index, 'GET_VRING_BASE');
    if (ring.live) {
      this.device.quiesce?.();
      const q = this.controller.queue(index);
      if (q?.isActive === true) ring.base = q.nextAvail;
    }
    const base = ring.base;
    // "stop a ring upon receiving VHOST_USER_GET_VRING_BASE".
    const kick = ring.kickFd;
    ring.started = false;
    ring.kickFd = null;
    ring.polling = false;
    this.#ringChanged(index, kick);
    this.#reconcile();
    return encodeReplyVringState(request, index, base);
  }

  #setVringFd(request: number, p: Uint8Array, fds: number[]): void {
    const name = frontendRequestName(request);
    const v = decodeU64(p);
    if ((v & ~BigInt(VRING_FD_INDEX_MASK | VRING_FD_NOFD_MASK)) !== 0n) {
      fail('BAD_VALUE', `${name} ${hex(v)}: only bits 0-8 are defined`, v);
    }
    const index = Number(v & BigInt(VRING_FD_INDEX_MASK));
    const noFd = (v & BigInt(VRING_FD_NOFD_MASK)) !== 0n;
    const ring = this.#ring(index, name);
    if (fds.length !== (noFd ? 0 : 1)) {
      fail(
        'WRONG_FD_COUNT',
        `${name} of ring ${index}: ${fds.length} fds with the no-fd bit ${noFd ? 'set' : 'clear'}`,
        { index, fds: fds.length },
      );
    }
    const fd = noFd ? null : (fds.shift() as number);
    let old: number | null;
    if (request === R.SET_VRING_KICK) {
      old = ring.kickFd;
      ring.kickFd = fd;
      ring.polling = noFd;
      ring.started = true;
      this.#ringChanged(index, old);
      this.#reconcile();
    } else if (request === R.SET_VRING_CALL) {
      old = ring.callFd;
      ring.callFd = fd;
      if (old !== null) this.hostIo.closeFd(old);
    } else {
      old = ring.errFd;
      ring.errFd = fd;
      if (old !== null) this.hostIo.closeFd(old);
    }
  }

  #setEnabled(index: number, ring: RingState, enabled: boolean): void {
    if (ring.enabled === enabled) return;
    ring.enabled = enabled;
    this.#ringChanged(index, ring.kickFd);
  }

  /** Tells the data path, then closes a replaced kick fd. */
  #ringChanged(index: number, previousKick: number | null): void {
    this.#onRingChange?.(index, previousKick);
    const ring = this.#rings[index] as RingState;
    if (previousKick !== null && previousKick !== ring.kickFd) this.hostIo.closeFd(previousKick);
  }

  // ---- config ----

  #getConfig(request: number, p: Uint8Array): Uint8Array {
    const c = decodeConfig(p);
    if (c.size !== c.data.length) {
      fail('BAD_VALUE', `GET_CONFIG: size field ${c.size} but ${c.data.length} payload bytes`, c.size);
    }
    if (c.offset + c.size > this.controller.configSize) {
      // "vhost-user back-end uses zero length of payload to indicate an error".
      this.#onFault?.(
        new VhostUserSessionError(
          'BAD_VALUE',
          `GET_CONFIG ${c.offset}+${c.size} outside the ${this.controller.configSize}-byte config space`,
          c,
        ),
      );
      return encodeReply(request);
    }
    return encodeReply(
      request,
      encodeConfig(c.offset, c.flags, this.controller.readConfig(c.offset, c.size)),
    );
  }

  #setConfig(request: number, p: Uint8Array, needReply: boolean): Uint8Array | null {
    const c = decodeConfig(p);
    if (c.size !== c.data.length) {
      fail('BAD_VALUE', `SET_CONFIG: size field ${c.size} but ${c.data.length} payload bytes`, c.size);
    }
    if (c.flags > VHOST_SET_CONFIG_TYPE_MIGRATION)
      fail('BAD_VALUE', `SET_CONFIG: undefined flags ${c.flags}`, c.flags);
    if (c.offset + c.size > this.controller.configSize) {
      this.#onFault?.(
        new VhostUserSessionError(
          'BAD_VALUE',
          `SET_CONFIG ${c.offset}+${c.size} outside the ${this.controller.configSize}-byte config space`,
          c,
        ),
      );
      return needReply ? encodeReplyU64(request, REPLY_FAILURE) : null;
    }
    // Which fields are writable is the device's business (writeConfig ignores read-only ones).
    this.controller.writeConfig(c.offset, c.data.slice());
    return null;
  }

  // ---- activation ----

  /** Activates, re-activates or resets the device so that exactly the served rings are live. */
  #reconcile(): void {
    const want = this.#rings.map((r) => r.started && r.enabled && r.size !== null && r.addr !== null);
    if (this.#live) {
      if (!this.#stale && want.every((w, i) => w === (this.#rings[i] as RingState).live)) return;
      this.#deactivate();
    }
    this.#stale = false;
    const memory = this.#memory;
    const features = this.#ackedFeatures;
    if (!want.some(Boolean) || memory === null || features === null) return;

    this.#negotiate(features & ~PROTOCOL_FEATURES_BIT);
    const c = this.controller;
    c.setMemory(memory);
    want.forEach((w, i) => {
      if (!w) return;
      const ring = this.#rings[i] as RingState;
      const size = ring.size as number;
      const gpa = this.#translateRing(i, ring.addr as VringAddr, size);
      const q = c.queue(i);
      if (q === undefined) return;
      q.size = size;
      q.descTable = gpa.desc;
      q.availRing = gpa.avail;
      q.usedRing = gpa.used;
      c.enableQueue(i);
      q.nextAvail = ring.base;
      q.nextUsed = memory.readU16(gpa.used + USED_IDX_OFFSET);
      ring.live = true;
    });
    this.#live = true;
    this.#errSignalled = false;
    this.stats.activations++;
    c.setStatus(c.status | DeviceStatus.DRIVER_OK);
  }

  /** Resets the device; each live ring keeps its next avail index as its base. */
  #deactivate(): void {
    this.device.quiesce?.();
    for (const [i, ring] of this.#rings.entries()) {
      if (!ring.live) continue;
      const q = this.controller.queue(i);
      if (q?.isActive === true) {
        ring.base = q.nextAvail;
        this.stats.inFlightDropped += q.inFlight;
      }
      ring.live = false;
    }
    this.#live = false;
    this.controller.reset();
  }

  /** RESET_DEVICE: every ring back to its initial state (fds closed), features forgotten, device reset. */
  #resetDeviceState(): void {
    if (this.#live) this.#deactivate();
    this.controller.reset();
    for (const [i, ring] of this.#rings.entries()) {
      const kick = ring.kickFd;
      const { callFd, errFd } = ring;
      Object.assign(ring, newRing());
      this.#ringChanged(i, kick);
      if (callFd !== null) this.hostIo.closeFd(callFd);
      if (errFd !== null) this.hostIo.closeFd(errFd);
    }
    this.#ackedFeatures = null;
    this.#frontendStatus = 0;
    this.#stale = false;
  }

  // ---- device → front-end ----

  #signalUsed(queueIndex: number): void {
    const ring = this.#rings[queueIndex];
    if (ring === undefined || !ring.live || ring.callFd === null) return;
    this.stats.calls++;
    this.hostIo.signalCall(queueIndex, ring.callFd);
  }

  #signalConfig(): void {
    // The spec's configuration change notification travels over the back-end channel; without one the
    // front-end cannot be told.
    const channel = this.#backendReqFd;
    if (channel !== null && hasFeature(this.#protocolFeatures, VhostUserProtocolFeature.BACKEND_REQ)) {
      this.stats.configChanges++;
      this.hostIo.sendBackendRequest(channel, encodeRequest(BackendRequest.CONFIG_CHANGE_MSG));
    } else {
      this.stats.configChangesDropped++;
    }
    if ((this.controller.status & DeviceStatus.DEVICE_NEEDS_RESET) === 0) return;
    if (this.#errSignalled) return;
    this.#errSignalled = true;
    for (const [i, ring] of this.#rings.entries()) {
      if (!ring.live || ring.errFd === null) continue;
      this.stats.errs++;
      this.hostIo.signalErr(i, ring.errFd);
    }
  }

  #internal(e: unknown, what: string): VhostUserSessionError {
    return new VhostUserSessionError(
      'INTERNAL_ERROR',
      `${what}: ${e instanceof Error ? e.message : String(e)}`,
      undefined,
      { cause: e },
    );
  }
}

/** Requests whose reply carries a body of its own (NEED_REPLY adds nothing to them). */
function hasReplyBody(request: number): boolean {
  switch (request) {
    case R.GET_FEATURES:
    case R.GET_PROTOCOL_FEATURES:
    case R.GET_QUEUE_NUM:
    case R.GET_VRING_BASE:
    case R.GET_CONFIG:
    case R.GET_MAX_MEM_SLOTS:
    case R.GET_STATUS:
      return true;
    default:
      return false;
  }
}

/** Regions must not overlap, neither in guest-physical nor in front-end user address space. */
function checkOverlaps(specs: readonly RegionSpec[]): void {
  for (let i = 0; i < specs.length; i++) {
    for (let j = i + 1; j < specs.length; j++) {
      const a = specs[i] as RegionSpec;
      const b = specs[j] as RegionSpec;
      const guest = a.guestAddr < b.guestAddr + b.size && b.guestAddr < a.guestAddr + a.size;
      const user = a.userAddr < b.userAddr + b.size && b.userAddr < a.userAddr + a.size;
      if (guest || user) {
        fail(
          'BAD_MEMORY_REGION',
          `memory regions overlap in ${guest ? 'guest' : 'user'} address space: ${hex(guest ? a.guestAddr : a.userAddr)}+${hex(a.size)} and ${hex(guest ? b.guestAddr : b.userAddr)}+${hex(b.size)}`,
          { a, b },
        );
      }
    }
  }
}
