/* Where threads meet: a server with several workers whose callbacks defer and hand requests to
 * other threads that resume them, resumes racing on one request, and a stop from another thread
 * while deferred requests are being resumed. Each test checks every reply; scripts/test.sh also
 * runs this file under ThreadSanitizer, where any data race fails it.
 *
 * Clients run one per thread (h2_client is single-threaded) and report what went wrong in a
 * record the main thread asserts on, since cmocka's checks belong to the main thread. The tests
 * look at a request's hand-off state (engine/request.h) to know for sure whether a resume came
 * before or after its callback returned. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/list.h"
#include "engine/request.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "testing/envoy_request.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;
typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;

/* Bounds for waits that only a bug could make long (there is no timing assertion); the
 * watchdog ends the process if something hangs anyway. */
enum { WAIT_MS = 60000, TEST_WATCHDOG_SECONDS = 240 };

static int setup(void **state) {
  (void)state;
  alarm(TEST_WATCHDOG_SECONDS);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  alarm(0);
  extproc_log_set_level(EXTPROC_LOG_INFO);
  return 0;
}

/* ---- Messages ---------------------------------------------------------------------------- */

/* Sends request (or response) headers carrying x-n: n, as Envoy would. */
static int send_headers(h2_client *c, int32_t id, bool response, int n) {
  char n_text[16];
  snprintf(n_text, sizeof(n_text), "%d", n);
  const char *const request[] = {":method", "GET", ":path", "/threads", "x-n", n_text};
  const char *const reply[] = {":status", "200", "content-type", "text/plain", "x-n", n_text};
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  size_t len = 0;
  envoy_request *m =
      envoy_request_headers(&a, response ? EXTPROC_RESPONSE_HEADERS : EXTPROC_REQUEST_HEADERS,
                            response ? reply : request, 3, response);
  const uint8_t *buf = m ? envoy_request_encode(&a, m, &len) : NULL;
  const int rv = buf ? h2_client_send_message(c, id, buf, len, 0) : -1;
  arena_free(&a);
  arena_cache_release(); /* client threads exit without returning their cached blocks */
  return rv;
}

/* Checks that `m` is the reply to a headers phase that sets exactly x-reply: `want`. Returns
 * NULL, or what is wrong (static text). */
static const char *check_reply(const h2_client_msg *m, bool response, const char *want) {
  ProcessingResponse *r =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, m->len, m->data);
  if (!r) return "reply does not decode";
  const char *why = NULL;
  const Envoy__Service__ExtProc__V3__HeadersResponse *h =
      response ? r->response_headers : r->request_headers;
  const Envoy__Service__ExtProc__V3__ProcessingResponse__ResponseCase want_case =
      response ? ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS
               : ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS;
  if (r->response_case != want_case || !h || !h->response)
    why = "reply to the wrong phase";
  else if (!h->response->header_mutation || h->response->header_mutation->n_set_headers != 1 ||
           !h->response->header_mutation->set_headers[0]->header)
    why = "reply does not set exactly one header";
  else {
    const Envoy__Config__Core__V3__HeaderValue *hv =
        h->response->header_mutation->set_headers[0]->header;
    if (strcmp(hv->key, "x-reply") != 0 || hv->raw_value.len != strlen(want) ||
        memcmp(hv->raw_value.data, want, hv->raw_value.len) != 0)
      why = "reply carries another request's answer";
  }
  envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
  return why;
}

/* ---- Failures seen off the main thread ---------------------------------------------------- */

static atomic_int g_errors;
static pthread_mutex_t g_error_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_first_error[256];

static void record_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void record_error(const char *fmt, ...) {
  if (atomic_fetch_add(&g_errors, 1) != 0) return;
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&g_error_lock);
  vsnprintf(g_first_error, sizeof(g_first_error), fmt, ap);
  pthread_mutex_unlock(&g_error_lock);
  va_end(ap);
}

static void reset_errors(void) {
  atomic_store(&g_errors, 0);
  pthread_mutex_lock(&g_error_lock);
  g_first_error[0] = '\0';
  pthread_mutex_unlock(&g_error_lock);
}

static void assert_no_error(void) {
  char copy[sizeof(g_first_error)];
  pthread_mutex_lock(&g_error_lock);
  memcpy(copy, g_first_error, sizeof(copy));
  pthread_mutex_unlock(&g_error_lock);
  if (atomic_load(&g_errors) != 0)
    fail_msg("%d error(s) off the main thread; first: %s", atomic_load(&g_errors), copy);
}

/* Waits (bounded) until the request's hand-off state is `want`, i.e. for HANDOFF_DEFERRED, until
 * its callback has returned. Returns false if it never came. */
static bool wait_handoff(extproc_request *req, int want) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (atomic_load(&req->handoff) != want) {
    if (now_ms() > deadline) return false;
    sched_yield();
  }
  return true;
}

/* Which loop threads ran callbacks (to check that several workers served). */
enum { MAX_LOOPS = 16 };
static pthread_mutex_t g_loops_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t g_loops[MAX_LOOPS];
static size_t g_loop_count;

static void note_loop_thread(void) {
  const pthread_t self = pthread_self();
  pthread_mutex_lock(&g_loops_lock);
  bool known = false;
  for (size_t i = 0; i < g_loop_count && !known; i++)
    known = pthread_equal(g_loops[i], self);
  if (!known && g_loop_count < MAX_LOOPS) g_loops[g_loop_count++] = self;
  pthread_mutex_unlock(&g_loops_lock);
}

static size_t loop_threads_seen(void) {
  pthread_mutex_lock(&g_loops_lock);
  const size_t n = g_loop_count;
  pthread_mutex_unlock(&g_loops_lock);
  return n;
}

static void reset_loop_threads(void) {
  pthread_mutex_lock(&g_loops_lock);
  g_loop_count = 0;
  pthread_mutex_unlock(&g_loops_lock);
}

/* ---- Server ------------------------------------------------------------------------------- */

static extproc_server *start_server(extproc_processor *proc, unsigned workers, uint32_t grace_ms,
                                    int *port) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = workers;
  opts.shutdown_grace_ms = grace_ms;
  opts.drain_delay_ms = 0;
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  assert_non_null(srv);
  const int index = extproc_server_listen(srv, "127.0.0.1:0", proc);
  assert_true(index >= 0);
  *port = extproc_server_port(srv, index);
  assert_true(*port > 0);
  assert_int_equal(extproc_server_start(srv), 0);
  return srv;
}

static void wait_server_idle(const extproc_server *srv) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (extproc_server_open_streams(srv) != 0) {
    if (now_ms() > deadline) fail_msg("server still has open streams");
    sleep_ms(1);
  }
}

/* ---- 1. Many streams, several workers, answers from other threads -------------------------- */

/* A job for the resumer pool: answer `req`'s phase with x-reply: `value` and resume it. EARLY
 * jobs are resumed while the callback waits (the resume comes before it returns); LATE jobs
 * only once the callback has returned. */
typedef enum job_mode { JOB_EARLY, JOB_LATE } job_mode;

typedef struct job {
  queue_link link;
  extproc_request *req;
  job_mode mode;
  bool fail;
  char value[32];
  bool done; /* EARLY: resumed; the callback frees the job */
} job;

enum { RESUMERS = 3 };

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  queue jobs; /* job */
  bool quit;
  pthread_t threads[RESUMERS];
} g_pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static atomic_int g_early_resumed, g_late_resumed, g_self_checked;

static void pool_push(job *j) {
  pthread_mutex_lock(&g_pool.lock);
  queue_push(&g_pool.jobs, &j->link);
  pthread_cond_broadcast(&g_pool.cond);
  pthread_mutex_unlock(&g_pool.lock);
}

static void *resumer_main(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&g_pool.lock);
    while (queue_empty(&g_pool.jobs) && !g_pool.quit)
      pthread_cond_wait(&g_pool.cond, &g_pool.lock);
    queue_link *l = queue_pop(&g_pool.jobs);
    pthread_mutex_unlock(&g_pool.lock);
    if (!l) return NULL;
    job *j = LIST_ITEM(l, job, link);

    extproc_request *req = j->req;
    const job_mode mode = j->mode;
    if (mode == JOB_LATE && !wait_handoff(req, HANDOFF_DEFERRED))
      record_error("%s: callback never returned", j->value);
    /* This thread owns the request until it resumes it. */
    if (j->fail) {
      if (extproc_request_fail(req, EXTPROC_GRPC_ABORTED, j->value) != 0)
        record_error("%s: extproc_request_fail refused", j->value);
    } else if (extproc_header_set(req, "x-reply", j->value) != 0) {
      record_error("%s: extproc_header_set refused", j->value);
    }
    const int rc = extproc_request_resume(req, j->fail ? EXTPROC_FAIL : EXTPROC_CONTINUE);
    if (rc != 0) record_error("%s: resume returned %d", j->value, rc);
    atomic_fetch_add(mode == JOB_EARLY ? &g_early_resumed : &g_late_resumed, 1);
    if (mode == JOB_LATE) {
      free(j);
    } else {
      pthread_mutex_lock(&g_pool.lock);
      j->done = true;
      pthread_cond_broadcast(&g_pool.cond);
      pthread_mutex_unlock(&g_pool.lock);
    }
  }
}

static void pool_start(void) {
  g_pool.quit = false;
  g_pool.jobs = (queue){0};
  for (int i = 0; i < RESUMERS; i++)
    assert_int_equal(pthread_create(&g_pool.threads[i], NULL, resumer_main, NULL), 0);
}

static void pool_stop(void) {
  pthread_mutex_lock(&g_pool.lock);
  g_pool.quit = true;
  pthread_cond_broadcast(&g_pool.cond);
  pthread_mutex_unlock(&g_pool.lock);
  for (int i = 0; i < RESUMERS; i++)
    pthread_join(g_pool.threads[i], NULL);
}

/* How stream n's phases are answered: alternating early and late, and every tenth stream's
 * request_headers fails (ABORTED, with n as the message), which ends it there. */
static job_mode mode_of(int n, bool response) { return (n + response) % 2 ? JOB_LATE : JOB_EARLY; }
static bool fails(int n) { return n % 10 == 9; }

typedef struct stream_ctx {
  int n;
} stream_ctx;

/* Both headers callbacks: defer, then hand the request to the pool. */
static extproc_result deferring_headers(extproc_request *req, void *ctx) {
  stream_ctx *sc = ctx;
  note_loop_thread();
  const bool response = extproc_request_phase(req) == EXTPROC_RESPONSE_HEADERS;
  const char *n_text = extproc_header_get(req, "x-n");
  if (!n_text) {
    record_error("a message without x-n");
    return EXTPROC_FAIL;
  }
  const int n = atoi(n_text);
  if (!response)
    sc->n = n;
  else if (sc->n != n)
    record_error("stream %d got response headers of %d", sc->n, n);
  job *j = calloc(1, sizeof(*j));
  if (!j) return EXTPROC_FAIL;
  j->req = req;
  j->mode = mode_of(n, response);
  j->fail = !response && fails(n);
  snprintf(j->value, sizeof(j->value), "%s-%d", response ? "resp" : "req", n);
  if (extproc_request_defer(req) != 0) record_error("%s: defer refused", j->value);
  const job_mode mode = j->mode;
  pool_push(j);
  if (mode == JOB_EARLY) {
    pthread_mutex_lock(&g_pool.lock);
    while (!j->done)
      pthread_cond_wait(&g_pool.cond, &g_pool.lock);
    pthread_mutex_unlock(&g_pool.lock);
    /* Resumed before returning: the hand-off holds the answer until we return. */
    const int want = j->fail ? HANDOFF_RESUMED_EARLY_FAIL : HANDOFF_RESUMED_EARLY_CONTINUE;
    if (atomic_load(&req->handoff) != want)
      record_error("%s: hand-off state %d after an early resume", j->value,
                   atomic_load(&req->handoff));
    else
      atomic_fetch_add(&g_self_checked, 1);
    free(j);
  }
  return EXTPROC_DEFER;
}

typedef struct client_run {
  int port;
  int first_n; /* streams are numbered first_n, first_n + 1, ... */
  int streams;
  pthread_t thread;
} client_run;

/* Checks one finished stream of the concurrent test. */
static void check_stream(const h2_client_stream *s, int n) {
  char want[32];
  const char *why;
  if (!s) {
    record_error("stream %d: no record", n);
  } else if (fails(n)) {
    snprintf(want, sizeof(want), "req-%d", n);
    if (s->grpc_status != EXTPROC_GRPC_ABORTED || s->message_count != 0 || !s->grpc_message ||
        strcmp(s->grpc_message, want) != 0)
      record_error("stream %d: grpc-status %d, %zu replies, message %s (wanted ABORTED %s)", n,
                   s->grpc_status, s->message_count, s->grpc_message ? s->grpc_message : "-", want);
  } else if (s->grpc_status != 0 || s->message_count != 2) {
    record_error("stream %d: grpc-status %d with %zu replies (wanted 0 with 2)", n, s->grpc_status,
                 s->message_count);
  } else {
    snprintf(want, sizeof(want), "req-%d", n);
    if ((why = check_reply(&s->messages[0], false, want)))
      record_error("stream %d, request_headers: %s", n, why);
    snprintf(want, sizeof(want), "resp-%d", n);
    if ((why = check_reply(&s->messages[1], true, want)))
      record_error("stream %d, response_headers: %s", n, why);
  }
}

/* One connection: opens every stream at once, each sending both headers and half-closing,
 * then waits for all of them. */
static void *client_main(void *arg) {
  client_run *run = arg;
  h2_client *c = h2_client_connect_tcp("127.0.0.1", run->port);
  if (!c) {
    record_error("client %d: cannot connect", run->first_n);
    return NULL;
  }
  h2_client_set_timeout(c, WAIT_MS);
  int32_t *ids = calloc((size_t)run->streams, sizeof(*ids));
  for (int i = 0; ids && i < run->streams; i++) {
    const int n = run->first_n + i;
    ids[i] = h2_client_open_stream(c, PROCESS_PATH);
    if (ids[i] <= 0 || send_headers(c, ids[i], false, n) || send_headers(c, ids[i], true, n) ||
        h2_client_half_close(c, ids[i])) {
      record_error("stream %d: cannot send", n);
      ids[i] = 0;
    }
  }
  if (ids && h2_client_flush(c) != 0) record_error("client %d: flush failed", run->first_n);
  for (int i = 0; ids && i < run->streams; i++) {
    if (ids[i] <= 0) continue;
    if (h2_client_wait_closed(c, ids[i]) != 0) {
      record_error("stream %d: never closed", run->first_n + i);
      continue;
    }
    check_stream(h2_client_get_stream(c, ids[i]), run->first_n + i);
  }
  if (!ids) record_error("client %d: out of memory", run->first_n);
  free(ids);
  h2_client_free(c);
  return NULL;
}

/* Runs `clients` connections of `streams` streams each, concurrently; returns how many phases
 * each mode should have answered. */
static void run_clients(int port, int clients, int streams, int first_n, int *early, int *late) {
  client_run runs[8];
  assert_true(clients <= 8);
  for (int c = 0; c < clients; c++) {
    runs[c] = (client_run){.port = port, .first_n = first_n + c * 1000, .streams = streams};
    assert_int_equal(pthread_create(&runs[c].thread, NULL, client_main, &runs[c]), 0);
  }
  for (int c = 0; c < clients; c++)
    pthread_join(runs[c].thread, NULL);
  for (int c = 0; c < clients; c++)
    for (int i = 0; i < streams; i++) {
      const int n = runs[c].first_n + i;
      *(mode_of(n, false) == JOB_EARLY ? early : late) += 1;
      if (!fails(n)) *(mode_of(n, true) == JOB_EARLY ? early : late) += 1;
    }
}

static void test_deferred_across_threads(void **state) {
  (void)state;
  enum { WORKERS = 3, CLIENTS = 4, STREAMS = 60 };
  reset_errors();
  reset_loop_threads();
  atomic_store(&g_early_resumed, 0);
  atomic_store(&g_late_resumed, 0);
  atomic_store(&g_self_checked, 0);
  extproc_log_set_level(EXTPROC_LOG_OFF); /* the failing streams would each log an error */
  extproc_processor *proc;
  assert_int_equal(extproc_processor_new(&proc, "threads"), 0);
  assert_non_null(proc);
  assert_int_equal(extproc_processor_set_context(proc, sizeof(stream_ctx), NULL, NULL), 0);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_REQUEST_HEADERS, deferring_headers), 0);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_RESPONSE_HEADERS, deferring_headers), 0);
  int port;
  extproc_server *srv = start_server(proc, WORKERS, 5000, &port);
  pool_start();

  int early = 0, late = 0, rounds = 1, streams = CLIENTS * STREAMS;
  run_clients(port, CLIENTS, STREAMS, 0, &early, &late);
  /* The kernel spreads connections over the workers by hash: almost surely over more than one
   * already; if not, a few more connections settle it. */
  while (loop_threads_seen() < 2 && rounds < 20) {
    run_clients(port, 1, 10, rounds++ * 100000, &early, &late);
    streams += 10;
  }
  wait_server_idle(srv);
  pool_stop();

  assert_no_error();
  assert_true(loop_threads_seen() >= 2);
  assert_int_equal(atomic_load(&g_early_resumed), early);
  assert_int_equal(atomic_load(&g_late_resumed), late);
  assert_int_equal(atomic_load(&g_self_checked), early);
  assert_true(early > 0 && late > 0);
  assert_int_equal(extproc_server_total_streams(srv), (uint64_t)streams);
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* ---- 2. Two threads racing to resume one request ------------------------------------------- */

/* How the racers meet the callback: while it still runs (it waits for them), once it has
 * returned, or whenever they get there. */
typedef enum race_variant { RACE_EARLY, RACE_LATE, RACE_FREE, RACE_VARIANTS } race_variant;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_barrier_t barrier;
  extproc_request *req;
  race_variant variant;
  unsigned generation;  /* one per race */
  unsigned finished[2]; /* the generation each racer last finished */
  int rc[2];
  bool quit;
  atomic_int callbacks;
  atomic_int early_checked;
} g_race = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void *racer_main(void *arg) {
  const int me = (int)(intptr_t)arg;
  unsigned seen = 0;
  for (;;) {
    pthread_mutex_lock(&g_race.lock);
    while (g_race.generation == seen && !g_race.quit)
      pthread_cond_wait(&g_race.cond, &g_race.lock);
    if (g_race.quit) {
      pthread_mutex_unlock(&g_race.lock);
      return NULL;
    }
    seen = g_race.generation;
    extproc_request *req = g_race.req;
    const race_variant variant = g_race.variant;
    pthread_mutex_unlock(&g_race.lock);

    if (variant == RACE_LATE && !wait_handoff(req, HANDOFF_DEFERRED))
      record_error("race %u: callback never returned", seen);
    pthread_barrier_wait(&g_race.barrier);
    const int rc = extproc_request_resume(req, EXTPROC_CONTINUE);

    pthread_mutex_lock(&g_race.lock);
    g_race.rc[me] = rc;
    g_race.finished[me] = seen;
    pthread_cond_broadcast(&g_race.cond);
    pthread_mutex_unlock(&g_race.lock);
  }
}

/* Waits (under the lock) until both racers have finished the current race. */
static void wait_racers_locked(void) {
  while (g_race.finished[0] != g_race.generation || g_race.finished[1] != g_race.generation)
    pthread_cond_wait(&g_race.cond, &g_race.lock);
}

static extproc_result racing_request_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  atomic_fetch_add(&g_race.callbacks, 1);
  const char *n_text = extproc_header_get(req, "x-n");
  char value[32];
  snprintf(value, sizeof(value), "raced-%s", n_text ? n_text : "?");
  /* The answer is recorded here: the racers only resume, so neither owns anything else. */
  if (extproc_header_set(req, "x-reply", value) != 0 || extproc_request_defer(req) != 0)
    record_error("%s: cannot set up", value);
  pthread_mutex_lock(&g_race.lock);
  const race_variant variant = (race_variant)(atoi(n_text ? n_text : "0") % RACE_VARIANTS);
  g_race.req = req;
  g_race.variant = variant;
  g_race.generation++;
  pthread_cond_broadcast(&g_race.cond);
  if (variant == RACE_EARLY) {
    wait_racers_locked();
    if (atomic_load(&req->handoff) == HANDOFF_RESUMED_EARLY_CONTINUE)
      atomic_fetch_add(&g_race.early_checked, 1);
    else
      record_error("%s: hand-off state %d after the early race", value, atomic_load(&req->handoff));
  }
  pthread_mutex_unlock(&g_race.lock);
  return EXTPROC_DEFER;
}

static extproc_result plain_response_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  return extproc_header_set(req, "x-reply", "after") == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static void test_racing_resumes(void **state) {
  (void)state;
  enum { RACES = 150 };
  reset_errors();
  atomic_store(&g_race.callbacks, 0);
  atomic_store(&g_race.early_checked, 0);
  g_race.generation = 0;
  g_race.finished[0] = g_race.finished[1] = 0;
  g_race.quit = false;
  /* Every race has a loser, refused with a warning line: keep the output readable. */
  extproc_log_set_level(EXTPROC_LOG_ERROR);
  assert_int_equal(pthread_barrier_init(&g_race.barrier, NULL, 2), 0);
  pthread_t racers[2];
  for (intptr_t i = 0; i < 2; i++)
    assert_int_equal(pthread_create(&racers[i], NULL, racer_main, (void *)i), 0);

  extproc_processor *proc;

  assert_int_equal(extproc_processor_new(&proc, "racing"), 0);
  assert_non_null(proc);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_REQUEST_HEADERS, racing_request_headers), 0);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_RESPONSE_HEADERS, plain_response_headers), 0);
  int port;
  extproc_server *srv = start_server(proc, 2, 5000, &port);
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  h2_client_set_timeout(c, WAIT_MS);

  int wins[2] = {0, 0};
  for (int n = 0; n < RACES; n++) {
    const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(id > 0);
    assert_int_equal(send_headers(c, id, false, n), 0);
    assert_int_equal(h2_client_wait_messages(c, id, 1), 0);

    /* Both racers are done before anything else is sent, so the loser cannot resume a later
     * phase, and the request stays alive until then. */
    pthread_mutex_lock(&g_race.lock);
    assert_int_equal(g_race.generation, (unsigned)n + 1);
    wait_racers_locked();
    const int rc0 = g_race.rc[0], rc1 = g_race.rc[1];
    pthread_mutex_unlock(&g_race.lock);
    if (!((rc0 == 0 && rc1 == EXTPROC_ESTATE) || (rc0 == EXTPROC_ESTATE && rc1 == 0)))
      fail_msg("race %d: resumes returned %d and %d", n, rc0, rc1);
    wins[rc0 == 0 ? 0 : 1]++;

    assert_int_equal(send_headers(c, id, true, n), 0);
    assert_int_equal(h2_client_half_close(c, id), 0);
    assert_int_equal(h2_client_wait_closed(c, id), 0);
    const h2_client_stream *s = h2_client_get_stream(c, id);
    assert_non_null(s);
    assert_int_equal(s->grpc_status, 0);
    assert_int_equal(s->message_count, 2); /* the raced phase was answered once */
    char want[32];
    snprintf(want, sizeof(want), "raced-%d", n);
    const char *why = check_reply(&s->messages[0], false, want);
    if (!why) why = check_reply(&s->messages[1], true, "after");
    if (why) fail_msg("race %d: %s", n, why);
    assert_int_equal(h2_client_forget_stream(c, id), 0);
  }
  h2_client_free(c);
  wait_server_idle(srv);

  pthread_mutex_lock(&g_race.lock);
  g_race.quit = true;
  pthread_cond_broadcast(&g_race.cond);
  pthread_mutex_unlock(&g_race.lock);
  for (int i = 0; i < 2; i++)
    pthread_join(racers[i], NULL);
  pthread_barrier_destroy(&g_race.barrier);

  assert_no_error();
  assert_int_equal(atomic_load(&g_race.callbacks), RACES);
  assert_int_equal(atomic_load(&g_race.early_checked), (RACES + RACE_VARIANTS - 1) / RACE_VARIANTS);
  assert_int_equal(wins[0] + wins[1], RACES);
  printf("racing resumes: racer 0 won %d, racer 1 won %d of %d\n", wins[0], wins[1], RACES);
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* ---- 3. Stop from another thread while deferred requests are resumed ----------------------- */

enum { PARK_MAX = 256 };

static struct {
  pthread_mutex_t lock;
  extproc_request *parked[PARK_MAX];
  int values[PARK_MAX];
  int count;
  int taken;
} g_park = {.lock = PTHREAD_MUTEX_INITIALIZER};

static extproc_result parking_request_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  note_loop_thread();
  const char *n_text = extproc_header_get(req, "x-n");
  if (!n_text || extproc_request_defer(req) != 0) {
    record_error("cannot park a request");
    return EXTPROC_FAIL;
  }
  pthread_mutex_lock(&g_park.lock);
  if (g_park.count < PARK_MAX) {
    g_park.values[g_park.count] = atoi(n_text);
    g_park.parked[g_park.count++] = req;
  } else {
    record_error("too many parked requests");
  }
  pthread_mutex_unlock(&g_park.lock);
  return EXTPROC_DEFER;
}

static extproc_result answering_response_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  const char *n_text = extproc_header_get(req, "x-n");
  char value[32];
  snprintf(value, sizeof(value), "resp-%s", n_text ? n_text : "?");
  return extproc_header_set(req, "x-reply", value) == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static int parked_count(void) {
  pthread_mutex_lock(&g_park.lock);
  const int n = g_park.count;
  pthread_mutex_unlock(&g_park.lock);
  return n;
}

static struct {
  pthread_barrier_t go; /* the stopper, the resumers and the main thread start together */
  atomic_bool waited;   /* extproc_server_wait has returned */
  atomic_int stop_calls;
  extproc_server *srv;
} g_stop;

/* Calls extproc_server_stop again and again until the server is waited for: a stop may come
 * at any moment, even while the workers wind down. */
static void *stopper_main(void *arg) {
  (void)arg;
  pthread_barrier_wait(&g_stop.go);
  do {
    extproc_server_stop(g_stop.srv);
    atomic_fetch_add(&g_stop.stop_calls, 1);
    sched_yield();
  } while (!atomic_load(&g_stop.waited));
  return NULL;
}

/* Resumes parked requests, taking turns with the other resumer. */
static void *park_resumer_main(void *arg) {
  (void)arg;
  pthread_barrier_wait(&g_stop.go);
  for (;;) {
    pthread_mutex_lock(&g_park.lock);
    if (g_park.taken == g_park.count) {
      pthread_mutex_unlock(&g_park.lock);
      return NULL;
    }
    extproc_request *req = g_park.parked[g_park.taken];
    const int n = g_park.values[g_park.taken++];
    pthread_mutex_unlock(&g_park.lock);
    char value[32];
    snprintf(value, sizeof(value), "req-%d", n);
    if (extproc_header_set(req, "x-reply", value) != 0)
      record_error("%s: extproc_header_set refused", value);
    const int rc = extproc_request_resume(req, EXTPROC_CONTINUE);
    if (rc != 0) record_error("%s: resume returned %d", value, rc);
    sched_yield();
  }
}

typedef struct stop_client {
  h2_client *c;
  int first_n;
  int streams;
  int32_t ids[64];
  pthread_t thread;
} stop_client;

/* Waits for every stream's answers, then for the server to say GOAWAY and close. */
static void *stop_client_main(void *arg) {
  stop_client *sc = arg;
  for (int i = 0; i < sc->streams; i++) {
    const int n = sc->first_n + i;
    if (h2_client_wait_closed(sc->c, sc->ids[i]) != 0) {
      record_error("stream %d: never closed", n);
      continue;
    }
    const h2_client_stream *s = h2_client_get_stream(sc->c, sc->ids[i]);
    char want[32];
    const char *why = NULL;
    if (s->grpc_status != 0 || s->message_count != 2) {
      record_error("stream %d: grpc-status %d, %zu replies", n, s->grpc_status, s->message_count);
      continue;
    }
    snprintf(want, sizeof(want), "req-%d", n);
    why = check_reply(&s->messages[0], false, want);
    snprintf(want, sizeof(want), "resp-%d", n);
    if (!why) why = check_reply(&s->messages[1], true, want);
    if (why) record_error("stream %d: %s", n, why);
  }
  if (h2_client_wait_disconnect(sc->c) != 0) record_error("client %d: not closed", sc->first_n);
  if (!h2_client_goaway_received(sc->c, NULL)) record_error("client %d: no GOAWAY", sc->first_n);
  return NULL;
}

static void test_stop_from_another_thread(void **state) {
  (void)state;
  enum { WORKERS = 2, CLIENTS = 3, STREAMS = 20, RESUMER_THREADS = 2 };
  reset_errors();
  memset(g_park.parked, 0, sizeof(g_park.parked));
  g_park.count = g_park.taken = 0;
  atomic_store(&g_stop.waited, false);
  atomic_store(&g_stop.stop_calls, 0);
  extproc_processor *proc;
  assert_int_equal(extproc_processor_new(&proc, "stopping"), 0);
  assert_non_null(proc);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_REQUEST_HEADERS, parking_request_headers), 0);
  assert_int_equal(extproc_processor_on(proc, EXTPROC_RESPONSE_HEADERS, answering_response_headers),
                   0);
  int port;
  /* A grace period only a hang would use up: every stream must finish normally. */
  extproc_server *srv = start_server(proc, WORKERS, WAIT_MS, &port);
  g_stop.srv = srv;

  stop_client clients[CLIENTS];
  for (int k = 0; k < CLIENTS; k++) {
    stop_client *sc = &clients[k];
    *sc = (stop_client){.first_n = k * 1000, .streams = STREAMS};
    sc->c = h2_client_connect_tcp("127.0.0.1", port);
    assert_non_null(sc->c);
    h2_client_set_timeout(sc->c, WAIT_MS);
    for (int i = 0; i < STREAMS; i++) {
      sc->ids[i] = h2_client_open_stream(sc->c, PROCESS_PATH);
      assert_true(sc->ids[i] > 0);
      assert_int_equal(send_headers(sc->c, sc->ids[i], false, sc->first_n + i), 0);
      assert_int_equal(send_headers(sc->c, sc->ids[i], true, sc->first_n + i), 0);
      assert_int_equal(h2_client_half_close(sc->c, sc->ids[i]), 0);
    }
    assert_int_equal(h2_client_flush(sc->c), 0);
  }
  /* Every stream's request_headers is deferred and parked before the stop. */
  const int64_t deadline = now_ms() + WAIT_MS;
  while (parked_count() < CLIENTS * STREAMS) {
    if (now_ms() > deadline) fail_msg("only %d requests parked", parked_count());
    for (int k = 0; k < CLIENTS; k++)
      h2_client_poll(clients[k].c, 0);
    sleep_ms(1);
  }
  assert_int_equal(extproc_server_open_streams(srv), CLIENTS * STREAMS);

  for (int k = 0; k < CLIENTS; k++)
    assert_int_equal(pthread_create(&clients[k].thread, NULL, stop_client_main, &clients[k]), 0);
  assert_int_equal(pthread_barrier_init(&g_stop.go, NULL, 2 + RESUMER_THREADS), 0);
  pthread_t stopper, resumers[RESUMER_THREADS];
  assert_int_equal(pthread_create(&stopper, NULL, stopper_main, NULL), 0);
  for (int i = 0; i < RESUMER_THREADS; i++)
    assert_int_equal(pthread_create(&resumers[i], NULL, park_resumer_main, NULL), 0);
  pthread_barrier_wait(&g_stop.go);
  extproc_server_wait(srv); /* while the stopper keeps calling stop */
  atomic_store(&g_stop.waited, true);
  pthread_join(stopper, NULL);
  for (int i = 0; i < RESUMER_THREADS; i++)
    pthread_join(resumers[i], NULL);
  for (int k = 0; k < CLIENTS; k++) {
    pthread_join(clients[k].thread, NULL);
    h2_client_free(clients[k].c);
  }
  pthread_barrier_destroy(&g_stop.go);

  assert_no_error();
  assert_true(atomic_load(&g_stop.stop_calls) >= 1);
  assert_int_equal(g_park.taken, CLIENTS * STREAMS);
  assert_int_equal(extproc_server_open_streams(srv), 0);
  assert_int_equal(extproc_server_total_streams(srv), CLIENTS * STREAMS);
  extproc_server_stop(srv); /* after the wait: harmless */
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_deferred_across_threads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_racing_resumes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_from_another_thread, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
