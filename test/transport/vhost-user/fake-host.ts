/**
 * Test doubles for the vhost-user back-end session: a {@link VhostHostIo} whose fds are numbers in a table
 * (memory fds are ArrayBuffers: `mapShared` returns views of them, the stand-in for mmap), and a front-end that
 * builds the messages Linux UML's virtio_uml sends, with a driver-side memory over the same bytes.
 */
import assert from 'node:assert/strict';
import type { MappedRegion, VhostHostIo } from '../../../src/transport/vhost-user/host-io.js';
import { encodeRequest } from '../../../src/transport/vhost-user/message-writer.js';
import {
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
  type MemRegion,
} from '../../../src/transport/vhost-user/payloads.js';
import { FrontendRequest, VRING_FD_NOFD_MASK } from '../../../src/transport/vhost-user/protocol.js';
import type {
  ReceiveResult,
  VhostUserBackendSession,
} from '../../../src/transport/vhost-user/backend-session.js';
import { GuestAllocator } from '../../../src/virtio/guest-allocator.js';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import type { SplitQueueLayout } from '../../../src/virtio/split/split-virtqueue.js';
import { SplitVirtqueue } from '../../../src/virtio/split/split-virtqueue.js';

export class FakeHostIo implements VhostHostIo {
  /** Fds handed to the session and not closed yet. */
  readonly open = new Set<number>();
  readonly closed: number[] = [];
  /** Memory fds: the "file" behind each. */
  readonly files = new Map<number, ArrayBuffer>();
  readonly calls: [ring: number, fd: number][] = [];
  readonly errs: [ring: number, fd: number][] = [];
  /** Closing an fd twice or one never given: recorded here (the test asserts it stays empty). */
  readonly misuse: string[] = [];
  liveMappings = 0;
  failMap = false;
  #next = 100;

  /** A new eventfd-like fd. */
  eventFd(): number {
    const fd = this.#next++;
    this.open.add(fd);
    return fd;
  }

  /** A new memory fd over `file`. */
  memFd(file: ArrayBuffer): number {
    const fd = this.eventFd();
    this.files.set(fd, file);
    return fd;
  }

  mapShared(fd: number, length: number, offset: number): MappedRegion {
    if (this.failMap) throw new Error('mmap: ENOMEM (test)');
    if (!this.open.has(fd)) throw new Error(`mmap of closed fd ${fd}`);
    const file = this.files.get(fd);
    if (file === undefined) throw new Error(`fd ${fd} is not a memory fd`);
    if (offset + length > file.byteLength) throw new Error(`mmap past the end of fd ${fd}`);
    this.liveMappings++;
    let mapped = true;
    return {
      bytes: new Uint8Array(file, offset, length),
      unmap: () => {
        if (!mapped) this.misuse.push(`double unmap of fd ${fd}`);
        mapped = false;
        this.liveMappings--;
      },
    };
  }

  readonly backendRequests: [number, Uint8Array][] = [];

  closeFd(fd: number): void {
    if (!this.open.delete(fd)) this.misuse.push(`close of fd ${fd} not open`);
    this.closed.push(fd);
  }

  signalCall(ring: number, fd: number): void {
    if (!this.open.has(fd)) this.misuse.push(`call on closed fd ${fd}`);
    this.calls.push([ring, fd]);
  }

  sendBackendRequest(fd: number, bytes: Uint8Array): void {
    if (!this.open.has(fd)) this.misuse.push(`backend request on closed fd ${fd}`);
    this.backendRequests.push([fd, bytes]);
  }

  signalErr(ring: number, fd: number): void {
    if (!this.open.has(fd)) this.misuse.push(`err on closed fd ${fd}`);
    this.errs.push([ring, fd]);
  }

  /** Every fd closed, every mapping gone, nothing misused. */
  assertClean(): void {
    assert.deepEqual([...this.open], [], 'fds left open');
    assert.equal(this.liveMappings, 0, 'mappings left');
    assert.deepEqual(this.misuse, []);
  }
}

/** One message and the fds sent with it (one sendmsg). */
export interface Sent {
  readonly bytes: Uint8Array;
  readonly fds: readonly number[];
}

export interface FrontEndOptions {
  /** Guest-physical base of the memory region (UML: the end of its reserved area). */
  readonly guestBase?: number;
  /** Front-end user address of the region (UML: the same as guest; QEMU: its mmap address). */
  readonly userBase?: number;
  readonly memorySize?: number;
  /** Offset of the region in the memory file. */
  readonly mmapOffset?: number;
  readonly queueSize?: number;
  readonly queues?: number;
}

/**
 * The front-end side: guest memory in a "file" (an ArrayBuffer behind a memory fd), the rings of each queue
 * allocated in it, and the requests virtio_uml sends, built with the message writer.
 */
export class FakeFrontEnd {
  readonly io: FakeHostIo;
  readonly guestBase: number;
  readonly userBase: number;
  readonly memorySize: number;
  readonly mmapOffset: number;
  readonly queueSize: number;
  readonly file: ArrayBuffer;
  /** The driver's view of guest memory: the same bytes the back-end maps. */
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly layouts: SplitQueueLayout[];
  readonly kickFds: number[] = [];
  readonly callFds: number[] = [];

  constructor(io: FakeHostIo, options: FrontEndOptions = {}) {
    this.io = io;
    this.guestBase = options.guestBase ?? 0x10000;
    this.userBase = options.userBase ?? this.guestBase;
    this.memorySize = options.memorySize ?? 1 << 20;
    this.mmapOffset = options.mmapOffset ?? this.guestBase;
    this.queueSize = options.queueSize ?? 256;
    this.file = new ArrayBuffer(this.mmapOffset + this.memorySize);
    this.memory = new GuestMemory([
      { guestAddr: this.guestBase, bytes: new Uint8Array(this.file, this.mmapOffset, this.memorySize) },
    ]);
    this.allocator = new GuestAllocator(this.memory);
    this.layouts = Array.from({ length: options.queues ?? 1 }, () =>
      SplitVirtqueue.allocate(this.allocator, this.queueSize, true),
    );
  }

  region(): MemRegion {
    return {
      guestAddr: BigInt(this.guestBase),
      size: BigInt(this.memorySize),
      userAddr: BigInt(this.userBase),
      mmapOffset: BigInt(this.mmapOffset),
    };
  }

  /** Guest-physical → front-end user address. */
  user(gpa: number): bigint {
    return BigInt(gpa - this.guestBase + this.userBase);
  }

  u64(request: number, value: bigint, needReply = false): Sent {
    return { bytes: encodeRequest(request, encodeU64(value), needReply), fds: [] };
  }

  plain(request: number, needReply = false): Sent {
    return { bytes: encodeRequest(request, new Uint8Array(0), needReply), fds: [] };
  }

  state(request: number, index: number, num: number, needReply = false): Sent {
    return { bytes: encodeRequest(request, encodeVringState({ index, num }), needReply), fds: [] };
  }

  /** UML's SET_MEM_TABLE: its struct has room for 2 regions (72 bytes) whatever nregions is. */
  memTable(slots = 2): Sent {
    const fd = this.io.memFd(this.file);
    return {
      bytes: encodeRequest(FrontendRequest.SET_MEM_TABLE, encodeMemTable([this.region()], slots)),
      fds: [fd],
    };
  }

  vringAddr(index: number, override: Partial<{ desc: bigint; used: bigint; avail: bigint }> = {}): Sent {
    const l = this.layouts[index] as SplitQueueLayout;
    const payload = encodeVringAddr({
      index,
      flags: 0,
      desc: override.desc ?? this.user(l.descTable),
      used: override.used ?? this.user(l.usedRing),
      avail: override.avail ?? this.user(l.availRing),
      log: 0xffff_ffff_ffff_ffffn,
    });
    return { bytes: encodeRequest(FrontendRequest.SET_VRING_ADDR, payload), fds: [] };
  }

  /** SET_VRING_KICK / CALL / ERR with a new eventfd (or the no-fd bit). */
  vringFd(request: number, index: number, withFd = true): Sent {
    if (!withFd) return this.u64(request, BigInt(index) | BigInt(VRING_FD_NOFD_MASK));
    const fd = this.io.eventFd();
    if (request === FrontendRequest.SET_VRING_KICK) this.kickFds[index] = fd;
    if (request === FrontendRequest.SET_VRING_CALL) this.callFds[index] = fd;
    return { bytes: encodeRequest(request, encodeU64(BigInt(index))), fds: [fd] };
  }
}

/** Feeds `sent` to the session as one chunk each; asserts no error; returns the replies. */
export function feed(session: VhostUserBackendSession, ...sent: Sent[]): Uint8Array[] {
  const replies: Uint8Array[] = [];
  for (const s of sent) {
    const r: ReceiveResult = session.receive(s.bytes, s.fds);
    assert.equal(r.error, null, r.error?.message);
    replies.push(...r.replies);
  }
  return replies;
}

/** Feeds `sent`; the last one must end the session; returns the result of that one. */
export function feedExpectingError(session: VhostUserBackendSession, ...sent: Sent[]): ReceiveResult {
  const last = sent.pop() as Sent;
  feed(session, ...sent);
  const r = session.receive(last.bytes, last.fds);
  assert.notEqual(r.error, null, 'expected the session to end');
  return r;
}
