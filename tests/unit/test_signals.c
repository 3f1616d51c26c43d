/* Signals under extproc_server_run(), sent to this very process: SIGHUP (an operator's habitual
 * "reload", or a terminal going away) must not end a running server, whose default action
 * would do without a drain; it keeps serving, and SIGTERM still stops it with run returning 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"

enum { WAIT_MS = 10000, TEST_WATCHDOG_SECONDS = 60 };

typedef struct run_arg {
  extproc_server *srv;
  int rv;
} run_arg;

static void *run_thread(void *p) {
  run_arg *a = p;
  a->rv = extproc_server_run(a->srv);
  return NULL;
}

static bool healthy(int port) {
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  const bool up = c && h2_client_health_check(c) == 0;
  h2_client_free(c);
  return up;
}

static void test_sighup_is_ignored_and_sigterm_still_stops(void **state) {
  (void)state;
  alarm(TEST_WATCHDOG_SECONDS); /* SIGALRM's default action fails the run */
  extproc_processor *proc;
  assert_int_equal(extproc_processor_new(&proc, "signals"), 0);
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  opts.drain_delay_ms = 0;
  opts.shutdown_grace_ms = 0;
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  const int index = extproc_server_listen(srv, "127.0.0.1:0", proc);
  assert_true(index >= 0);
  const int port = extproc_server_port(srv, index);
  run_arg arg = {.srv = srv, .rv = -1};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, run_thread, &arg), 0);
  const int64_t deadline = now_ms() + WAIT_MS;
  while (!healthy(port)) {
    assert_true(now_ms() < deadline);
    sleep_ms(20);
  }
  /* Two, as an operator retrying would: neither may end the process or start a stop. */
  assert_int_equal(kill(getpid(), SIGHUP), 0);
  sleep_ms(100);
  assert_int_equal(kill(getpid(), SIGHUP), 0);
  sleep_ms(200);
  assert_true(healthy(port));
  assert_int_equal(extproc_server_open_streams(srv), 0);
  assert_int_equal(kill(getpid(), SIGTERM), 0);
  assert_int_equal(pthread_join(thread, NULL), 0);
  assert_int_equal(arg.rv, 0);
  assert_false(healthy(port));
  extproc_server_free(srv);
  extproc_processor_free(proc);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sighup_is_ignored_and_sigterm_still_stops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
