/* Callback deadlines, blocking callbacks and the accumulated-body cap, through the in-process
 * harness (its own clock fires deadlines, its own pool runs blocking callbacks) and through the
 * engine with a poster whose timer the test fires by hand (to reach every hand-off state on
 * purpose). Deadlines here are short and only bound how long a test waits; no assertion
 * depends on how fast anything runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/arena.h"
#include "base/pool.h"
#include "engine/request.h"
#include "extproc/testing.h"
#include "test_util.h"
#include "testing/envoy_request.h"

enum { WAIT_MS = 20000 };

static const char *const get_headers[] = {":method",      "GET", ":path", "/",
                                          "x-request-id", "d-1", NULL};

/* Waits (bounded) until `flag` is set by another thread. */
static void wait_flag(atomic_int *flag) {
  const int64_t until = now_ms() + WAIT_MS;
  while (!atomic_load(flag) && now_ms() < until)
    sleep_ms(1);
  assert_true(atomic_load(flag));
}

/* ---- extproc_body_accumulate's cap ---------------------------------------------------- */

static atomic_int g_accumulate_errors[3]; /* per chunk: extproc_body_accumulate_error */

static extproc_result accumulate(extproc_request *req, void *ctx) {
  int *chunk = ctx;
  size_t len = 0;
  const uint8_t *body = extproc_body_accumulate(req, &len);
  atomic_store(&g_accumulate_errors[*chunk], extproc_body_accumulate_error(req));
  (*chunk)++;
  return body ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static extproc_result accumulate_in_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len = 7;
  assert_null(extproc_body_accumulate(req, &len));
  assert_int_equal(len, 0);
  assert_int_equal(extproc_body_accumulate_error(req), EXTPROC_ESTATE);
  return EXTPROC_CONTINUE;
}

static void test_body_accumulate_limit(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "acc"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, accumulate_in_headers);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, accumulate);
  extproc_processor_set_context(p, sizeof(int), NULL, NULL);
  assert_int_equal(extproc_processor_set_max_body_accumulate(p, 10), 0);
  assert_int_equal(extproc_processor_set_max_body_accumulate(NULL, 10), EXTPROC_EINVAL);
  assert_int_equal(extproc_body_accumulate_error(NULL), EXTPROC_EINVAL);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_STREAMED, EXTPROC_BODY_NONE);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, get_headers, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "123456", 6, false), 0);
  assert_int_equal(atomic_load(&g_accumulate_errors[0]), 0);
  assert_false(extproc_harness_stream_ended(h, NULL, NULL));
  /* 12 bytes would pass the cap of 10: refused, told apart from out-of-memory, and the failure
   * the callback returns carries RESOURCE_EXHAUSTED. */
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "789012", 6, false), 0);
  assert_int_equal(atomic_load(&g_accumulate_errors[1]), EXTPROC_ELIMIT);
  uint32_t status;
  const char *message;
  assert_true(extproc_harness_stream_ended(h, &status, &message));
  assert_int_equal(status, EXTPROC_GRPC_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(message, "max_body_accumulate_bytes"));
  extproc_harness_free(h);
  extproc_processor_free(p);
  assert_string_equal(extproc_strerror(EXTPROC_ELIMIT), "a configured limit was reached");
}

/* ---- Deadlines through the harness --------------------------------------------------------- */

typedef struct late_resume {
  pthread_t thread;
  extproc_request *req;
  atomic_int go;     /* the test lets the resume happen */
  atomic_int result; /* what extproc_request_resume returned */
  atomic_int done;
} late_resume;

static late_resume g_late;

static void *resume_when_told(void *arg) {
  late_resume *l = arg;
  wait_flag(&l->go);
  atomic_store(&l->result, extproc_request_resume(l->req, EXTPROC_CONTINUE));
  atomic_store(&l->done, 1);
  return NULL;
}

static extproc_result defer_to_thread(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_request_defer(req), 0);
  g_late.req = req;
  assert_int_equal(pthread_create(&g_late.thread, NULL, resume_when_told, &g_late), 0);
  return EXTPROC_DEFER;
}

static void run_deadline(extproc_error_policy policy, bool resume_in_time) {
  memset(&g_late, 0, sizeof(g_late));
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "Slow"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, defer_to_thread);
  extproc_processor_set_error_policy(p, policy, 504);
  extproc_processor_set_chain_header(p, "x-chain");
  /* In time: the resume comes before the harness waits; late: long after the deadline. */
  assert_int_equal(extproc_processor_set_deadline(p, resume_in_time ? 60000 : 30), 0);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  if (resume_in_time) atomic_store(&g_late.go, 1);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, get_headers, false), 0);
  uint32_t status = 0;
  if (resume_in_time) {
    assert_false(extproc_harness_stream_ended(h, NULL, NULL));
    assert_non_null(extproc_harness_last_reply(h));
    assert_null(extproc_harness_immediate_response(h));
  } else if (policy == EXTPROC_ON_ERROR_FAIL_STREAM) {
    assert_true(extproc_harness_stream_ended(h, &status, NULL));
    assert_int_equal(status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
  } else {
    const extproc_harness_reply *r = extproc_harness_immediate_response(h);
    assert_non_null(r);
    assert_int_equal(r->immediate_status, 504);
    assert_string_equal(r->details, "ext_proc_callback_deadline_exceeded");
    assert_string_equal(extproc_harness_client_header(h, "x-chain"), "Slow");
    /* Nothing more is processed after the answer. */
    extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, get_headers, true);
    assert_int_equal(extproc_harness_reply_count(h), 1);
  }
  atomic_store(&g_late.go, 1);
  pthread_join(g_late.thread, NULL);
  assert_int_equal(atomic_load(&g_late.result), resume_in_time ? 0 : EXTPROC_ETIMEDOUT);
  /* One reply (the answer, or the immediate response), or none when the stream failed. */
  assert_int_equal(extproc_harness_reply_count(h), status ? 0 : 1);
  extproc_harness_free(h); /* frees the request the late resume handed back */
  extproc_processor_free(p);
}

static void test_deadline_fails_the_stream(void **state) {
  (void)state;
  run_deadline(EXTPROC_ON_ERROR_FAIL_STREAM, false);
}

static void test_deadline_immediate_response(void **state) {
  (void)state;
  run_deadline(EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, false);
}

static void test_resume_before_deadline(void **state) {
  (void)state;
  run_deadline(EXTPROC_ON_ERROR_FAIL_STREAM, true);
}

/* The resume and the deadline race, many times: whichever wins, the phase gets exactly one
 * answer, the resume's return says which, and nothing is freed twice (ASan, TSan). */
static late_resume g_race;
static int g_race_spin_us;

static int64_t now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *resume_after_spin(void *arg) {
  late_resume *l = arg;
  const int64_t until = now_us() + g_race_spin_us; /* busy: a sleep would be too coarse */
  while (now_us() < until)
    atomic_load(&l->go);
  atomic_store(&l->result, extproc_request_resume(l->req, EXTPROC_CONTINUE));
  return NULL;
}

static extproc_result defer_to_racer(extproc_request *req, void *ctx) {
  (void)ctx;
  extproc_request_defer(req);
  g_race.req = req;
  if (pthread_create(&g_race.thread, NULL, resume_after_spin, &g_race) != 0) abort();
  return EXTPROC_DEFER;
}

static void test_resume_races_deadline(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "racer"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, defer_to_racer);
  extproc_processor_set_deadline(p, 1);
  int outcomes[2] = {0, 0}; /* answered, expired */
  for (int i = 0; i < 300; i++) {
    g_race_spin_us = (i % 30) * 70; /* 0 to 2 ms: on both sides of the 1 ms deadline */
    extproc_harness *h;
    assert_int_equal(extproc_harness_new(&h, p), 0);
    assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, get_headers, false), 0);
    pthread_join(g_race.thread, NULL);
    uint32_t status = 0;
    const bool expired = extproc_harness_stream_ended(h, &status, NULL);
    if (expired) assert_int_equal(status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
    assert_int_equal(extproc_harness_reply_count(h), expired ? 0 : 1);
    assert_int_equal(atomic_load(&g_race.result), expired ? EXTPROC_ETIMEDOUT : 0);
    outcomes[expired]++;
    extproc_harness_free(h);
  }
  print_message("resume vs deadline: %d answered, %d expired\n", outcomes[0], outcomes[1]);
  extproc_processor_free(p);
}

/* ---- Blocking callbacks through the harness --------------------------------------------- */

static atomic_int g_blocking_done;
static pthread_t g_test_thread;

static extproc_result sleepy(extproc_request *req, void *ctx) {
  const long *ms = extproc_request_user_data(req);
  (void)ctx;
  assert_false(pthread_equal(pthread_self(), g_test_thread)); /* on the pool */
  sleep_ms(*ms);
  extproc_header_set(req, "x-slept", "yes");
  /* Replies leave only from the loop: refused here. */
  assert_int_equal(extproc_override_message_timeout(req, 1000), EXTPROC_ESTATE);
  atomic_fetch_add(&g_blocking_done, 1);
  return EXTPROC_CONTINUE;
}

static void test_blocking_callback_in_harness(void **state) {
  (void)state;
  g_test_thread = pthread_self();
  static const long sleep_for = 20;
  static const extproc_processor_def def = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "Sleepy",
                                            .request_headers = sleepy,
                                            .user_data = (void *)&sleep_for,
                                            .blocking = true};
  extproc_processor *p;
  assert_int_equal(extproc_processor_new_from_def(&p, &def), 0);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, get_headers, false), 0);
  assert_string_equal(extproc_harness_upstream_header(h, "x-slept"), "yes");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static atomic_int g_cleaned;

static void count_cleanup(void *ctx) {
  (void)ctx;
  atomic_fetch_add(&g_cleaned, 1);
}

/* A blocking callback slower than its deadline: the stream is answered at the deadline, the
 * callback still finishes on its thread, and the request is freed only after that, even when
 * the harness is freed first. */
static void test_blocking_callback_past_deadline(void **state) {
  (void)state;
  g_test_thread = pthread_self();
  atomic_store(&g_blocking_done, 0);
  atomic_store(&g_cleaned, 0);
  static const long sleep_for = 300;
  static const extproc_processor_def def = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "TooSlow",
                                            .context_size = 8,
                                            .context_cleanup = count_cleanup,
                                            .request_headers = sleepy,
                                            .user_data = (void *)&sleep_for,
                                            .blocking = true,
                                            .deadline_ms = 20};
  extproc_processor *p;
  assert_int_equal(extproc_processor_new_from_def(&p, &def), 0);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, get_headers, false), 0);
  uint32_t status;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
  assert_int_equal(atomic_load(&g_blocking_done), 0); /* still sleeping */
  extproc_harness_free(h);
  assert_int_equal(atomic_load(&g_cleaned), 0); /* held by the pool thread */
  wait_flag(&g_cleaned);                        /* freed once the callback returned */
  assert_int_equal(atomic_load(&g_blocking_done), 1);
  extproc_processor_free(p);
}

/* ---- The engine with a hand-fired timer and a pool of one -------------------------------- */

typedef struct manual {
  pthread_mutex_t lock;
  extproc_request *posted;
  size_t deferred;
  bool armed;
  engine_stats stats;
  int finished;
  uint32_t status;
  int replies;
} manual;

static void manual_post(void *data, extproc_request *req) {
  manual *m = data;
  pthread_mutex_lock(&m->lock);
  m->posted = req;
  pthread_mutex_unlock(&m->lock);
}

static extproc_request *manual_wait_post(manual *m) {
  pthread_mutex_lock(&m->lock);
  const int64_t until = now_ms() + WAIT_MS;
  while (!m->posted && now_ms() < until) {
    pthread_mutex_unlock(&m->lock);
    sleep_ms(1);
    pthread_mutex_lock(&m->lock);
  }
  extproc_request *req = m->posted;
  m->posted = NULL;
  pthread_mutex_unlock(&m->lock);
  return req;
}

static void *manual_timer_start(void *data, extproc_request *req, uint32_t ms) {
  (void)req;
  (void)ms;
  ((manual *)data)->armed = true;
  return data;
}

static void manual_timer_stop(void *data, void *timer) {
  (void)timer;
  ((manual *)data)->armed = false;
}

static int manual_send(void *io, const ProtobufCMessage *reply) {
  (void)reply;
  ((manual *)io)->replies++;
  return 0;
}

static void manual_finish(void *io, uint32_t status, const char *message) {
  (void)message;
  manual *m = io;
  m->finished++;
  m->status = status;
}

static void manual_resumed(void *io) { (void)io; }

static const stream_sink manual_sink = {
    .send = manual_send, .finish = manual_finish, .resumed = manual_resumed};

/* The loop's side of the engine for `m`: posts, the deadline timer and the counters land in it. */
static stream_poster manual_poster(manual *m, task_pool *pool) {
  return (stream_poster){.post = manual_post,
                         .data = m,
                         .deferred = &m->deferred,
                         .timer_start = manual_timer_start,
                         .timer_stop = manual_timer_stop,
                         .pool = pool,
                         .stats = &m->stats};
}

static void send_headers(extproc_request *req) {
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  envoy_request *msg = envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, get_headers, 3, false);
  size_t len;
  const uint8_t *buf = envoy_request_encode(&a, msg, &len);
  assert_non_null(buf);
  stream_on_message(req, buf, len);
  arena_free(&a);
}

/* A job that holds the pool's only thread until told. */
typedef struct plug {
  pool_job job;
  atomic_int started, release;
} plug;

static void run_plug(pool_job *job) {
  plug *p = (plug *)(void *)job;
  atomic_store(&p->started, 1);
  wait_flag(&p->release);
}

static atomic_int g_ran;

static extproc_result count_run(extproc_request *req, void *ctx) {
  (void)req;
  (void)ctx;
  atomic_fetch_add(&g_ran, 1);
  return EXTPROC_CONTINUE;
}

/* The deadline passes while the blocking callback still waits for a thread: the stream is
 * answered, the job is taken off the queue (it never runs) and the request comes back at once;
 * the queue-full wait and the deadline are counted. */
static void test_deadline_while_queued(void **state) {
  (void)state;
  task_pool *pool;
  assert_int_equal(pool_new(&pool, 1, 0), 0);
  plug pl = {.job.run = run_plug};
  pool_submit(pool, &pl.job);
  wait_flag(&pl.started);

  manual m = {0};
  pthread_mutex_init(&m.lock, NULL);
  const stream_poster poster = manual_poster(&m, pool);
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "queued"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, count_run);
  extproc_processor_set_blocking(p, true);
  extproc_processor_set_deadline(p, 5);
  atomic_store(&g_ran, 0);
  extproc_request *req = stream_open(p, &manual_sink, &m, &poster);
  send_headers(req);
  assert_true(stream_busy(req));
  assert_true(m.armed);
  assert_int_equal(m.deferred, 1);
  assert_int_equal(atomic_load(&m.stats.pool_waits), 1); /* the queue had no slot */
  assert_int_equal(pool_pending(pool), 1);

  stream_deadline_on_loop(req); /* as the loop's timer would */
  assert_int_equal(m.finished, 1);
  assert_int_equal(m.status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
  assert_false(stream_held(req));
  assert_int_equal(m.deferred, 0);
  assert_int_equal(pool_pending(pool), 0);
  assert_int_equal(atomic_load(&m.stats.deadlines_expired), 1);

  atomic_store(&pl.release, 1);
  stream_close(req);
  pool_free(pool);
  assert_int_equal(atomic_load(&g_ran), 0);
  extproc_processor_free(p);
  pthread_mutex_destroy(&m.lock);
}

/* The deadline passes while a blocking callback runs: answered at once, and the callback's
 * own result, handed back later, only releases the request. */
static atomic_int g_release_callback;

static extproc_result wait_release(extproc_request *req, void *ctx) {
  (void)req;
  (void)ctx;
  atomic_fetch_add(&g_ran, 1);
  wait_flag(&g_release_callback);
  return EXTPROC_CONTINUE;
}

static void test_deadline_while_running(void **state) {
  (void)state;
  task_pool *pool;
  assert_int_equal(pool_new(&pool, 1, 4), 0);
  manual m = {0};
  pthread_mutex_init(&m.lock, NULL);
  const stream_poster poster = manual_poster(&m, pool);
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "running"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, wait_release);
  extproc_processor_set_blocking(p, true);
  extproc_processor_set_deadline(p, 5);
  atomic_store(&g_ran, 0);
  atomic_store(&g_release_callback, 0);
  extproc_request *req = stream_open(p, &manual_sink, &m, &poster);
  send_headers(req);
  assert_int_equal(atomic_load(&m.stats.pool_waits), 0);
  wait_flag(&g_ran);
  stream_deadline_on_loop(req);
  assert_int_equal(m.status, EXTPROC_GRPC_DEADLINE_EXCEEDED);
  assert_true(stream_held(req));  /* the pool thread still has it */
  assert_false(stream_busy(req)); /* but its input is no longer held */
  stream_close(req);              /* Envoy goes away meanwhile */
  atomic_store(&g_release_callback, 1);
  extproc_request *back = manual_wait_post(&m);
  assert_ptr_equal(back, req);
  stream_resume_on_loop(back); /* frees it: no reply, no second status */
  assert_int_equal(m.finished, 1);
  assert_int_equal(m.replies, 0);
  assert_int_equal(m.deferred, 0);
  pool_free(pool);
  extproc_processor_free(p);
  pthread_mutex_destroy(&m.lock);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_body_accumulate_limit, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_deadline_fails_the_stream, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_deadline_immediate_response, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_resume_before_deadline, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_resume_races_deadline, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_blocking_callback_in_harness, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_blocking_callback_past_deadline, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_deadline_while_queued, watchdog_setup,
                                      watchdog_teardown),
      cmocka_unit_test_setup_teardown(test_deadline_while_running, watchdog_setup,
                                      watchdog_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
