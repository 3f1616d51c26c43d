/* A connection's deadlines over real sockets, with an in-process server whose timeouts are cut
 * to a few hundred milliseconds: a TCP connection that never speaks HTTP/2 is closed after the
 * handshake timeout (with a GOAWAY first); a connection with no stream is sent a GOAWAY
 * (NO_ERROR) and closed after the idle timeout; a client that never acknowledges the keepalive
 * PINGs is closed; a client that does stays connected and served.
 *
 * Each wait is bounded (WAIT_MS); the only time bounds asserted are lower ones, that a deadline
 * did not fire before it was due (less a margin for the loop's cached clock). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"

enum {
  HANDSHAKE_MS = 300,
  IDLE_MS = 400,
  KEEPALIVE_INTERVAL_MS = 150,
  KEEPALIVE_TIMEOUT_MS = 250,
  EARLY_MARGIN_MS = 50, /* the loop's clock is read once per iteration */
  WAIT_MS = 10000,
  TEST_WATCHDOG_SECONDS = 60,
};

typedef struct fixture {
  extproc_processor *proc;
  extproc_server *srv;
  int port;
  h2_client *client;
  int raw_fd;
} fixture;

static int setup(void **state) {
  alarm(TEST_WATCHDOG_SECONDS); /* SIGALRM's default action fails the run */
  fixture *f = calloc(1, sizeof(*f));
  if (!f || extproc_processor_new(&f->proc, "deadlines-test") != 0) {
    free(f);
    return -1;
  }
  f->raw_fd = -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  h2_client_free(f->client);
  if (f->raw_fd >= 0) close(f->raw_fd);
  if (f->srv) {
    extproc_server_stop(f->srv);
    extproc_server_wait(f->srv);
    extproc_server_free(f->srv);
  }
  extproc_processor_free(f->proc);
  free(f);
  alarm(0);
  return 0;
}

/* Two workers, so the deadlines are checked on whichever loop the connection lands on. */
static void start_server(fixture *f, uint32_t handshake_ms, uint32_t idle_ms,
                         uint32_t keepalive_interval_ms, uint32_t keepalive_timeout_ms) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  opts.handshake_timeout_ms = handshake_ms;
  opts.idle_timeout_ms = idle_ms;
  opts.keepalive_interval_ms = keepalive_interval_ms;
  opts.keepalive_timeout_ms = keepalive_timeout_ms;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  const int index = extproc_server_listen(f->srv, "127.0.0.1:0", f->proc);
  assert_true(index >= 0);
  f->port = extproc_server_port(f->srv, index);
  assert_int_equal(extproc_server_start(f->srv), 0);
}

/* Reads everything the server sends until it closes the connection; true if a GOAWAY frame
 * was among it. Fails the test if the server does not close within WAIT_MS. */
static bool read_until_closed(int fd) {
  uint8_t buf[4096];
  size_t len = 0;
  const int64_t deadline = now_ms() + WAIT_MS;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    const int64_t left = deadline - now_ms();
    if (left <= 0) fail_msg("the server did not close the connection within %d ms", WAIT_MS);
    if (poll(&p, 1, (int)left) <= 0) continue;
    const ssize_t n = recv(fd, buf + len, sizeof(buf) - len, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) break;
    assert_true(n > 0);
    len += (size_t)n;
    assert_true(len < sizeof(buf));
  }
  /* Frames: 3-byte length, type, flags, 4-byte stream id, payload. */
  for (size_t off = 0; off + 9 <= len;) {
    const size_t flen = (size_t)buf[off] << 16 | (size_t)buf[off + 1] << 8 | buf[off + 2];
    if (buf[off + 3] == NGHTTP2_GOAWAY) return true;
    off += 9 + flen;
  }
  return false;
}

/* A TCP connection that never sends the HTTP/2 preface: closed after the handshake timeout,
 * told why in a GOAWAY. Meanwhile a real client is served as usual. */
static void test_silent_connection_closed_after_handshake_timeout(void **state) {
  fixture *f = *state;
  start_server(f, HANDSHAKE_MS, EXTPROC_SERVER_TIMEOUT_OFF, EXTPROC_SERVER_TIMEOUT_OFF,
               EXTPROC_SERVER_TIMEOUT_OFF);
  f->raw_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(f->raw_fd >= 0);
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int64_t start = now_ms();
  assert_int_equal(connect(f->raw_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);

  /* A client that completes the handshake is not affected. */
  f->client = h2_client_connect_tcp("127.0.0.1", f->port);
  assert_non_null(f->client);

  assert_true(read_until_closed(f->raw_fd));
  const int64_t took = now_ms() - start;
  print_message("silent connection closed after %lld ms (timeout %d ms)\n", (long long)took,
                HANDSHAKE_MS);
  assert_true(took >= HANDSHAKE_MS - EARLY_MARGIN_MS);

  sleep_ms(HANDSHAKE_MS); /* past the deadline the handshake would have had */
  assert_int_equal(h2_client_health_check(f->client), 0);
  assert_false(h2_client_goaway_received(f->client, NULL));
}

/* No stream for the idle timeout: GOAWAY with NO_ERROR, then the server closes. The timeout
 * counts from the end of the last stream, not from the connect. */
static void test_idle_connection_gets_goaway_and_is_closed(void **state) {
  fixture *f = *state;
  start_server(f, HANDSHAKE_MS, IDLE_MS, EXTPROC_SERVER_TIMEOUT_OFF, EXTPROC_SERVER_TIMEOUT_OFF);
  f->client = h2_client_connect_tcp("127.0.0.1", f->port);
  assert_non_null(f->client);
  sleep_ms(IDLE_MS / 2);
  assert_int_equal(h2_client_health_check(f->client), 0); /* restarts the idle time */
  const int64_t last_stream = now_ms();
  assert_int_equal(h2_client_wait_disconnect(f->client), 0);
  const int64_t took = now_ms() - last_stream;
  uint32_t code = 99;
  assert_true(h2_client_goaway_received(f->client, &code));
  assert_int_equal(code, NGHTTP2_NO_ERROR);
  print_message("idle connection closed %lld ms after its last stream (timeout %d ms)\n",
                (long long)took, IDLE_MS);
  assert_true(took >= IDLE_MS - EARLY_MARGIN_MS);
}

/* A client that never acknowledges PINGs is taken for gone and closed. */
static void test_client_ignoring_pings_is_closed(void **state) {
  fixture *f = *state;
  start_server(f, HANDSHAKE_MS, EXTPROC_SERVER_TIMEOUT_OFF, KEEPALIVE_INTERVAL_MS,
               KEEPALIVE_TIMEOUT_MS);
  f->client = h2_client_connect_tcp_ignoring_pings("127.0.0.1", f->port);
  assert_non_null(f->client);
  const int64_t start = now_ms();
  assert_int_equal(h2_client_wait_disconnect(f->client), 0);
  const int64_t took = now_ms() - start;
  print_message("client ignoring PINGs closed after %lld ms, %llu PING(s) received\n",
                (long long)took, (unsigned long long)h2_client_pings_received(f->client));
  assert_int_equal(h2_client_pings_received(f->client), 1);
  assert_true(took >= KEEPALIVE_INTERVAL_MS + KEEPALIVE_TIMEOUT_MS - EARLY_MARGIN_MS);
}

/* A client that acknowledges PINGs stays, however long it is silent, and is served. */
static void test_client_answering_pings_stays(void **state) {
  fixture *f = *state;
  start_server(f, HANDSHAKE_MS, EXTPROC_SERVER_TIMEOUT_OFF, KEEPALIVE_INTERVAL_MS,
               KEEPALIVE_TIMEOUT_MS);
  f->client = h2_client_connect_tcp("127.0.0.1", f->port);
  assert_non_null(f->client);
  const int64_t until = now_ms() + 5 * (KEEPALIVE_INTERVAL_MS + KEEPALIVE_TIMEOUT_MS);
  while (now_ms() < until)
    assert_true(h2_client_poll(f->client, 20) >= 0);
  const uint64_t pings = h2_client_pings_received(f->client);
  print_message("client answering PINGs: %llu PINGs in %d ms, still connected\n",
                (unsigned long long)pings, 5 * (KEEPALIVE_INTERVAL_MS + KEEPALIVE_TIMEOUT_MS));
  assert_true(pings >= 3);
  assert_false(h2_client_disconnected(f->client));
  assert_false(h2_client_goaway_received(f->client, NULL));
  assert_int_equal(h2_client_health_check(f->client), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_silent_connection_closed_after_handshake_timeout, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_idle_connection_gets_goaway_and_is_closed, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_ignoring_pings_is_closed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_answering_pings_stays, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
