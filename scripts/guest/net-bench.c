/*
 * ringvm-net-bench: the guest side of bench/net-uml.ts. Built statically by scripts/guest/build-uml into the UML
 * root as /bin/ringvm-net-bench (busybox's nc cannot time a transfer or run a request/response loop).
 *
 *   ringvm-net-bench stream HOST PORT MIB    send MIB MiB to a sink at HOST:PORT, then wait for its close
 *   ringvm-net-bench rr HOST PORT COUNT      COUNT 1-byte requests to an echo server, one at a time
 *
 * HOST is a dotted IPv4 address. `stream` writes 64 KiB buffers, shuts its sending side down and reads until
 * the peer closes, so the time covers every byte having reached the peer's application. `rr` sets TCP_NODELAY
 * and waits for each byte's echo before sending the next. Both time the loop with CLOCK_MONOTONIC (connection
 * set-up excluded) and print one line:
 *
 *   RESULT <mode> <bytes or count> <elapsed ns>
 *
 * Any failed call ends the run with exit status 1 and a message on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STREAM_CHUNK (64 * 1024)
#define MIB (1024 * 1024)

static void die(const char *what) {
  perror(what);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) die("clock_gettime");
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int connect_to(const char *host, const char *port) {
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(port));
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    fprintf(stderr, "ringvm-net-bench: not an IPv4 address: %s\n", host);
    exit(2);
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
  return fd;
}

static uint64_t stream(int fd, uint64_t bytes) {
  static char buf[STREAM_CHUNK];
  memset(buf, 0x5a, sizeof buf);
  uint64_t t0 = now_ns();
  for (uint64_t sent = 0; sent < bytes;) {
    size_t n = bytes - sent < sizeof buf ? (size_t)(bytes - sent) : sizeof buf;
    ssize_t w = write(fd, buf, n);
    if (w <= 0) die("write");
    sent += (uint64_t)w;
  }
  if (shutdown(fd, SHUT_WR) != 0) die("shutdown");
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) die("read");
    if (r == 0) break;
  }
  return now_ns() - t0;
}

static uint64_t request_response(int fd, uint64_t count) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) die("setsockopt");
  char c = 'r';
  uint64_t t0 = now_ns();
  for (uint64_t i = 0; i < count; i++) {
    if (write(fd, &c, 1) != 1) die("write");
    if (read(fd, &c, 1) != 1) die("read");
  }
  return now_ns() - t0;
}

int main(int argc, char **argv) {
  if (argc != 5 || (strcmp(argv[1], "stream") != 0 && strcmp(argv[1], "rr") != 0)) {
    fprintf(stderr, "usage: ringvm-net-bench stream|rr HOST PORT MIB|COUNT\n");
    return 2;
  }
  uint64_t amount = strtoull(argv[4], NULL, 10);
  int fd = connect_to(argv[2], argv[3]);
  if (strcmp(argv[1], "stream") == 0) {
    uint64_t bytes = amount * MIB;
    printf("RESULT stream %llu %llu\n", (unsigned long long)bytes, (unsigned long long)stream(fd, bytes));
  } else {
    printf("RESULT rr %llu %llu\n", (unsigned long long)amount,
           (unsigned long long)request_response(fd, amount));
  }
  close(fd);
  return 0;
}
