/**
 * The C library, loaded once, and the functions src/sys calls (x86-64 Linux, glibc).
 *
 * koffi's function objects are untyped; each one is given its exact TypeScript signature here, once, beside its C
 * prototype. Conventions:
 * - pointers are `bigint` addresses (koffi 3) or `null`; a `Uint8Array`/`Int32Array` may be passed where the C
 *   side only uses the memory during the call (a transient pointer);
 * - `ssize_t`/`off_t` are declared `intptr_t`/`int64_t`; results stay small enough to come back as numbers;
 * - on failure these return -1 and {@link errno} gives the cause. Read it immediately after the call, before
 *   any other native call or allocation-heavy work can overwrite the thread's errno.
 *
 * Nothing outside src/sys imports this file: callers use the typed wrappers, which throw {@link SysError}.
 */
import { createRequire } from 'node:module';
import type * as Koffi from 'koffi';

/** A native address: koffi 3 represents pointers as bigint. */
export type Pointer = bigint;

type KoffiApi = typeof Koffi;
type NativeFunction = (...args: unknown[]) => unknown;

// koffi (its native library, ~15 ms here) and libc load on the first call of any function below, not when this
// module is imported: commands that never call into C (`ringvm img convert` of a qcow2 image, `--help`) start
// without them. koffi is CommonJS, so a synchronous require loads it from here.
const requireCjs = createRequire(import.meta.url);
let koffiApi: KoffiApi | undefined;
let libc: ReturnType<KoffiApi['load']> | undefined;

function koffi(): KoffiApi {
  return (koffiApi ??= requireCjs('koffi') as KoffiApi);
}

/**
 * The C function of `prototype`, bound on its first call. Each declaration below narrows koffi's
 * `(...args: any[]) => any` to the C prototype's exact signature.
 */
function declare(prototype: string): NativeFunction {
  let bound: NativeFunction | undefined;
  return (...args) => {
    bound ??= (libc ??= koffi().load('libc.so.6')).func(prototype) as NativeFunction;
    return bound(...args);
  };
}

/** The calling thread's errno, as left by the last koffi call. */
export function errno(): number {
  return koffi().errno();
}

export const close = declare('int close(int fd)') as (fd: number) => number;

// Variadic: koffi wants the C type of each extra argument; fcntl is only ever called here with an int.
const fcntlVariadic = declare('int fcntl(int fd, int cmd, ...)') as (
  fd: number,
  cmd: number,
  argType: 'int',
  arg: number,
) => number;
export function fcntl(fd: number, cmd: number, arg = 0): number {
  return fcntlVariadic(fd, cmd, 'int', arg);
}

export const socket = declare('int socket(int domain, int type, int protocol)') as (
  domain: number,
  type: number,
  protocol: number,
) => number;
export const socketpair = declare('int socketpair(int domain, int type, int protocol, void *sv)') as (
  domain: number,
  type: number,
  protocol: number,
  sv: Int32Array,
) => number;
export const bind = declare('int bind(int fd, const void *addr, uint32_t addrlen)') as (
  fd: number,
  addr: Uint8Array,
  addrlen: number,
) => number;
export const connect = declare('int connect(int fd, const void *addr, uint32_t addrlen)') as (
  fd: number,
  addr: Uint8Array,
  addrlen: number,
) => number;
export const listen = declare('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number;
export const accept4 = declare('int accept4(int fd, void *addr, void *addrlen, int flags)') as (
  fd: number,
  addr: null,
  addrlen: null,
  flags: number,
) => number;
export const sendmsg = declare('intptr_t sendmsg(int fd, void *msg, int flags)') as (
  fd: number,
  msg: Pointer,
  flags: number,
) => number;
export const recvmsg = declare('intptr_t recvmsg(int fd, void *msg, int flags)') as (
  fd: number,
  msg: Pointer,
  flags: number,
) => number;

export const eventfd = declare('int eventfd(unsigned int initval, int flags)') as (
  initval: number,
  flags: number,
) => number;
export const eventfd_write = declare('int eventfd_write(int fd, uint64_t value)') as (
  fd: number,
  value: bigint | number,
) => number;
export const eventfd_read = declare('int eventfd_read(int fd, void *value)') as (
  fd: number,
  value: Pointer,
) => number;

/** Returns the address, or MAP_FAILED (`2^64 - 1` as koffi decodes `(void *) -1`). */
export const mmap = declare(
  'void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)',
) as (
  addr: Pointer | null,
  length: number,
  prot: number,
  flags: number,
  fd: number,
  offset: bigint,
) => Pointer;
export const munmap = declare('int munmap(void *addr, size_t length)') as (
  addr: Pointer,
  length: number,
) => number;
export const memfd_create = declare('int memfd_create(const char *name, unsigned int flags)') as (
  name: string,
  flags: number,
) => number;
export const ftruncate = declare('int ftruncate(int fd, int64_t length)') as (
  fd: number,
  length: bigint,
) => number;
export const fallocate = declare('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as (
  fd: number,
  mode: number,
  offset: bigint,
  length: bigint,
) => number;
export const lseek = declare('int64_t lseek(int fd, int64_t offset, int whence)') as (
  fd: number,
  offset: bigint,
  whence: number,
) => bigint | number;
export const sysconf = declare('long sysconf(int name)') as (name: number) => number;

/** `fds` is a `struct pollfd` array: { int fd; short events; short revents; }, 8 bytes each. */
export const poll = declare('int poll(void *fds, unsigned long nfds, int timeout)') as (
  fds: Int32Array,
  nfds: number,
  timeout: number,
) => number;

export const epoll_create1 = declare('int epoll_create1(int flags)') as (flags: number) => number;
export const epoll_ctl = declare('int epoll_ctl(int epfd, int op, int fd, void *event)') as (
  epfd: number,
  op: number,
  fd: number,
  event: Pointer | null,
) => number;
export const epoll_wait = declare('int epoll_wait(int epfd, void *events, int maxevents, int timeout)') as (
  epfd: number,
  events: Pointer,
  maxevents: number,
  timeout: number,
) => number;

// ioctl is variadic; on x86-64 a non-variadic declaration passes the third argument in the same register. Two
// prototypes: one for requests that take a pointer (TUNSETIFF's ifreq), one for those that take a value
// (TUNSETOFFLOAD's flags).
export const ioctlPtr = declare('int ioctl(int fd, unsigned long request, void *arg)') as (
  fd: number,
  request: number,
  arg: Uint8Array,
) => number;
export const ioctlValue = declare('int ioctl(int fd, unsigned long request, unsigned long arg)') as (
  fd: number,
  request: number,
  arg: number,
) => number;
