/* The server under overload, as the example runner (extproc-examples, a child process) with two
 * workers: its open-file limit exhausted by a flood of connections, and hostile clients holding
 * incomplete messages.
 *
 *  - 1,000 connections against RLIMIT_NOFILE 512 (as `ulimit -n 512`), once with
 *    max_connections above what the descriptors allow (accept() fails with EMFILE) and once
 *    with the default derived from the limit: the server must not spin (its CPU time while at
 *    the limit stays small), must log a bounded number of lines, must keep serving a connection
 *    it already has, must serve a new one once the flood is gone, and must stop on SIGTERM.
 *  - 10 connections x 10,000 streams, each sending only a 5-byte gRPC prefix announcing 16 MiB:
 *    nothing is reserved for the announced length (every stream stays open, none ends with
 *    RESOURCE_EXHAUSTED), and the server's memory comes back after they close.
 *  - 10 connections x 4 streams each sending 16 MiB messages but their last byte: the bytes the
 *    server takes stay within max_buffered_bytes plus the windows it granted, and its memory
 *    comes back after they close.
 * RSS (VmRSS) is printed before, during and after; its bounds are asserted only without
 * sanitizers, whose allocators keep memory on purpose. CPU time is a bound on CPU seconds
 * consumed (from /proc), not a latency. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "h2_client.h"
#include "transport/grpc_frame.h"

#ifndef EXTPROC_EXAMPLES_BIN
#error "EXTPROC_EXAMPLES_BIN: path of extproc-examples"
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define RSS_BOUNDS_CHECKED 0
#define STALL_MS 3000 /* a sanitized server may take that long to get round to crediting */
#else
#define RSS_BOUNDS_CHECKED 1
#define STALL_MS 500
#endif

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

enum {
  WAIT_MS = 10000,
  TEST_WATCHDOG_SECONDS = 170,
  FLOOD_NOFILE = 512,
  FLOOD_CONNECTIONS = 1000,
  AT_LIMIT_MS = 3000,
  MIB = 1 << 20,
};

typedef struct fixture {
  pid_t pid;
  int port;
  char log[64];
  int flood[FLOOD_CONNECTIONS];
  size_t flood_len;
  h2_client *clients[10];
} fixture;

/* ---- The runner ------------------------------------------------------------------------ */

/* Starts the runner serving `trivial` on a free loopback port with two workers and `extra`
 * options (NULL-terminated), its output in f->log, and with RLIMIT_NOFILE `nofile` (soft and
 * hard, as `ulimit -n` sets them) unless 0. Waits until it answers a health check. */
static void start_runner(fixture *f, rlim_t nofile, const char *const *extra) {
  f->port = free_loopback_port();
  assert_true(f->port > 0);
  snprintf(f->log, sizeof(f->log), "/tmp/test_overload.XXXXXX");
  const int log_fd = mkstemp(f->log);
  assert_true(log_fd >= 0);
  char service[64];
  snprintf(service, sizeof(service), "trivial@127.0.0.1:%d", f->port);
  const char *argv[32] = {EXTPROC_EXAMPLES_BIN, "--service", service, "--workers", "2"};
  size_t argc = 5;
  for (; extra && *extra && argc < 31; extra++)
    argv[argc++] = *extra;
  argv[argc] = NULL;
  f->pid = fork();
  assert_true(f->pid >= 0);
  if (f->pid == 0) {
    const struct rlimit rl = {.rlim_cur = nofile, .rlim_max = nofile};
    if (nofile && setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(126);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(log_fd);
  const int64_t deadline = now_ms() + WAIT_MS;
  for (;;) {
    int status;
    if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
      f->pid = 0;
      fail_msg("the runner exited while starting (status %d), see %s", status, f->log);
    }
    h2_client *c = h2_client_connect_tcp("127.0.0.1", f->port);
    const bool up = c && h2_client_health_check(c) == 0;
    h2_client_free(c);
    if (up) return;
    if (now_ms() > deadline) fail_msg("the runner did not come up within %d ms", WAIT_MS);
    sleep_ms(50);
  }
}

static void print_log(const char *log) {
  FILE *fp = fopen(log, "r");
  if (!fp) return;
  char line[4096];
  while (fgets(line, sizeof(line), fp))
    print_message("  | %s", line);
  fclose(fp);
}

/* Sends SIGTERM and waits (bounded) for the runner to exit; returns its exit status. */
static int stop_runner(fixture *f) {
  assert_int_equal(kill(f->pid, SIGTERM), 0);
  const int64_t deadline = now_ms() + WAIT_MS;
  int status = 0;
  while (waitpid(f->pid, &status, WNOHANG) == 0) {
    if (now_ms() > deadline) fail_msg("the runner ignored SIGTERM for %d ms", WAIT_MS);
    sleep_ms(20);
  }
  f->pid = 0;
  const int rv = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (rv != 0) {
    print_message("the runner exited with %d:\n", rv);
    print_log(f->log);
  }
  return rv;
}

/* The runner's CPU time (user + system) so far, in seconds. */
static double cpu_seconds(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  const size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
  fclose(fp);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  assert_non_null(p);
  unsigned long utime = 0, stime = 0;
  /* After ")": state and 10 more fields, then utime (field 14) and stime (15). */
  assert_int_equal(
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime), 2);
  return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* The runner's resident set (VmRSS), in KiB. */
static long rss_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *fp = fopen(path, "r");
  assert_non_null(fp);
  long kib = -1;
  while (fgets(line, sizeof(line), fp))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  fclose(fp);
  assert_true(kib > 0);
  return kib;
}

/* Lines of the runner's log, and those among them holding `needle` (NULL: none). */
static size_t count_lines(const char *log, const char *needle, size_t *matching) {
  FILE *fp = fopen(log, "r");
  assert_non_null(fp);
  char line[4096];
  size_t n = 0, m = 0;
  while (fgets(line, sizeof(line), fp)) {
    n++;
    if (needle && strstr(line, needle)) m++;
  }
  fclose(fp);
  if (matching) *matching = m;
  return n;
}

/* ---- Fixture --------------------------------------------------------------------------- */

static int setup(void **state) {
  alarm(TEST_WATCHDOG_SECONDS); /* SIGALRM's default action fails the run */
  fixture *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  *state = f;
  return 0;
}

static void close_flood(fixture *f) {
  for (size_t i = 0; i < f->flood_len; i++)
    close(f->flood[i]);
  f->flood_len = 0;
}

static void free_clients(fixture *f) {
  for (size_t i = 0; i < sizeof(f->clients) / sizeof(f->clients[0]); i++) {
    h2_client_free(f->clients[i]);
    f->clients[i] = NULL;
  }
}

static int teardown(void **state) {
  fixture *f = *state;
  close_flood(f);
  free_clients(f);
  if (f->pid > 0) { /* a failed test: do not leave the runner behind */
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
  }
  if (f->log[0]) unlink(f->log);
  free(f);
  alarm(0);
  return 0;
}

/* ---- 1. Out of descriptors ------------------------------------------------------------- */

/* Opens FLOOD_CONNECTIONS TCP connections that never send a byte; the kernel completes them
 * (listen queues) whether or not the server accepts. */
static void open_flood(fixture *f) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (size_t i = 0; i < FLOOD_CONNECTIONS; i++) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    f->flood[f->flood_len++] = fd;
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 && errno != EINPROGRESS)
      fail_msg("flood connection %zu: %s", i, strerror(errno));
  }
}

/* The flood against a runner limited to FLOOD_NOFILE descriptors; `warning` is the line the
 * limit must log (at least once, and with the others only a few times). */
static void flood_scenario(fixture *f, const char *const *extra, const char *warning) {
  start_runner(f, FLOOD_NOFILE, extra);
  /* A connection from before the flood: it must go on being served throughout. */
  h2_client *early = f->clients[0] = h2_client_connect_tcp("127.0.0.1", f->port);
  assert_non_null(early);
  assert_int_equal(h2_client_health_check(early), 0);

  open_flood(f);
  sleep_ms(500); /* the server accepts what it can and reaches the limit */
  const double cpu_before = cpu_seconds(f->pid);
  const int64_t t0 = now_ms();
  size_t served = 0;
  while (now_ms() - t0 < AT_LIMIT_MS) {
    assert_int_equal(h2_client_health_check(early), 0);
    served++;
    sleep_ms(250);
  }
  const double cpu = cpu_seconds(f->pid) - cpu_before;
  const double seconds = (double)(now_ms() - t0) / 1000.0;

  close_flood(f);
  /* A new connection is accepted once descriptors are free again (the listeners retry after a
   * short backoff), and served. */
  h2_client *late = NULL;
  const int64_t deadline = now_ms() + WAIT_MS;
  while (!late && now_ms() < deadline)
    if (!(late = h2_client_connect_tcp("127.0.0.1", f->port))) sleep_ms(100);
  assert_non_null(late);
  f->clients[1] = late;
  assert_int_equal(h2_client_health_check(late), 0);
  assert_int_equal(h2_client_health_check(early), 0);

  size_t warnings, accept_errors;
  const size_t lines = count_lines(f->log, warning, &warnings);
  count_lines(f->log, "accept", &accept_errors);
  print_message("%d connections at RLIMIT_NOFILE %d: %.3f CPU seconds in %.1f s at the limit, "
                "%zu health checks served meanwhile, %zu log lines (%zu \"%s\"):\n",
                FLOOD_CONNECTIONS, FLOOD_NOFILE, cpu, seconds, served, lines, warnings, warning);
  print_log(f->log);
  /* A worker spinning in its accept loop burns a whole core: about `seconds` CPU seconds. */
  assert_true(cpu < 0.25 * seconds);
  assert_true(warnings >= 1);
  assert_true(lines <= 6); /* "serving ...", the limit's warning(s), nothing per attempt */
  assert_true(accept_errors <= 2);

  free_clients(f);
  assert_int_equal(stop_runner(f), 0);
}

static void test_out_of_descriptors_does_not_spin(void **state) {
  /* max_connections above the descriptors: accept() itself fails with EMFILE. */
  static const char *const extra[] = {"--max-connections", "100000", NULL};
  flood_scenario(*state, extra, "Too many open files");
}

static void test_connection_limit_from_open_file_limit(void **state) {
  /* The default max_connections, derived from the limit, is reached before the descriptors. */
  flood_scenario(*state, NULL, "max_connections");
}

/* ---- 2. Announced but never sent ------------------------------------------------------- */

enum { HOSTILE_CONNECTIONS = 10, PREFIX_STREAMS = 10000, ANNOUNCED_BYTES = 16 * MIB };

/* Waits until the RSS of the runner is within `bound_kib`, or `WAIT_MS`; returns the last.
 * Under a sanitizer, whose allocator keeps freed memory, it only waits for the server's trim
 * (TRIM_WAIT_MS) and reads it once. */
enum { TRIM_WAIT_MS = 1500 };

static long rss_settled(pid_t pid, long bound_kib) {
  if (!RSS_BOUNDS_CHECKED) {
    sleep_ms(TRIM_WAIT_MS);
    return rss_kib(pid);
  }
  const int64_t deadline = now_ms() + WAIT_MS;
  long kib;
  while ((kib = rss_kib(pid)) > bound_kib && now_ms() < deadline)
    sleep_ms(100);
  return kib;
}

static void test_announced_lengths_are_not_reserved(void **state) {
  fixture *f = *state;
  start_runner(f, 0, NULL);
  const long before = rss_kib(f->pid);
  uint8_t prefix[GRPC_PREFIX_BYTES];
  grpc_write_prefix(prefix, ANNOUNCED_BYTES);
  const int64_t t0 = now_ms();
  for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++) {
    h2_client *c = f->clients[i] = h2_client_connect_tcp("127.0.0.1", f->port);
    assert_non_null(c);
    for (size_t j = 0; j < PREFIX_STREAMS; j++) {
      const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
      assert_true(id > 0);
      assert_int_equal(h2_client_send_raw(c, id, prefix, sizeof(prefix), 0), 0);
    }
  }
  /* The server answers each stream's HEADERS at once: the last one's answer means it has them
   * all (streams are handled in order). */
  for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++) {
    h2_client *c = f->clients[i];
    assert_int_equal(h2_client_flush(c), 0);
    const int32_t last = (int32_t)(2 * PREFIX_STREAMS - 1);
    assert_int_equal(h2_client_wait_headers(c, last), 0);
    assert_int_equal(h2_client_wait_quiet(c, 100), 0);
  }
  const long during = rss_kib(f->pid);
  size_t open = 0;
  for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++)
    for (int32_t id = 1; id < 2 * PREFIX_STREAMS; id += 2)
      open += !h2_client_get_stream(f->clients[i], id)->closed;
  free_clients(f);
  const long after = rss_settled(f->pid, before + 16 * 1024);
  print_message("%d connections x %d streams announcing %d MiB each (%lld ms): %zu streams "
                "open; RSS before %ld KiB, during %ld KiB, after %ld KiB\n",
                HOSTILE_CONNECTIONS, PREFIX_STREAMS, ANNOUNCED_BYTES / MIB,
                (long long)(now_ms() - t0), open, before, during, after);
  /* Reserving the announced length would fail past the process's 65,530 memory mappings and end
   * those streams with RESOURCE_EXHAUSTED. */
  assert_int_equal(open, (size_t)HOSTILE_CONNECTIONS * PREFIX_STREAMS);
  if (RSS_BOUNDS_CHECKED) {
    /* What an open stream costs (HTTP/2 and gRPC state, the request's arena): a few KiB. */
    assert_true(during - before < (long)HOSTILE_CONNECTIONS * PREFIX_STREAMS * 6);
    assert_true(after - before < 16 * 1024);
  }
  assert_int_equal(stop_runner(f), 0);
}

/* ---- 3. Partial messages filling every budget ------------------------------------------ */

enum {
  FILL_STREAMS = 4,
  FILL_MESSAGE = 16 * MIB,    /* the runner's default max_message_bytes */
  BUFFERED_BUDGET = 32 * MIB, /* --max-buffered-bytes */
  STREAM_WINDOW = 1 * MIB,    /* the server's default initial window */
  PUMP_CHUNK = 256 * 1024,    /* queued per stream at a time, so the test's memory stays small */
};

/* Feeds every stream of every client its message, all but the last byte, as fast as the
 * server's windows allow, until nothing has moved for STALL_MS. */
static void pump_until_stalled(fixture *f, int32_t ids[][FILL_STREAMS], uint64_t *queued) {
  static uint8_t chunk[PUMP_CHUNK];
  memset(chunk, 'x', sizeof(chunk));
  const uint64_t wire = GRPC_PREFIX_BYTES + (uint64_t)FILL_MESSAGE - 1;
  int64_t last_progress = now_ms();
  const int64_t deadline = now_ms() + 6 * WAIT_MS;
  while (now_ms() - last_progress < STALL_MS) {
    if (now_ms() > deadline) fail_msg("the clients neither stall nor finish");
    for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++) {
      h2_client *c = f->clients[i];
      for (size_t j = 0; j < FILL_STREAMS; j++) {
        uint64_t *q = &queued[i * FILL_STREAMS + j];
        if (*q >= wire || h2_client_unsent_bytes(c, ids[i][j]) > 0) continue;
        const size_t n = wire - *q < PUMP_CHUNK ? (size_t)(wire - *q) : PUMP_CHUNK;
        assert_int_equal(h2_client_send_raw(c, ids[i][j], chunk, n, 0), 0);
        *q += n;
      }
      const uint64_t sent = h2_client_data_bytes_sent(c);
      assert_true(h2_client_poll(c, 0) >= 0);
      if (h2_client_data_bytes_sent(c) != sent) last_progress = now_ms();
    }
    sleep_ms(1);
  }
}

static void test_partial_messages_stay_within_the_server_budget(void **state) {
  fixture *f = *state;
  static const char *const extra[] = {"--max-buffered-bytes", "33554432", NULL};
  start_runner(f, 0, extra);
  const long before = rss_kib(f->pid);
  int32_t ids[HOSTILE_CONNECTIONS][FILL_STREAMS];
  uint64_t queued[HOSTILE_CONNECTIONS * FILL_STREAMS];
  uint8_t prefix[GRPC_PREFIX_BYTES];
  grpc_write_prefix(prefix, FILL_MESSAGE);
  for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++) {
    h2_client *c = f->clients[i] = h2_client_connect_tcp("127.0.0.1", f->port);
    assert_non_null(c);
    for (size_t j = 0; j < FILL_STREAMS; j++) {
      ids[i][j] = h2_client_open_stream(c, PROCESS_PATH);
      assert_true(ids[i][j] > 0);
      assert_int_equal(h2_client_send_raw(c, ids[i][j], prefix, sizeof(prefix), 0), 0);
      queued[i * FILL_STREAMS + j] = sizeof(prefix);
    }
  }
  const int64_t t0 = now_ms();
  pump_until_stalled(f, ids, queued);
  uint64_t sent = 0;
  for (size_t i = 0; i < HOSTILE_CONNECTIONS; i++) {
    sent += h2_client_data_bytes_sent(f->clients[i]);
    for (size_t j = 0; j < FILL_STREAMS; j++)
      assert_false(h2_client_get_stream(f->clients[i], ids[i][j])->closed);
  }
  const long during = rss_kib(f->pid);
  /* Credit stops once the server holds BUFFERED_BUDGET; beyond that a peer can only fill the
   * windows granted (a stream's window, less what it has sent uncredited), and whatever the last
   * credits (one DATA frame per connection) let through. Each connection alone would take
   * 2 x 16 MiB + a whole message + its windows: about 500 MiB for ten. */
  const uint64_t windows = (uint64_t)HOSTILE_CONNECTIONS * FILL_STREAMS * STREAM_WINDOW;
  const uint64_t bound = BUFFERED_BUDGET + windows + (uint64_t)HOSTILE_CONNECTIONS * 16384 * 2;
  free_clients(f);
  const long after = rss_settled(f->pid, before + 16 * 1024);
  print_message("%d connections x %d streams of %d MiB messages but their last byte (%lld ms): "
                "server took %llu bytes (bound %llu); RSS before %ld KiB, during %ld KiB, "
                "after %ld KiB\n",
                HOSTILE_CONNECTIONS, FILL_STREAMS, FILL_MESSAGE / MIB, (long long)(now_ms() - t0),
                (unsigned long long)sent, (unsigned long long)bound, before, during, after);
  assert_true(sent <= bound);
  assert_true(sent > BUFFERED_BUDGET); /* the budget itself is credited */
  if (RSS_BOUNDS_CHECKED) {
    /* Buffers grow by doubling, so they hold at most twice what arrived. */
    assert_true(during - before < (long)(2 * bound / 1024) + 16 * 1024);
    assert_true(after - before < 16 * 1024);
  }
  size_t holds;
  count_lines(f->log, "max_buffered_bytes", &holds);
  assert_true(holds >= 1 && holds <= 2); /* one line per 10 s at most */
  assert_int_equal(stop_runner(f), 0);
}

int main(void) {
  /* The flood needs more descriptors than the usual soft limit of 1024. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
    rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_out_of_descriptors_does_not_spin, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connection_limit_from_open_file_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_announced_lengths_are_not_reserved, setup, teardown),
      cmocka_unit_test_setup_teardown(test_partial_messages_stay_within_the_server_budget, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
