/* Stopping a server without failing requests, over real sockets with h2_client playing Envoy:
 * health turns NOT_SERVING at once (Check and Watch) while new connections and streams are
 * still served during the drain delay; Watch streams get every change and end when the
 * listeners close; the health-only address; an immediate stop that cuts a drain short; and
 * deferred requests still waiting when the grace period runs out: the workers end anyway, and
 * the late resume frees the request on its own thread, after the server and the processor are
 * gone, also when resumes race the abandoning (run under TSan by scripts/test.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "grpc/health/v1/health.pb-c.h"
#include "h2_client.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
#define CHECK_PATH "/grpc.health.v1.Health/Check"
#define WATCH_PATH "/grpc.health.v1.Health/Watch"
#define EXT_PROC_SERVICE "envoy.service.ext_proc.v3.ExternalProcessor"

enum {
  SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING,
  NOT_SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING,
  SERVICE_UNKNOWN = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_UNAVAILABLE = 14,
};

/* Bounds for waits only a bug makes long. A drain this long never ends by itself in a test: the
 * test ends it with extproc_server_stop_now(). */
enum { WAIT_MS = 20000, LONG_MS = 60000 };
/* How much longer than its grace period a stop may take: closing loops and joining threads,
 * with room for the sanitizers. A correctness bound (without the fix the wait never returns),
 * not a performance figure. */
enum { STOP_BOUND_MS = 5000 };

/* ---- Processors ---------------------------------------------------------------------------- */

static extproc_result tag(extproc_request *req, void *ctx) {
  (void)ctx;
  return extproc_header_set(req, "x-drain-test", "1") == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static extproc_processor *tagging_processor(void) {
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "drain-test"), 0);
  assert_int_equal(extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, tag), 0);
  return p;
}

/* Deferring requests are parked here until a test resumes them. */
enum { PARK_MAX = 128 };
static struct {
  pthread_mutex_t lock;
  extproc_request *reqs[PARK_MAX];
  int count;
} g_park = {.lock = PTHREAD_MUTEX_INITIALIZER};

static atomic_int g_cleanups;          /* context_cleanup calls */
static atomic_int g_cleanups_resuming; /* of which on the thread in g_resuming_thread */
static atomic_int g_park_failures;     /* requests that could not be parked */
static pthread_t g_resuming_thread;    /* set before that thread resumes anything */

static void count_cleanup(void *ctx) {
  (void)ctx;
  if (pthread_equal(pthread_self(), g_resuming_thread)) atomic_fetch_add(&g_cleanups_resuming, 1);
  atomic_fetch_add(&g_cleanups, 1);
}

static extproc_result park(extproc_request *req, void *ctx) {
  (void)ctx;
  if (extproc_request_defer(req) != 0) {
    atomic_fetch_add(&g_park_failures, 1);
    return EXTPROC_FAIL;
  }
  pthread_mutex_lock(&g_park.lock);
  if (g_park.count < PARK_MAX)
    g_park.reqs[g_park.count++] = req;
  else
    atomic_fetch_add(&g_park_failures, 1);
  pthread_mutex_unlock(&g_park.lock);
  return EXTPROC_DEFER;
}

static extproc_processor *parking_processor(void) {
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "parking"), 0);
  assert_int_equal(extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, park), 0);
  assert_int_equal(extproc_processor_set_context(p, 16, NULL, count_cleanup), 0);
  pthread_mutex_lock(&g_park.lock);
  g_park.count = 0;
  pthread_mutex_unlock(&g_park.lock);
  atomic_store(&g_cleanups, 0);
  atomic_store(&g_cleanups_resuming, 0);
  atomic_store(&g_park_failures, 0);
  return p;
}

static int parked_count(void) {
  pthread_mutex_lock(&g_park.lock);
  const int n = g_park.count;
  pthread_mutex_unlock(&g_park.lock);
  return n;
}

/* ---- Server and client helpers --------------------------------------------------------------- */

typedef struct server_spec {
  unsigned workers;
  uint32_t drain_ms, grace_ms;
  const char *health_listen;
} server_spec;

static extproc_server *start_server(const server_spec *spec, extproc_processor *proc, int *port) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = spec->workers;
  opts.drain_delay_ms = spec->drain_ms;
  opts.shutdown_grace_ms = spec->grace_ms;
  opts.health_listen = spec->health_listen;
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  const int index = extproc_server_listen(srv, "127.0.0.1:0", proc);
  assert_int_equal(index, 0); /* a health listener does not shift the indexes */
  *port = extproc_server_port(srv, index);
  assert_true(*port > 0);
  assert_int_equal(extproc_server_start(srv), 0);
  return srv;
}

static h2_client *connect_to(int port) {
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  h2_client_set_timeout(c, WAIT_MS);
  return c;
}

static int32_t health_call(h2_client *c, const char *path, const char *service) {
  const int32_t id = h2_client_open_stream(c, path);
  assert_true(id > 0);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  assert_int_equal(h2_client_send_pb(c, id, &req.base, 0), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  return id;
}

/* The status in message `i` of stream `id`. */
static int status_at(h2_client *c, int32_t id, size_t i) {
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_non_null(s);
  assert_true(s->message_count > i);
  Grpc__Health__V1__HealthCheckResponse *resp = grpc__health__v1__health_check_response__unpack(
      NULL, s->messages[i].len, s->messages[i].data);
  assert_non_null(resp);
  const int status = resp->status;
  grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
  return status;
}

/* A Check: returns the status it answered with. */
static int check(h2_client *c, const char *service) {
  const int32_t id = health_call(c, CHECK_PATH, service);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_int_equal(s->grpc_status, 0);
  assert_int_equal(s->message_count, 1);
  const int status = status_at(c, id, 0);
  assert_int_equal(h2_client_forget_stream(c, id), 0);
  return status;
}

/* A Watch that has received its `n`th status: returns that status. The stream stays open. */
static int watch_status(h2_client *c, int32_t id, size_t n) {
  assert_int_equal(h2_client_wait_messages(c, id, n), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_int_equal(s->message_count, n);
  assert_false(s->trailers_received);
  return status_at(c, id, n - 1);
}

/* One Process exchange with the tagging processor: request headers answered with x-drain-test. */
static void process_round_trip(h2_client *c) {
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  Envoy__Service__ExtProc__V3__HttpHeaders hh = ENVOY__SERVICE__EXT_PROC__V3__HTTP_HEADERS__INIT;
  Envoy__Config__Core__V3__HeaderMap map = ENVOY__CONFIG__CORE__V3__HEADER_MAP__INIT;
  hh.headers = &map;
  hh.end_of_stream = true;
  Envoy__Service__ExtProc__V3__ProcessingRequest req =
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
  req.request_headers = &hh;
  assert_int_equal(h2_client_send_pb(c, id, &req.base, 0), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_int_equal(s->grpc_status, 0);
  assert_int_equal(s->message_count, 1);
  Envoy__Service__ExtProc__V3__ProcessingResponse *r =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, s->messages[0].len,
                                                                s->messages[0].data);
  assert_non_null(r);
  assert_non_null(r->request_headers);
  assert_non_null(r->request_headers->response);
  assert_non_null(r->request_headers->response->header_mutation);
  assert_int_equal(r->request_headers->response->header_mutation->n_set_headers, 1);
  envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
  assert_int_equal(h2_client_forget_stream(c, id), 0);
}

/* Stops (immediately or not), waits, and returns how long the wait took in ms. */
static int64_t stop_and_wait(extproc_server *srv, bool now) {
  const int64_t start = now_ms();
  if (now)
    extproc_server_stop_now(srv);
  else
    extproc_server_stop(srv);
  extproc_server_wait(srv);
  return now_ms() - start;
}

/* ---- 1. During the drain: NOT_SERVING at once, everything else still served --------------- */

static void test_drain_reports_not_serving_and_keeps_serving(void **state) {
  (void)state;
  extproc_processor *proc = tagging_processor();
  const server_spec spec = {.workers = 2, .drain_ms = LONG_MS, .grace_ms = LONG_MS};
  int port;
  extproc_server *srv = start_server(&spec, proc, &port);
  h2_client *c = connect_to(port);
  const int32_t all = health_call(c, WATCH_PATH, "");
  const int32_t ext_proc = health_call(c, WATCH_PATH, EXT_PROC_SERVICE);
  const int32_t unknown = health_call(c, WATCH_PATH, "no.such.Service");
  assert_int_equal(watch_status(c, all, 1), SERVING);
  assert_int_equal(watch_status(c, ext_proc, 1), SERVING);
  assert_int_equal(watch_status(c, unknown, 1), SERVICE_UNKNOWN); /* and the stream stays open */
  assert_int_equal(check(c, ""), SERVING);
  assert_int_equal(check(c, EXT_PROC_SERVICE), SERVING);

  extproc_server_stop(srv);
  /* At once: the first Check after the stop returned, on a connection opened after it. */
  h2_client *late = connect_to(port);
  assert_int_equal(check(late, ""), NOT_SERVING);
  assert_int_equal(check(late, EXT_PROC_SERVICE), NOT_SERVING);
  process_round_trip(late); /* new streams are still served */
  process_round_trip(c);
  assert_int_equal(watch_status(c, all, 2), NOT_SERVING);
  assert_int_equal(watch_status(c, ext_proc, 2), NOT_SERVING);
  const int32_t fresh = health_call(late, WATCH_PATH, "");
  assert_int_equal(watch_status(late, fresh, 1), NOT_SERVING);
  /* Nothing changed for an unknown service: no second message, still open. */
  assert_int_equal(h2_client_wait_quiet(c, 100), 0);
  assert_int_equal(watch_status(c, unknown, 1), SERVICE_UNKNOWN);
  assert_false(h2_client_goaway_received(c, NULL));

  /* The drain would last a minute: an immediate stop cuts it short. */
  const int64_t ms = stop_and_wait(srv, true);
  printf("immediate stop during a %d ms drain: workers done in %lld ms\n", LONG_MS, (long long)ms);
  assert_true(ms < STOP_BOUND_MS);
  assert_int_equal(h2_client_wait_disconnect(c), 0);
  assert_int_equal(h2_client_wait_disconnect(late), 0);
  h2_client_free(c);
  h2_client_free(late);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* ---- 2. After the drain: watches end, connections get a GOAWAY ----------------------------- */

static void test_watches_end_when_the_listeners_close(void **state) {
  (void)state;
  extproc_processor *proc = tagging_processor();
  const server_spec spec = {.workers = 1, .drain_ms = 0, .grace_ms = LONG_MS};
  int port;
  extproc_server *srv = start_server(&spec, proc, &port);
  h2_client *c = connect_to(port);
  const int32_t all = health_call(c, WATCH_PATH, "");
  const int32_t unknown = health_call(c, WATCH_PATH, "no.such.Service");
  assert_int_equal(watch_status(c, all, 1), SERVING);
  assert_int_equal(watch_status(c, unknown, 1), SERVICE_UNKNOWN);

  /* No drain delay: NOT_SERVING, then the watches end at once instead of holding the connection
   * for the grace period (a minute). */
  const int64_t ms = stop_and_wait(srv, false);
  printf("stop with watches open and a %d ms grace period: workers done in %lld ms\n", LONG_MS,
         (long long)ms);
  assert_true(ms < STOP_BOUND_MS);
  assert_int_equal(h2_client_wait_closed(c, all), 0);
  assert_int_equal(h2_client_wait_closed(c, unknown), 0);
  const h2_client_stream *s = h2_client_get_stream(c, all);
  assert_int_equal(s->message_count, 2);
  assert_int_equal(status_at(c, all, 1), NOT_SERVING);
  assert_int_equal(s->grpc_status, GRPC_UNAVAILABLE);
  s = h2_client_get_stream(c, unknown);
  assert_int_equal(s->message_count, 1);
  assert_int_equal(s->grpc_status, GRPC_UNAVAILABLE);
  assert_int_equal(h2_client_wait_disconnect(c), 0);
  assert_true(h2_client_goaway_received(c, NULL));
  h2_client_free(c);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* ---- 3. The health-only address ------------------------------------------------------------ */

static void test_health_listen(void **state) {
  (void)state;
  extproc_processor *proc = tagging_processor();
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.health_listen = "not an address";
  extproc_server *bad = NULL;
  assert_int_equal(extproc_server_new(&bad, &opts), EXTPROC_EINVAL);
  assert_null(bad);

  const server_spec spec = {
      .workers = 2, .drain_ms = LONG_MS, .grace_ms = 1000, .health_listen = "127.0.0.1:0"};
  int port;
  extproc_server *srv = start_server(&spec, proc, &port);
  const int health_port = extproc_server_health_port(srv);
  assert_true(health_port > 0);
  assert_int_not_equal(health_port, port);
  assert_int_equal(extproc_server_port(srv, 1), 0); /* only one listener of ours */

  h2_client *h = connect_to(health_port);
  assert_int_equal(check(h, ""), SERVING);
  const int32_t watch = health_call(h, WATCH_PATH, EXT_PROC_SERVICE);
  assert_int_equal(watch_status(h, watch, 1), SERVING);
  const int32_t id = h2_client_open_stream(h, PROCESS_PATH);
  assert_true(id > 0);
  assert_int_equal(h2_client_wait_closed(h, id), 0);
  assert_int_equal(h2_client_get_stream(h, id)->grpc_status, GRPC_UNIMPLEMENTED);
  h2_client *c = connect_to(port); /* the processor's address serves health too */
  assert_int_equal(check(c, ""), SERVING);
  process_round_trip(c);

  extproc_server_stop(srv);
  assert_int_equal(watch_status(h, watch, 2), NOT_SERVING);
  assert_int_equal(check(h, ""), NOT_SERVING);
  assert_int_equal(check(c, ""), NOT_SERVING);
  stop_and_wait(srv, true);
  h2_client_free(h);
  h2_client_free(c);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* ---- 4. A deferred answer that never comes in time ------------------------------------------ */

static void open_parked_streams(h2_client *c, int n) {
  for (int i = 0; i < n; i++) {
    const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(id > 0);
    Envoy__Service__ExtProc__V3__HttpHeaders hh = ENVOY__SERVICE__EXT_PROC__V3__HTTP_HEADERS__INIT;
    Envoy__Config__Core__V3__HeaderMap map = ENVOY__CONFIG__CORE__V3__HEADER_MAP__INIT;
    hh.headers = &map;
    Envoy__Service__ExtProc__V3__ProcessingRequest req =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
    req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
    req.request_headers = &hh;
    assert_int_equal(h2_client_send_pb(c, id, &req.base, 0), 0);
  }
  assert_int_equal(h2_client_flush(c), 0);
}

static void wait_parked(h2_client *c, int n) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (parked_count() < n) {
    if (now_ms() > deadline) fail_msg("only %d of %d requests parked", parked_count(), n);
    h2_client_poll(c, 1);
  }
}

static void test_deferred_answer_abandoned_when_the_grace_runs_out(void **state) {
  (void)state;
  extproc_processor *proc = parking_processor();
  enum { GRACE_MS = 300 };
  const server_spec spec = {.workers = 1, .drain_ms = 0, .grace_ms = GRACE_MS};
  int port;
  extproc_server *srv = start_server(&spec, proc, &port);
  h2_client *c = connect_to(port);
  open_parked_streams(c, 1);
  wait_parked(c, 1);

  /* Before, the workers waited for the resume however long it took. */
  const int64_t ms = stop_and_wait(srv, false);
  printf("stop with a deferred answer pending: workers done in %lld ms (grace period %d ms)\n",
         (long long)ms, GRACE_MS);
  assert_true(ms >= GRACE_MS / 2); /* the stream was given its grace period */
  assert_true(ms < GRACE_MS + STOP_BOUND_MS);
  assert_int_equal(h2_client_wait_disconnect(c), 0);
  assert_int_equal(atomic_load(&g_cleanups), 0); /* the request still belongs to its resumer */
  h2_client_free(c);
  extproc_server_free(srv);
  extproc_processor_free(proc);

  /* The late answer, with the server and the processor gone: freed here, nothing sent. */
  pthread_mutex_lock(&g_park.lock);
  extproc_request *req = g_park.reqs[0];
  pthread_mutex_unlock(&g_park.lock);
  g_resuming_thread = pthread_self();
  assert_int_equal(extproc_header_set(req, "x-late", "1"), 0);
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), 0);
  assert_int_equal(atomic_load(&g_cleanups), 1);
  assert_int_equal(atomic_load(&g_cleanups_resuming), 1); /* on this thread */
  assert_int_equal(atomic_load(&g_park_failures), 0);
}

/* ---- 5. Resumes racing the abandoning ---------------------------------------------------------
 */

static pthread_barrier_t g_go;
static atomic_int g_resumed; /* how many the resumer has resumed so far */

static void *resume_all(void *arg) {
  atomic_int *failures = arg;
  g_resuming_thread = pthread_self();
  pthread_barrier_wait(&g_go);
  for (int i = 0;; i++) {
    pthread_mutex_lock(&g_park.lock);
    extproc_request *req = i < g_park.count ? g_park.reqs[i] : NULL;
    pthread_mutex_unlock(&g_park.lock);
    if (!req) return NULL;
    if (extproc_request_resume(req, EXTPROC_CONTINUE) != 0) atomic_fetch_add(failures, 1);
    atomic_fetch_add(&g_resumed, 1);
    if (i % 8 == 0) sched_yield();
  }
}

/* One round: STREAMS parked requests; the stop comes once `head_start` of them are resumed. */
static void race_round(int head_start) {
  enum { STREAMS = 100 };
  extproc_processor *proc = parking_processor();
  /* No grace: the loops abandon what is deferred as soon as they stop, while the resumer is at
   * work, so some resumes land on the loop, some are abandoned, some race the abandoning. */
  const server_spec spec = {.workers = 2, .drain_ms = 0, .grace_ms = 0};
  int port;
  extproc_server *srv = start_server(&spec, proc, &port);
  h2_client *clients[2] = {connect_to(port), connect_to(port)};
  open_parked_streams(clients[0], STREAMS / 2);
  open_parked_streams(clients[1], STREAMS / 2);
  const int64_t deadline = now_ms() + WAIT_MS;
  while (parked_count() < STREAMS) {
    if (now_ms() > deadline) fail_msg("only %d of %d requests parked", parked_count(), STREAMS);
    h2_client_poll(clients[0], 0);
    h2_client_poll(clients[1], 1);
  }

  /* Every warning would be a line per request: keep the output readable. */
  extproc_log_set_level(EXTPROC_LOG_ERROR);
  atomic_int failures = 0;
  atomic_store(&g_resumed, 0);
  pthread_t resumer;
  assert_int_equal(pthread_barrier_init(&g_go, NULL, 2), 0);
  assert_int_equal(pthread_create(&resumer, NULL, resume_all, &failures), 0);
  pthread_barrier_wait(&g_go);
  while (atomic_load(&g_resumed) < head_start)
    sched_yield();
  const int64_t ms = stop_and_wait(srv, false);
  pthread_join(resumer, NULL);
  pthread_barrier_destroy(&g_go);
  extproc_log_set_level(EXTPROC_LOG_INFO);
  /* How the race went is up to the scheduler; every outcome must free each request once. */
  printf("stop after %d of %d resumes: workers done in %lld ms; %d requests freed by their "
         "resume after being abandoned, %d on their loop\n",
         head_start, STREAMS, (long long)ms, atomic_load(&g_cleanups_resuming),
         STREAMS - atomic_load(&g_cleanups_resuming));
  assert_true(ms < STOP_BOUND_MS);
  assert_int_equal(atomic_load(&failures), 0);
  /* Every request was freed exactly once: on its loop, or by its resume (ASan checks the rest). */
  assert_int_equal(atomic_load(&g_cleanups), STREAMS);
  assert_int_equal(atomic_load(&g_park_failures), 0);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(h2_client_wait_disconnect(clients[i]), 0);
    h2_client_free(clients[i]);
  }
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

static void test_resumes_racing_the_abandon(void **state) {
  (void)state;
  race_round(0);
  race_round(30);
  race_round(60);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_drain_reports_not_serving_and_keeps_serving,
                                      watchdog_setup, watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_watches_end_when_the_listeners_close, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_health_listen, watchdog_setup, watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_deferred_answer_abandoned_when_the_grace_runs_out,
                                      watchdog_setup, watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_resumes_racing_the_abandon, watchdog_setup,
                                      watchdog_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
