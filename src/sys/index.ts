/**
 * src/sys: the only place in ringvm that calls C through FFI (koffi). x86-64 Linux only.
 *
 * Failures are {@link SysError}s (code, errno, syscall, value). Calls that would block on a non-blocking fd
 * return a distinguishable value instead of throwing EAGAIN: {@link WOULD_BLOCK} (-1) from the socket calls,
 * `0n` from eventfdRead, `false` from eventfdWrite. Blocking calls block the calling thread.
 */
export { SysError, isSysError, errnoName } from './sys-error.js';
export {
  WOULD_BLOCK,
  SCM_MAX_FD,
  STAGING_BYTES,
  listenUnix,
  acceptUnix,
  connectUnix,
  socketPair,
  sendWithFds,
  recvWithFds,
  setNonBlocking,
  closeFd,
} from './unix-socket.js';
export type { ListenOptions, AcceptOptions, ReceivedMessage } from './unix-socket.js';
export { eventfd, eventfdWrite, eventfdRead, EVENTFD_MAX } from './eventfd.js';
export type { EventfdOptions } from './eventfd.js';
export { MappedMemory, mapShared, memfdCreate, ftruncate, pageSize } from './mmap.js';
export type { MapOptions, MemfdOptions } from './mmap.js';
export {
  fallocate,
  seekData,
  seekHole,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
} from './file.js';
export { Epoll, EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP, EPOLLET } from './epoll.js';
export type { EpollWaitResult } from './epoll.js';
export { isReadable, watchReadable } from './fd-poll.js';
export type { FdWatch, FdEvents } from './fd-poll.js';
export {
  openTap,
  setVnetHdrSize,
  setOffload,
  setQueueAttached,
  readFrame,
  writeFrame,
  IFF_TAP,
  IFF_NO_PI,
  IFF_VNET_HDR,
  IFF_MULTI_QUEUE,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
  TUN_F_UFO,
} from './tun.js';
export type { TapOpenOptions, TapQueue } from './tun.js';
