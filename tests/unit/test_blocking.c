/* Blocking processors and callback deadlines on a real server, through the test HTTP/2 client.
 *
 * One worker loop serves a blocking processor (each request_headers callback sleeps 50 ms, on
 * a pool of 2 threads) and a non-blocking one. 64 concurrent streams saturate the pool (about
 * 1.6 s of queued sleeping); meanwhile 200 requests to the non-blocking processor must all be
 * answered while most blocking ones are still pending: they are not stuck behind the pool on
 * their shared loop. Latencies with and without the load are printed, not asserted. A third
 * listener checks a deadline end to end: the uv_timer on the worker loop ends the stream with
 * DEADLINE_EXCEEDED, and the late resume is told EXTPROC_ETIMEDOUT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/arena.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"
#include "testing/envoy_request.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

enum { BLOCKING_STREAMS = 64, BLOCKING_SLEEP_MS = 50, POOL_THREADS = 2, QUICK_REQUESTS = 200 };

static atomic_int g_blocking_started, g_blocking_done;

static extproc_result sleep_then_tag(extproc_request *req, void *ctx) {
  (void)ctx;
  atomic_fetch_add(&g_blocking_started, 1);
  sleep_ms(BLOCKING_SLEEP_MS);
  extproc_header_set(req, "x-slept", "yes");
  atomic_fetch_add(&g_blocking_done, 1);
  return EXTPROC_CONTINUE;
}

static extproc_result tag(extproc_request *req, void *ctx) {
  (void)ctx;
  return extproc_header_set(req, "x-quick", "yes") == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static extproc_request *_Atomic g_parked;

static extproc_result park(extproc_request *req, void *ctx) {
  (void)ctx;
  extproc_request_defer(req);
  atomic_store(&g_parked, req);
  return EXTPROC_DEFER;
}

/* The encoded request_headers message every stream sends. */
static uint8_t *headers_message(arena *a, size_t *len) {
  static const char *const pairs[] = {":method", "GET", ":path", "/", "x-request-id", "b-1"};
  envoy_request *m = envoy_request_headers(a, EXTPROC_REQUEST_HEADERS, pairs, 3, false);
  return m ? envoy_request_encode(a, m, len) : NULL;
}

/* ---- The blocking load: one client, 64 streams at once, on its own thread ----------------- */

typedef struct load {
  int port;
  pthread_t thread;
  int answered; /* streams that got their reply */
  int failed;
} load;

static void *run_load(void *arg) {
  load *l = arg;
  h2_client *c = h2_client_connect_tcp("127.0.0.1", l->port);
  if (!c) {
    l->failed = BLOCKING_STREAMS;
    return NULL;
  }
  h2_client_set_timeout(c, 60000);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  size_t len;
  const uint8_t *msg = headers_message(&a, &len);
  int32_t ids[BLOCKING_STREAMS];
  for (int i = 0; i < BLOCKING_STREAMS; i++) {
    ids[i] = h2_client_open_stream(c, PROCESS_PATH);
    if (ids[i] < 0 || h2_client_send_message(c, ids[i], msg, len, 0) != 0) l->failed++;
  }
  h2_client_flush(c);
  for (int i = 0; i < BLOCKING_STREAMS; i++) {
    if (ids[i] < 0 || h2_client_wait_messages(c, ids[i], 1) != 0) {
      l->failed++;
      continue;
    }
    l->answered++;
    h2_client_reset(c, ids[i], 8 /* CANCEL, as Envoy ends every exchange */);
  }
  h2_client_flush(c);
  arena_free(&a);
  arena_cache_release(); /* this thread is about to exit */
  h2_client_free(c);
  return NULL;
}

/* ---- Non-blocking requests, one at a time, timed ------------------------------------------ */

static int cmp_i64(const void *a, const void *b) {
  const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* Runs QUICK_REQUESTS one after another and stores their latencies (µs), sorted. */
static void quick_requests(int port, int64_t *us) {
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  size_t len;
  const uint8_t *msg = headers_message(&a, &len);
  assert_non_null(msg);
  for (int i = 0; i < QUICK_REQUESTS; i++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(id > 0);
    assert_int_equal(h2_client_send_message(c, id, msg, len, 0), 0);
    assert_int_equal(h2_client_wait_messages(c, id, 1), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us[i] = (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000;
    assert_int_equal(h2_client_reset(c, id, 8), 0);
    assert_int_equal(h2_client_wait_closed(c, id), 0);
    assert_int_equal(h2_client_forget_stream(c, id), 0);
  }
  arena_free(&a);
  h2_client_free(c);
  qsort(us, QUICK_REQUESTS, sizeof(*us), cmp_i64);
}

static void print_latency(const char *what, const int64_t *us) {
  print_message("non-blocking processor %s: p50 %lld us, p99 %lld us, max %lld us\n", what,
                (long long)us[QUICK_REQUESTS / 2], (long long)us[QUICK_REQUESTS * 99 / 100],
                (long long)us[QUICK_REQUESTS - 1]);
}

static void wait_at_least(atomic_int *counter, int n) {
  const int64_t until = now_ms() + 60000;
  while (atomic_load(counter) < n && now_ms() < until)
    sleep_ms(1);
  assert_true(atomic_load(counter) >= n);
}

static void test_blocking_pool_keeps_the_loop_free(void **state) {
  (void)state;
  extproc_processor *slow, *quick, *late;
  assert_int_equal(extproc_processor_new(&slow, "Slow"), 0);
  extproc_processor_on(slow, EXTPROC_REQUEST_HEADERS, sleep_then_tag);
  assert_int_equal(extproc_processor_set_blocking(slow, true), 0);
  assert_int_equal(extproc_processor_new(&quick, "Quick"), 0);
  extproc_processor_on(quick, EXTPROC_REQUEST_HEADERS, tag);
  assert_int_equal(extproc_processor_new(&late, "Late"), 0);
  extproc_processor_on(late, EXTPROC_REQUEST_HEADERS, park);
  extproc_processor_set_deadline(late, 30);

  extproc_server_options opts;
  extproc_server_options_init(&opts);
  assert_int_equal(opts.blocking_threads, 8);
  opts.workers = 1; /* every stream on one loop: the point is that it is not stalled */
  opts.blocking_threads = POOL_THREADS;
  opts.blocking_queue = 4; /* most of the 64 wait beyond the queue, holding their input */
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  const int slow_index = extproc_server_listen(srv, "127.0.0.1:0", slow);
  const int quick_index = extproc_server_listen(srv, "127.0.0.1:0", quick);
  const int late_index = extproc_server_listen(srv, "127.0.0.1:0", late);
  assert_true(slow_index >= 0 && quick_index >= 0 && late_index >= 0);
  assert_int_equal(extproc_server_start(srv), 0);
  const int quick_port = extproc_server_port(srv, quick_index);

  int64_t idle_us[QUICK_REQUESTS], loaded_us[QUICK_REQUESTS];
  quick_requests(quick_port, idle_us);

  load l = {.port = extproc_server_port(srv, slow_index)};
  assert_int_equal(pthread_create(&l.thread, NULL, run_load, &l), 0);
  wait_at_least(&g_blocking_started, POOL_THREADS); /* the pool is saturated */
  quick_requests(quick_port, loaded_us);
  const int done_meanwhile = atomic_load(&g_blocking_done);
  pthread_join(l.thread, NULL);

  print_latency("without blocking load", idle_us);
  print_latency("with 64 blocking streams", loaded_us);
  print_message("blocking callbacks finished while the %d quick requests ran: %d of %d\n",
                QUICK_REQUESTS, done_meanwhile, BLOCKING_STREAMS);
  /* Every quick request was answered while blocking ones were still waiting for the pool. */
  assert_true(done_meanwhile < BLOCKING_STREAMS);
  assert_int_equal(l.failed, 0);
  assert_int_equal(l.answered, BLOCKING_STREAMS);
  assert_int_equal(atomic_load(&g_blocking_done), BLOCKING_STREAMS);

  /* A deadline on the worker loop's timer. */
  h2_client *c = h2_client_connect_tcp("127.0.0.1", extproc_server_port(srv, late_index));
  assert_non_null(c);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  size_t len;
  const uint8_t *msg = headers_message(&a, &len);
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_int_equal(h2_client_send_message(c, id, msg, len, 0), 0);
  assert_int_equal(h2_client_wait_trailers(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_int_equal(s->grpc_status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
  assert_int_equal(s->message_count, 0);
  extproc_request *parked = atomic_load(&g_parked);
  assert_non_null(parked);
  assert_int_equal(extproc_request_resume(parked, EXTPROC_CONTINUE), EXTPROC_ETIMEDOUT);
  arena_free(&a);
  h2_client_free(c);

  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(slow);
  extproc_processor_free(quick);
  extproc_processor_free(late);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_blocking_pool_keeps_the_loop_free, watchdog_setup,
                                      watchdog_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
