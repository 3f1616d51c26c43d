/* The worker's sweep of idle connections (transport/idle_memory.c) on a real server: pages that
 * were given back and then written again because the peer sent a frame without opening a
 * stream (here a SETTINGS, whose ACK nghttp2 writes through its frame buffer; a PING does the
 * same) are given back again once the connection is idle once more.
 *
 * Residency is read from this process's RssAnon: nothing else runs while it is read, and each
 * connection's frame-buffer page is 4 KiB, so CONNECTIONS of them stand well above the noise. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/arena.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"
#include "testing/envoy_request.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

/* Idle long enough for a sweep to give pages back: idle_memory.c's RELEASE_AFTER_MS (1 s) plus
 * the sweep's own period (worker.c's IDLE_SWEEP_MS, 1 s), and a margin. */
enum { CONNECTIONS = 64, IDLE_WAIT_MS = 2300, PAGE_KIB = 4 };

static long rss_anon_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "RssAnon: %ld kB", &kib) == 1) break;
  fclose(f);
  assert_true(kib >= 0);
  return kib;
}

static void test_pages_go_back_again_after_a_settings(void **state) {
  (void)state;
  extproc_processor *proc;
  assert_int_equal(extproc_processor_new(&proc, "Nothing"), 0);
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.drain_delay_ms = 0;
  opts.keepalive_interval_ms = EXTPROC_SERVER_TIMEOUT_OFF; /* no PINGs of the server's own */
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  const int index = extproc_server_listen(srv, "127.0.0.1:0", proc);
  assert_true(index >= 0);
  assert_int_equal(extproc_server_start(srv), 0);
  const int port = extproc_server_port(srv, index);

  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  static const char *const pairs[] = {":method", "GET", ":path", "/"};
  size_t len;
  const uint8_t *msg = envoy_request_encode(
      &a, envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, pairs, 2, true), &len);
  h2_client *clients[CONNECTIONS];
  for (int i = 0; i < CONNECTIONS; i++) {
    h2_client *c = clients[i] = h2_client_connect_tcp("127.0.0.1", port);
    assert_non_null(c);
    const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(id > 0);
    assert_int_equal(h2_client_send_message(c, id, msg, len, 0), 0);
    assert_int_equal(h2_client_half_close(c, id), 0);
    assert_int_equal(h2_client_wait_closed(c, id), 0);
    assert_int_equal(h2_client_forget_stream(c, id), 0);
  }
  sleep_ms(IDLE_WAIT_MS); /* every connection idle: its pages go back */

  for (int i = 0; i < CONNECTIONS; i++) {
    assert_int_equal(h2_client_set_initial_window(clients[i], 2u << 20), 0);
    assert_int_equal(h2_client_wait_quiet(clients[i], 20), 0); /* the server's ACK is in */
  }
  const long touched = rss_anon_kib();
  sleep_ms(IDLE_WAIT_MS);
  const long swept = rss_anon_kib();
  print_message("RssAnon after the SETTINGS: %ld KiB; idle again: %ld KiB\n", touched, swept);
  /* At least half of the frame-buffer pages the ACKs wrote went back. */
  assert_true(touched - swept >= CONNECTIONS * PAGE_KIB / 2);

  for (int i = 0; i < CONNECTIONS; i++)
    h2_client_free(clients[i]);
  arena_free(&a);
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_pages_go_back_again_after_a_settings, watchdog_setup,
                                      watchdog_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
