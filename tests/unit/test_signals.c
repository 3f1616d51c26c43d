/* Signals.
 *  - Under extproc_server_run(), sent to this very process: SIGHUP (an operator's habitual
 *    "reload", or a terminal going away) must not end a running server, which its default
 *    action would do without a drain; it keeps serving, and SIGTERM still stops it with run
 *    returning 0.
 *  - The example runner (a child process) sent SIGTERM, then SIGTERM again and again until it
 *    has exited: it must exit 0 every time, never be killed by a signal that comes while it
 *    frees what it used after the stop.
 *  - The runner sent SIGTERM before it handles signals: it must still drain and exit 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"

#ifndef EXTPROC_EXAMPLES_BIN
#error "EXTPROC_EXAMPLES_BIN: path of extproc-examples"
#endif

enum { WAIT_MS = 10000, TEST_WATCHDOG_SECONDS = 60, REPEATED_STOPS = 10, RESEND_US = 500 };

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

/* Starts the runner serving `trivial` on `port` with no drain and no grace period (its output
 * discarded), and waits until it answers a health check. */
static pid_t start_runner(int port) {
  char service[64];
  snprintf(service, sizeof(service), "trivial@127.0.0.1:%d", port);
  const char *argv[] = {EXTPROC_EXAMPLES_BIN, "--service", service,          "--workers", "2",
                        "--drain-delay",      "0",         "--grace-period", "0",         NULL};
  const pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    FILE *null = freopen("/dev/null", "w", stdout);
    if (null) dup2(STDOUT_FILENO, STDERR_FILENO);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  const int64_t deadline = now_ms() + WAIT_MS;
  while (!healthy(port)) {
    if (waitpid(pid, NULL, WNOHANG) == pid) fail_msg("the runner exited while starting");
    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      fail_msg("the runner did not come up within %d ms", WAIT_MS);
    }
    sleep_ms(20);
  }
  return pid;
}

static void test_repeated_sigterm_still_exits_cleanly(void **state) {
  (void)state;
  alarm(TEST_WATCHDOG_SECONDS);
  const int port = free_loopback_port();
  assert_true(port > 0);
  for (int round = 0; round < REPEATED_STOPS; round++) {
    const pid_t pid = start_runner(port);
    int status = 0;
    /* The first signal stops it; the next ones come at any point of its way out. */
    while (waitpid(pid, &status, WNOHANG) == 0) {
      kill(pid, SIGTERM);
      usleep(RESEND_US);
    }
    if (WIFSIGNALED(status))
      fail_msg("round %d: the runner was killed by signal %d", round, WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
  }
  alarm(0);
}

/* A SIGTERM that comes while the runner starts, before anything handles it (made certain here:
 * it is pending, blocked, when the runner is executed; a parent's blocked mask is inherited the
 * same way), is taken once the server runs: it drains and exits 0, rather than being killed half
 * set up, or never stopping because the signal stays blocked. */
static void test_sigterm_during_start_up_stops_cleanly(void **state) {
  (void)state;
  alarm(TEST_WATCHDOG_SECONDS);
  const int port = free_loopback_port();
  assert_true(port > 0);
  char service[64];
  snprintf(service, sizeof(service), "trivial@127.0.0.1:%d", port);
  const char *argv[] = {EXTPROC_EXAMPLES_BIN, "--service", service,          "--workers", "2",
                        "--drain-delay",      "0",         "--grace-period", "0",         NULL};
  const pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, NULL);
    raise(SIGTERM); /* pending across execv */
    FILE *null = freopen("/dev/null", "w", stdout);
    if (null) dup2(STDOUT_FILENO, STDERR_FILENO);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  const int64_t deadline = now_ms() + WAIT_MS;
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      fail_msg("the runner did not stop within %d ms of a SIGTERM sent while it started", WAIT_MS);
    }
    sleep_ms(20);
  }
  if (WIFSIGNALED(status)) fail_msg("the runner was killed by signal %d", WTERMSIG(status));
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  alarm(0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sighup_is_ignored_and_sigterm_still_stops),
      cmocka_unit_test(test_repeated_sigterm_still_exits_cleanly),
      cmocka_unit_test(test_sigterm_during_start_up_stops_cleanly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
