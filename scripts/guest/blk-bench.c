/*
 * ringvm-blk-bench: the guest side of bench/blk-uml.ts. Built statically by scripts/guest/build-uml into the UML
 * root as /bin/ringvm-blk-bench (busybox has no fio, and Debian's fio drags a dozen shared libraries along).
 *
 *   ringvm-blk-bench DEVICE PATTERN BLOCK_BYTES COUNT [SEED]
 *     PATTERN   randread | randwrite | seqread | seqwrite
 *
 * Opens DEVICE with O_DIRECT (every block is one request to the device, nothing is served from the guest's page
 * cache), issues COUNT requests of BLOCK_BYTES one at a time (queue depth 1) at block-aligned offsets: random
 * ones (xorshift64 from SEED, uniform over the whole device) or sequential ones from offset 0, wrapping at the
 * end. Times the loop with CLOCK_MONOTONIC and prints one line:
 *
 *   RESULT <pattern> <block bytes> <count> <elapsed ns>
 *
 * Any short or failed transfer ends the run with exit status 1 and a message on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* O_DIRECT buffers must be aligned to the logical block size; a page covers every block size Linux allows. */
#define BUFFER_ALIGN 4096

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift64(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static int usage(void) {
  fprintf(stderr, "usage: ringvm-blk-bench DEVICE randread|randwrite|seqread|seqwrite BLOCK_BYTES COUNT [SEED]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 5 || argc > 6) return usage();
  const char *device = argv[1];
  const char *pattern = argv[2];
  int random = strncmp(pattern, "rand", 4) == 0;
  const char *op = pattern + (random ? 4 : 3);
  if (!random && strncmp(pattern, "seq", 3) != 0) return usage();
  int writing = strcmp(op, "write") == 0;
  if (!writing && strcmp(op, "read") != 0) return usage();
  char *end;
  unsigned long long block = strtoull(argv[3], &end, 10);
  if (*end != 0 || block == 0 || block % 512 != 0) return usage();
  unsigned long long count = strtoull(argv[4], &end, 10);
  if (*end != 0 || count == 0) return usage();
  uint64_t seed = argc == 6 ? strtoull(argv[5], &end, 10) : 1;
  if (seed == 0) seed = 1;

  int fd = open(device, (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) {
    fprintf(stderr, "ringvm-blk-bench: open %s: %s\n", device, strerror(errno));
    return 1;
  }
  uint64_t size = 0;
  if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
    fprintf(stderr, "ringvm-blk-bench: BLKGETSIZE64 %s: %s\n", device, strerror(errno));
    return 1;
  }
  uint64_t blocks = size / block;
  if (blocks == 0) {
    fprintf(stderr, "ringvm-blk-bench: %s (%llu bytes) holds no %llu-byte block\n", device,
            (unsigned long long)size, block);
    return 1;
  }
  void *buf;
  if (posix_memalign(&buf, BUFFER_ALIGN, block) != 0) {
    fprintf(stderr, "ringvm-blk-bench: cannot allocate %llu bytes\n", block);
    return 1;
  }
  memset(buf, 0xa5, block);

  uint64_t start = now_ns();
  for (unsigned long long i = 0; i < count; i++) {
    uint64_t index = random ? xorshift64(&seed) % blocks : i % blocks;
    off_t offset = (off_t)(index * block);
    ssize_t n = writing ? pwrite(fd, buf, block, offset) : pread(fd, buf, block, offset);
    if (n != (ssize_t)block) {
      fprintf(stderr, "ringvm-blk-bench: %s of %llu bytes at %lld on %s: %s\n", writing ? "pwrite" : "pread",
              block, (long long)offset, device, n < 0 ? strerror(errno) : "short transfer");
      return 1;
    }
  }
  uint64_t elapsed = now_ns() - start;
  printf("RESULT %s %llu %llu %llu\n", pattern, block, count, (unsigned long long)elapsed);
  return 0;
}
