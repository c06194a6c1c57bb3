/*
 * LD_PRELOAD shim for Debian's linux.uml (6.1) on hosts whose XSAVE area is larger than UML expects.
 *
 * UML saves and restores its processes' FPU state with PTRACE_GETREGSET / PTRACE_SETREGSET (NT_X86_XSTATE),
 * using a buffer of a size fixed when it was built. The host kernel accepts a SETREGSET of that regset only when
 * the buffer is exactly the host's full user XSAVE size (arch/x86/kernel/fpu/regset.c, xstateregs_set: otherwise
 * EFAULT). On a CPU with AVX-512 and AMX (TILEDATA alone is 8 KiB) that size exceeds UML 6.1's buffer, so the
 * first context switch fails ("ptrace set fp regs failed, errno = 14") and init dies. Linux 6.13's UML sizes the
 * buffer from CPUID; Debian 12 ships 6.1.
 *
 * The fix here: a SETREGSET of NT_X86_XSTATE with a short buffer is widened to the host's size — the host's
 * current state is read into a full-size buffer, UML's bytes are laid over its start, and the full buffer is
 * written. Components beyond UML's buffer keep the values the tracee already has, which is what they would keep
 * if UML had never touched them. Every other ptrace call goes straight to the system call, with glibc's
 * conventions (PEEK requests return the word; errors return -1 with errno set). A kernel built with the right
 * size never takes the widening branch, so the shim is harmless under any UML kernel.
 *
 * Built by scripts/guest/build-uml-preload into .cache/; used by scripts/guest/run-uml and `ringvm run`.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

/* Larger than any x86 XSAVE area so far (AVX-512 + AMX: about 11 KiB). Static: UML calls ptrace from kernel
 * threads whose host stacks are a few pages, and only from one host thread at a time. */
#define XSTATE_BUFFER_BYTES 65536
static unsigned char full_xstate[XSTATE_BUFFER_BYTES];

static long sys_ptrace(long request, pid_t pid, void *addr, void *data) {
  return syscall(SYS_ptrace, request, pid, addr, data);
}

long ptrace(enum __ptrace_request request, ...) {
  va_list ap;
  va_start(ap, request);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  void *data = va_arg(ap, void *);
  va_end(ap);

  if (request == PTRACE_PEEKDATA || request == PTRACE_PEEKTEXT || request == PTRACE_PEEKUSER) {
    long word;
    if (sys_ptrace(request, pid, addr, &word) < 0) return -1;
    errno = 0;
    return word;
  }

  if (request == PTRACE_SETREGSET && (unsigned long)addr == NT_X86_XSTATE && data != NULL) {
    const struct iovec *given = data;
    struct iovec full = {full_xstate, sizeof full_xstate};
    if (sys_ptrace(PTRACE_GETREGSET, pid, addr, &full) == 0 && full.iov_len > given->iov_len) {
      memcpy(full_xstate, given->iov_base, given->iov_len);
      return sys_ptrace(PTRACE_SETREGSET, pid, addr, &full);
    }
  }

  return sys_ptrace(request, pid, addr, data);
}
