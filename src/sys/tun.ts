/**
 * TUN/TAP (Linux drivers/net/tun.c, include/uapi/linux/if_tun.h): open a tap interface's queue, set its
 * virtio_net_hdr size and offloads, attach or detach a multiqueue queue, and read and write frames.
 *
 * ```ts
 * const { fd, ifname } = openTap({ ifname: 'tap0', vnetHdr: true, multiQueue: false });
 * setVnetHdrSize(fd, 12);
 * setOffload(fd, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
 * const n = readFrame(fd, [view1, view2]); // WOULD_BLOCK (-1) when nothing is queued
 * ```
 *
 * Each open of /dev/net/tun + TUNSETIFF is one queue: with IFF_MULTI_QUEUE the same name may be attached up
 * to 256 times (one fd per queue pair). Without IFF_TUN_EXCL an existing interface is attached to, if its
 * flags match (a persistent tap made with `ip tuntap add`), or a new one is made (it goes away with its last
 * fd). The fds are non-blocking. Frames are read and written with readv/writev straight from the caller's
 * views (zero copy into and out of guest memory).
 */
import { closeSync, constants, openSync, readvSync, writevSync } from 'node:fs';
import * as libc from './libc.js';
import { Errno, SysError } from './sys-error.js';
import { WOULD_BLOCK } from './unix-socket.js';

/** <linux/if_tun.h> ioctls: _IOW('T', nr, int) = 0x40045400 | nr. */
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const TUNSETQUEUE = 0x400454d9;
const TUNGETIFF = 0x800454d2;

/** ifr_flags bits. */
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;
const IFF_ATTACH_QUEUE = 0x0200;
const IFF_DETACH_QUEUE = 0x0400;

/** TUNSETOFFLOAD flags: what the tap may hand over partially checksummed or unsegmented. */
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

/** `struct ifreq`: 16 bytes of name, then the union (ifr_flags is a short at its start); 40 bytes in all. */
const IFREQ_SIZE = 40;
const IFNAMSIZ = 16;
const IFR_FLAGS_OFFSET = 16;
const TUN_DEVICE = '/dev/net/tun';

export interface TapOpenOptions {
  /** Interface name (at most 15 bytes); empty or absent: the kernel picks `tapN`. */
  readonly ifname?: string;
  /** IFF_VNET_HDR: every frame carries a virtio_net_hdr. */
  readonly vnetHdr: boolean;
  /** IFF_MULTI_QUEUE: this fd is one of several queues of the interface. */
  readonly multiQueue: boolean;
}

export interface TapQueue {
  readonly fd: number;
  /** The interface's name as the kernel has it. */
  readonly ifname: string;
}

function ifreq(name: string, flags: number): Uint8Array {
  const req = new Uint8Array(IFREQ_SIZE);
  const bytes = Buffer.from(name, 'utf8');
  if (bytes.length >= IFNAMSIZ) {
    throw new SysError('TUNSETIFF', Errno.EINVAL, name, `interface name longer than ${IFNAMSIZ - 1} bytes`);
  }
  req.set(bytes, 0);
  new DataView(req.buffer).setUint16(IFR_FLAGS_OFFSET, flags, true);
  return req;
}

function ifreqName(req: Uint8Array): string {
  const end = req.indexOf(0);
  return Buffer.from(req.subarray(0, end < 0 ? IFNAMSIZ : end)).toString('utf8');
}

function ioctl(fd: number, request: number, name: string, arg: Uint8Array | number, value: unknown): void {
  const r = typeof arg === 'number' ? libc.ioctlValue(fd, request, arg) : libc.ioctlPtr(fd, request, arg);
  if (r < 0) throw new SysError(name, libc.errno(), value);
}

/** Opens one queue of a tap interface (creating the interface if it does not exist). */
export function openTap(options: TapOpenOptions): TapQueue {
  const flags =
    IFF_TAP | IFF_NO_PI | (options.vnetHdr ? IFF_VNET_HDR : 0) | (options.multiQueue ? IFF_MULTI_QUEUE : 0);
  const req = ifreq(options.ifname ?? '', flags);
  let fd: number;
  try {
    fd = openSync(TUN_DEVICE, constants.O_RDWR | constants.O_NONBLOCK);
  } catch (e) {
    throw new SysError('open', errnoOf(e), TUN_DEVICE);
  }
  try {
    ioctl(fd, TUNSETIFF, 'TUNSETIFF', req, { ifname: options.ifname, flags });
    const got = new Uint8Array(IFREQ_SIZE);
    ioctl(fd, TUNGETIFF, 'TUNGETIFF', got, fd);
    return { fd, ifname: ifreqName(got) };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

/** TUNSETVNETHDRSZ: the virtio_net_hdr size on this queue (12: v1 with num_buffers). */
export function setVnetHdrSize(fd: number, size: number): void {
  const arg = new Uint8Array(4);
  new DataView(arg.buffer).setInt32(0, size, true);
  ioctl(fd, TUNSETVNETHDRSZ, 'TUNSETVNETHDRSZ', arg, size);
}

/** TUNSETOFFLOAD: TUN_F_* bits the reader accepts (0: full checksums, no GSO). */
export function setOffload(fd: number, flags: number): void {
  ioctl(fd, TUNSETOFFLOAD, 'TUNSETOFFLOAD', flags, flags);
}

/** TUNSETQUEUE: attaches (true) or detaches a multiqueue queue; a detached queue gets no frames. */
export function setQueueAttached(fd: number, attached: boolean): void {
  ioctl(fd, TUNSETQUEUE, 'TUNSETQUEUE', ifreq('', attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE), attached);
}

function errnoOf(e: unknown): number {
  return -((e as NodeJS.ErrnoException).errno ?? -Errno.EINVAL);
}

/** Reads one frame into `bufs` (readv); its full length (more than the buffers hold when truncated), or WOULD_BLOCK. */
export function readFrame(fd: number, bufs: readonly Uint8Array[]): number {
  try {
    return readvSync(fd, bufs);
  } catch (e) {
    const err = errnoOf(e);
    if (err === Errno.EAGAIN) return WOULD_BLOCK;
    throw new SysError('readv', err, fd);
  }
}

/** Writes one frame from `bufs` (writev); the bytes written, or WOULD_BLOCK. */
export function writeFrame(fd: number, bufs: readonly Uint8Array[]): number {
  try {
    return writevSync(fd, bufs);
  } catch (e) {
    const err = errnoOf(e);
    if (err === Errno.EAGAIN) return WOULD_BLOCK;
    throw new SysError('writev', err, fd);
  }
}
