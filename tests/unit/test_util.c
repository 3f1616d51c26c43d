#include "test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sleep_ms(long ms) {
  const struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Writes `v` as a varint before `*p` (the buffer is built back to front). */
static void put_varint_back(uint8_t **p, uint64_t v) {
  uint8_t tmp[10];
  size_t n = 0;
  do {
    tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v);
  *p -= n;
  memcpy(*p, tmp, n);
}

uint8_t *nested_attributes(unsigned depth, uint8_t **start, size_t *len) {
  const size_t cap = 16 * (size_t)depth + 64;
  uint8_t *buf = malloc(cap);
  if (!buf) return NULL;
  uint8_t *end = buf + cap, *p = end;
  for (unsigned i = 0; i < depth; i++) {
    put_varint_back(&p, (uint64_t)(end - p)); /* ListValue.values (1) = the inner Value */
    *--p = 0x0a;
    put_varint_back(&p, (uint64_t)(end - p)); /* Value.list_value (6) = that ListValue */
    *--p = 0x32;
  }
  put_varint_back(&p, (uint64_t)(end - p)); /* Struct.fields entry: value (2) */
  *--p = 0x12;
  *--p = 'k';
  *--p = 1;
  *--p = 0x0a; /* key (1) = "k" */
  put_varint_back(&p, (uint64_t)(end - p));
  *--p = 0x0a; /* Struct.fields (1) */
  put_varint_back(&p, (uint64_t)(end - p));
  *--p = 0x12; /* attributes entry: value (2) = the Struct */
  *--p = 'k';
  *--p = 1;
  *--p = 0x0a; /* key (1) */
  put_varint_back(&p, (uint64_t)(end - p));
  *--p = 0x4a; /* ProcessingRequest.attributes (9) */
  *--p = 0;    /* request_headers (2): an empty HttpHeaders */
  *--p = 0x12;
  *start = p;
  *len = (size_t)(end - p);
  return buf;
}

int watchdog_setup(void **state) {
  (void)state;
  alarm(TEST_WATCHDOG_SECONDS_DEFAULT);
  return 0;
}

int watchdog_teardown(void **state) {
  (void)state;
  alarm(0);
  return 0;
}

int free_loopback_port(void) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sin);
  const bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
                  getsockname(fd, (struct sockaddr *)&sin, &len) == 0;
  if (fd >= 0) close(fd);
  return ok ? ntohs(sin.sin_port) : -1;
}
