/* The stream engine, driven message by message with Envoy's own encodings: phase dispatch and
 * order, the one reply per message, header and body mutations, immediate responses, error
 * policies, observability mode, contexts, and deferred answers from another thread. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/arena.h"
#include "engine/stream.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "testing/envoy_request.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Config__Core__V3__HeaderValueOption HeaderValueOption;

/* ---- What the engine sent --------------------------------------------------------------- */

enum { MAX_REPLIES = 16 };

typedef struct capture {
  ProcessingResponse *replies[MAX_REPLIES];
  int count;
  bool finished;
  uint32_t status;
  char message[256];
  int resumed;
} capture;

static int cap_send(void *io, const ProtobufCMessage *reply) {
  capture *c = io;
  assert_true(c->count < MAX_REPLIES);
  assert_false(c->finished); /* nothing may follow the final status */
  /* Round-trip through the wire format, as Envoy would see it. */
  const size_t len = protobuf_c_message_get_packed_size(reply);
  uint8_t *buf = malloc(len + 1);
  protobuf_c_message_pack(reply, buf);
  c->replies[c->count++] =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, len, buf);
  free(buf);
  return 0;
}

static void cap_finish(void *io, uint32_t status, const char *message) {
  capture *c = io;
  assert_false(c->finished);
  c->finished = true;
  c->status = status;
  snprintf(c->message, sizeof(c->message), "%s", message ? message : "");
}

static void cap_resumed(void *io) { ((capture *)io)->resumed++; }

static const stream_sink sink = {.send = cap_send, .finish = cap_finish, .resumed = cap_resumed};

static void capture_free(capture *c) {
  for (int i = 0; i < c->count; i++)
    envoy__service__ext_proc__v3__processing_response__free_unpacked(c->replies[i], NULL);
  memset(c, 0, sizeof(*c));
}

/* ---- What Envoy sends ------------------------------------------------------------------- */

/* Sends the engine a ProcessingRequest for `phase` with `n` headers (a flat name, value...
 * array) or a body, encoded as on the wire; a phase out of range leaves the oneof unset. */
static void send_request(extproc_request *req, extproc_phase phase, const char *const *h, size_t n,
                         const char *body, bool eos, bool observability) {
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  envoy_request *m;
  if (phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY)
    m = envoy_request_body(&a, phase, body, body ? strlen(body) : 0, eos);
  else if (phase < EXTPROC_PHASE_COUNT)
    m = envoy_request_headers(&a, phase, h, n, eos);
  else
    m = envoy_request_new(&a);
  assert_non_null(m);
  m->observability_mode = observability;
  size_t len;
  const uint8_t *buf = envoy_request_encode(&a, m, &len);
  assert_non_null(buf);
  stream_on_message(req, buf, len);
  arena_free(&a);
}

static void send_phase(extproc_request *req, extproc_phase phase, const char *const *h, size_t n,
                       const char *body, bool eos) {
  send_request(req, phase, h, n, body, eos, false);
}

static const char *const request_headers[] = {
    ":method",        "POST",  ":path",        "/orders?id=7",
    ":scheme",        "http",  ":authority",   "shop.example",
    "x-request-id",   "rid-1", "content-type", "application/json",
    "content-length", "12",    "x-dup",        "one",
    "X-Dup",          "two"};
#define N_REQUEST_HEADERS (sizeof(request_headers) / sizeof(request_headers[0]) / 2)

/* ---- Processors under test -------------------------------------------------------------- */

static extproc_result write_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_header_set(req, "X-Set", "s"), 0);
  assert_int_equal(extproc_header_append(req, "x-append", "a"), 0);
  assert_int_equal(extproc_header_add_if_absent(req, "x-absent", "new"), 0);
  assert_int_equal(extproc_header_add_if_absent(req, "x-dup", "never"), 0); /* exists */
  assert_int_equal(extproc_header_remove(req, "x-gone"), 0);
  assert_int_equal(extproc_header_set(req, "bad name", "v"), EXTPROC_EINVAL);
  assert_int_equal(extproc_header_set(req, "x-ok", "bad\r\nvalue"), EXTPROC_EINVAL);
  return EXTPROC_CONTINUE;
}

static const HeaderValueOption *find_set(const Envoy__Service__ExtProc__V3__HeaderMutation *m,
                                         const char *name) {
  for (size_t i = 0; m && i < m->n_set_headers; i++)
    if (strcmp(m->set_headers[i]->header->key, name) == 0) return m->set_headers[i];
  return NULL;
}

static void assert_option(const HeaderValueOption *o, const char *raw, bool append, int action) {
  assert_non_null(o);
  assert_int_equal(o->header->raw_value.len, strlen(raw));
  assert_memory_equal(o->header->raw_value.data, raw, strlen(raw));
  assert_string_equal(o->header->value, ""); /* never both: Envoy rejects that */
  assert_non_null(o->append);
  assert_int_equal(o->append->value, append);
  assert_int_equal(o->append_action, action);
}

static void test_header_mutations_are_raw_and_consistent(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "writer"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, write_headers);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_int_equal(c.count, 1);
  const ProcessingResponse *r = c.replies[0];
  assert_int_equal(r->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS);
  const Envoy__Service__ExtProc__V3__HeaderMutation *m =
      r->request_headers->response->header_mutation;
  assert_non_null(m);
  assert_int_equal(m->n_set_headers, 3);
  assert_option(
      find_set(m, "x-set"), "s", false,
      ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__OVERWRITE_IF_EXISTS_OR_ADD);
  assert_option(
      find_set(m, "x-append"), "a", true,
      ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__APPEND_IF_EXISTS_OR_ADD);
  assert_option(find_set(m, "x-absent"), "new", false,
                ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__ADD_IF_ABSENT);
  assert_null(find_set(m, "x-dup"));
  assert_int_equal(m->n_remove_headers, 1);
  assert_string_equal(m->remove_headers[0], "x-gone");
  assert_false(c.finished);
  stream_on_half_close(req);
  assert_true(c.finished);
  assert_int_equal(c.status, EXTPROC_GRPC_OK);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

typedef struct seen {
  int calls[EXTPROC_PHASE_COUNT];
  int inits, cleanups, ctx_at_cleanup;
  char path[64];
  int64_t content_length;
  uint32_t status;
  size_t dup_count;
  char body[64];
  bool eos;
} seen;

static seen observed;

static int ctx_init(extproc_request *req, void *ctx) {
  (void)req;
  observed.inits++;
  *(int *)ctx = 42;
  return 0;
}

static void ctx_cleanup(void *ctx) {
  observed.ctx_at_cleanup = *(int *)ctx;
  observed.cleanups++;
}

static extproc_result record(extproc_request *req, void *ctx) {
  const extproc_phase ph = extproc_request_phase(req);
  observed.calls[ph]++;
  if (ph == EXTPROC_REQUEST_HEADERS) {
    assert_int_equal(*(int *)ctx, 42);
    *(int *)ctx = 43;
  }
  const extproc_request_info *info = extproc_request_get_info(req);
  if (info->path) snprintf(observed.path, sizeof(observed.path), "%s", info->path);
  observed.content_length = info->content_length;
  observed.status = info->response_status;
  const char *vals[4];
  observed.dup_count = extproc_header_get_all(req, "X-DUP", vals, 4);
  if (observed.dup_count == 2) {
    assert_string_equal(vals[0], "one");
    assert_string_equal(vals[1], "two");
  }
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (body) snprintf(observed.body, sizeof(observed.body), "%.*s", (int)len, (const char *)body);
  observed.eos = extproc_request_end_of_stream(req);
  if (ph == EXTPROC_REQUEST_BODY) assert_int_equal(extproc_body_replace(req, "replaced", 8), 0);
  if (ph == EXTPROC_RESPONSE_BODY) assert_int_equal(extproc_body_clear(req), 0);
  if (ph == EXTPROC_RESPONSE_TRAILERS) assert_int_equal(extproc_header_set(req, "x-t", "1"), 0);
  return EXTPROC_CONTINUE;
}

static extproc_processor *recording_processor(void) {
  static const extproc_processor_def def = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "recorder",
                                            .context_size = sizeof(int),
                                            .context_init = ctx_init,
                                            .context_cleanup = ctx_cleanup,
                                            .request_headers = record,
                                            .request_body = record,
                                            .request_trailers = record,
                                            .response_headers = record,
                                            .response_body = record,
                                            .response_trailers = record};
  memset(&observed, 0, sizeof(observed));
  extproc_processor *p;
  assert_int_equal(extproc_processor_new_from_def(&p, &def), 0);
  return p;
}

static void test_all_phases_in_order_with_one_reply_each(void **state) {
  (void)state;
  extproc_processor *p = recording_processor();
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  const char *const trailers[] = {"grpc-status", "0"};
  const char *const response[] = {":status", "201"};
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_string_equal(observed.path, "/orders?id=7");
  assert_int_equal(observed.content_length, 12);
  assert_int_equal(observed.dup_count, 2);
  assert_false(observed.eos);
  send_phase(req, EXTPROC_REQUEST_BODY, NULL, 0, "{\"a\":1}", false);
  send_phase(req, EXTPROC_REQUEST_BODY, NULL, 0, "", true);
  assert_string_equal(observed.body, "");
  assert_true(observed.eos);
  send_phase(req, EXTPROC_REQUEST_TRAILERS, trailers, 1, NULL, false);
  send_phase(req, EXTPROC_RESPONSE_HEADERS, response, 1, NULL, false);
  assert_int_equal(observed.status, 201);
  send_phase(req, EXTPROC_RESPONSE_BODY, NULL, 0, "resp", true);
  assert_string_equal(observed.body, "resp");
  send_phase(req, EXTPROC_RESPONSE_TRAILERS, trailers, 1, NULL, false);

  const int want_case[] = {
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS};
  assert_int_equal(c.count, 7);
  for (int i = 0; i < 7; i++)
    assert_int_equal(c.replies[i]->response_case, want_case[i]);
  const Envoy__Service__ExtProc__V3__BodyMutation *bm =
      c.replies[1]->request_body->response->body_mutation;
  assert_int_equal(bm->mutation_case, ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY);
  assert_memory_equal(bm->body.data, "replaced", 8);
  bm = c.replies[5]->response_body->response->body_mutation;
  assert_int_equal(bm->mutation_case,
                   ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY);
  assert_non_null(find_set(c.replies[6]->response_trailers->header_mutation, "x-t"));
  for (int ph = 0; ph < EXTPROC_PHASE_COUNT; ph++)
    assert_int_equal(observed.calls[ph], ph == EXTPROC_REQUEST_BODY ? 2 : 1);
  assert_int_equal(observed.inits, 1);
  stream_on_half_close(req);
  assert_int_equal(c.status, EXTPROC_GRPC_OK);
  stream_close(req);
  assert_int_equal(observed.cleanups, 1);
  assert_int_equal(observed.ctx_at_cleanup, 43); /* the context lived across every phase */
  capture_free(&c);
  extproc_processor_free(p);
}

/* Each case: a sequence of phases whose last one is out of order. */
static void test_out_of_order_phases_fail_the_stream(void **state) {
  (void)state;
  static const struct {
    extproc_phase phases[4];
    bool eos[4];
    int n;
  } cases[] = {
      {{EXTPROC_REQUEST_HEADERS, EXTPROC_REQUEST_HEADERS}, {false, false}, 2},
      /* headers with end_of_stream: nothing more in that direction */
      {{EXTPROC_REQUEST_HEADERS, EXTPROC_REQUEST_BODY}, {true, false}, 2},
      {{EXTPROC_RESPONSE_HEADERS, EXTPROC_RESPONSE_TRAILERS}, {true, false}, 2},
      {{EXTPROC_REQUEST_BODY, EXTPROC_REQUEST_BODY}, {true, false}, 2},
      {{EXTPROC_REQUEST_TRAILERS, EXTPROC_REQUEST_BODY}, {false, false}, 2},
      {{EXTPROC_REQUEST_TRAILERS, EXTPROC_REQUEST_HEADERS}, {false, false}, 2},
      {{EXTPROC_RESPONSE_HEADERS, EXTPROC_RESPONSE_TRAILERS, EXTPROC_RESPONSE_TRAILERS},
       {false, false, false},
       3},
  };
  extproc_processor *p = recording_processor();
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    capture c = {0};
    extproc_request *req = stream_open(p, &sink, &c, NULL);
    for (int k = 0; k < cases[i].n; k++)
      send_phase(req, cases[i].phases[k], request_headers, 1, "b", cases[i].eos[k]);
    assert_true(c.finished);
    assert_int_equal(c.status, EXTPROC_GRPC_FAILED_PRECONDITION);
    assert_int_equal(c.count, cases[i].n - 1); /* every earlier message was answered */
    stream_close(req);
    capture_free(&c);
  }
  extproc_processor_free(p);
}

static void test_skipped_phases_are_fine(void **state) {
  (void)state;
  extproc_processor *p = recording_processor();
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  const char *const response[] = {":status", "200"};
  /* Request headers SKIPped: the exchange starts with the response. */
  send_phase(req, EXTPROC_RESPONSE_HEADERS, response, 1, NULL, true);
  assert_int_equal(c.count, 1);
  assert_false(c.finished);
  assert_int_equal(observed.inits, 1);
  stream_on_half_close(req);
  assert_int_equal(c.status, EXTPROC_GRPC_OK);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static void test_malformed_and_empty_messages(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "p"), 0);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  const uint8_t garbage[] = {0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  stream_on_message(req, garbage, sizeof(garbage));
  assert_true(c.finished);
  assert_int_equal(c.status, EXTPROC_GRPC_INVALID_ARGUMENT);
  stream_on_message(req, garbage, sizeof(garbage)); /* ignored after the end */
  stream_close(req);
  capture_free(&c);

  req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_PHASE_COUNT, NULL, 0, NULL, false); /* no phase set */
  assert_int_equal(c.status, EXTPROC_GRPC_INVALID_ARGUMENT);
  assert_int_equal(c.count, 0);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static extproc_result deny(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_header_set(req, "x-discarded", "1"), 0);
  assert_int_equal(extproc_immediate_header_set(req, "x-early", "1"), EXTPROC_ESTATE);
  assert_int_equal(extproc_immediate_response(req, 99), EXTPROC_EINVAL);
  assert_int_equal(extproc_immediate_response(req, 403), 0);
  assert_int_equal(extproc_immediate_header_set(req, "x-reason", "denied"), 0);
  assert_int_equal(extproc_immediate_body(req, "no entry", 8), 0);
  assert_int_equal(extproc_immediate_grpc_status(req, EXTPROC_GRPC_PERMISSION_DENIED), 0);
  assert_int_equal(extproc_immediate_details(req, "denied_by_test"), 0);
  assert_int_equal(extproc_header_set(req, "x-late", "1"), EXTPROC_ESTATE);
  return EXTPROC_CONTINUE;
}

static void test_immediate_response(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "denier"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, deny);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  send_phase(req, EXTPROC_REQUEST_BODY, NULL, 0, "payload", true);
  assert_int_equal(c.count, 2);
  const ProcessingResponse *r = c.replies[1];
  assert_int_equal(r->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE);
  const Envoy__Service__ExtProc__V3__ImmediateResponse *im = r->immediate_response;
  assert_int_equal(im->status->code, 403);
  assert_memory_equal(im->body.data, "no entry", 8);
  assert_int_equal(im->grpc_status->status, EXTPROC_GRPC_PERMISSION_DENIED);
  assert_string_equal(im->details, "denied_by_test");
  assert_non_null(find_set(im->headers, "x-reason"));
  assert_null(find_set(im->headers, "x-discarded"));
  /* Envoy sends nothing more; if it did, nothing would be answered. */
  send_phase(req, EXTPROC_RESPONSE_HEADERS, request_headers, 1, NULL, false);
  assert_int_equal(c.count, 2);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static extproc_result failing(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_request_fail(req, EXTPROC_GRPC_OK, "x"), EXTPROC_EINVAL);
  assert_int_equal(extproc_request_fail(req, EXTPROC_GRPC_UNAVAILABLE, "backend down"), 0);
  return EXTPROC_FAIL;
}

static void test_error_policies(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "failer"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, failing);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_int_equal(c.count, 0);
  assert_true(c.finished);
  assert_int_equal(c.status, EXTPROC_GRPC_UNAVAILABLE);
  assert_string_equal(c.message, "backend down");
  stream_close(req);
  capture_free(&c);

  assert_int_equal(extproc_processor_set_error_policy(p, EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, 42),
                   EXTPROC_EINVAL);
  assert_int_equal(extproc_processor_set_error_policy(p, EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, 503),
                   0);
  req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_int_equal(c.count, 1);
  assert_false(c.finished);
  assert_int_equal(c.replies[0]->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE);
  assert_int_equal(c.replies[0]->immediate_response->status->code, 503);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static int failing_init(extproc_request *req, void *ctx) {
  (void)req, (void)ctx;
  observed.inits++;
  return -1;
}

static void never_cleanup(void *ctx) {
  (void)ctx;
  fail_msg("cleanup after a failed init");
}

static void test_failed_context_init(void **state) {
  (void)state;
  memset(&observed, 0, sizeof(observed));
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "bad-init"), 0);
  extproc_processor_set_context(p, 16, failing_init, never_cleanup);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, record);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_int_equal(observed.inits, 1);
  assert_int_equal(observed.calls[EXTPROC_REQUEST_HEADERS], 0);
  assert_int_equal(c.status, EXTPROC_GRPC_INTERNAL);
  assert_string_equal(c.message, "context_init failed");
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static void test_observability_mode_never_replies(void **state) {
  (void)state;
  extproc_processor *p = recording_processor();
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, deny); /* even an immediate response */
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, NULL);
  send_request(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false, true);
  assert_int_equal(observed.calls[EXTPROC_REQUEST_HEADERS], 1);
  assert_int_equal(c.count, 0);
  stream_on_half_close(req);
  assert_int_equal(c.status, EXTPROC_GRPC_OK);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

/* ---- Deferred answers ------------------------------------------------------------------- */

typedef struct mailbox {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  extproc_request *posted;
} mailbox;

static void mailbox_post(void *data, extproc_request *req) {
  mailbox *m = data;
  pthread_mutex_lock(&m->lock);
  m->posted = req;
  pthread_cond_signal(&m->cond);
  pthread_mutex_unlock(&m->lock);
}

static extproc_request *mailbox_take(mailbox *m) {
  pthread_mutex_lock(&m->lock);
  while (!m->posted)
    pthread_cond_wait(&m->cond, &m->lock);
  extproc_request *req = m->posted;
  m->posted = NULL;
  pthread_mutex_unlock(&m->lock);
  return req;
}

static extproc_request *deferred_req;

static extproc_result defer(extproc_request *req, void *ctx) {
  (void)ctx;
  deferred_req = req;
  return EXTPROC_DEFER;
}

static void *worker_thread(void *arg) {
  extproc_request *req = arg;
  /* Another thread records the answer, then hands the request back. */
  assert_int_equal(extproc_header_set(req, "x-async", "done"), 0);
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), 0);
  return NULL;
}

static void test_deferred_answer_from_another_thread(void **state) {
  (void)state;
  mailbox m = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL};
  size_t deferred = 0;
  const stream_poster poster = {.post = mailbox_post, .data = &m, .deferred = &deferred};
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "async"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, defer);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, &poster);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  assert_int_equal(c.count, 0);
  assert_true(stream_busy(req));
  assert_int_equal(deferred, 1);
  assert_int_equal(extproc_request_resume(req, EXTPROC_DEFER), EXTPROC_EINVAL);
  /* Envoy's next message and its half-close wait behind the deferred one. */
  const char *const response[] = {":status", "200"};
  send_phase(req, EXTPROC_RESPONSE_HEADERS, response, 1, NULL, false);
  stream_on_half_close(req);
  assert_int_equal(c.count, 0);
  assert_false(c.finished);

  pthread_t t;
  pthread_create(&t, NULL, worker_thread, deferred_req);
  extproc_request *back = mailbox_take(&m); /* the loop thread's side */
  pthread_join(t, NULL);
  assert_ptr_equal(back, req);
  stream_resume_on_loop(back);
  assert_int_equal(deferred, 0);
  assert_int_equal(c.resumed, 1);
  assert_int_equal(c.count, 2);
  assert_int_equal(c.replies[0]->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS);
  assert_non_null(find_set(c.replies[0]->request_headers->response->header_mutation, "x-async"));
  assert_int_equal(c.replies[1]->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS);
  assert_true(c.finished);
  assert_int_equal(c.status, EXTPROC_GRPC_OK);
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), EXTPROC_ESTATE);
  stream_close(req);
  capture_free(&c);
  extproc_processor_free(p);
}

static void test_cancelled_while_deferred(void **state) {
  (void)state;
  mailbox m = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL};
  size_t deferred = 0;
  const stream_poster poster = {.post = mailbox_post, .data = &m, .deferred = &deferred};
  extproc_processor *p = recording_processor();
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, defer);
  capture c = {0};
  extproc_request *req = stream_open(p, &sink, &c, &poster);
  send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
  send_phase(req, EXTPROC_REQUEST_BODY, NULL, 0, "queued", true);
  stream_close(req); /* Envoy reset the stream: the request must outlive it until resumed */
  assert_int_equal(observed.cleanups, 0);
  assert_int_equal(extproc_request_resume(req, EXTPROC_FAIL), 0);
  stream_resume_on_loop(mailbox_take(&m)); /* frees it: ASan checks */
  assert_int_equal(observed.cleanups, 1);
  assert_int_equal(observed.calls[EXTPROC_REQUEST_BODY], 0); /* the queued body was dropped */
  assert_int_equal(c.count, 0);
  assert_false(c.finished);
  assert_int_equal(deferred, 0);
  capture_free(&c);
  extproc_processor_free(p);
}

static extproc_result resume_self(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_header_set(req, "x-early", "self"), 0);
  /* Without the declaration a resume inside the callback says nothing will be deferred. */
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), EXTPROC_ESTATE);
  assert_int_equal(extproc_request_defer(req), 0);
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), 0);
  assert_int_equal(extproc_request_resume(req, EXTPROC_CONTINUE), EXTPROC_ESTATE); /* once */
  return EXTPROC_DEFER;
}

static extproc_result resume_from_racing_thread(extproc_request *req, void *ctx) {
  (void)ctx;
  pthread_t t;
  assert_int_equal(extproc_request_defer(req), 0);
  pthread_create(&t, NULL, worker_thread, req);
  /* The worker resumes while this callback still runs: the hand-off must not be lost. */
  pthread_join(t, NULL);
  return EXTPROC_DEFER;
}

/* A resume that comes before the callback returns EXTPROC_DEFER answers at once. */
static void test_resume_before_the_callback_returns(void **state) {
  (void)state;
  mailbox m = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL};
  size_t deferred = 0;
  const stream_poster poster = {.post = mailbox_post, .data = &m, .deferred = &deferred};
  const extproc_phase_fn fns[] = {resume_self, resume_from_racing_thread};
  const char *const header[] = {"x-early", "x-async"};
  for (int i = 0; i < 2; i++) {
    extproc_processor *p;
    assert_int_equal(extproc_processor_new(&p, "early"), 0);
    extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, fns[i]);
    capture c = {0};
    extproc_request *req = stream_open(p, &sink, &c, &poster);
    send_phase(req, EXTPROC_REQUEST_HEADERS, request_headers, N_REQUEST_HEADERS, NULL, false);
    assert_int_equal(c.count, 1);
    assert_false(stream_busy(req));
    assert_int_equal(deferred, 0);
    assert_null(m.posted); /* nothing had to travel back through the loop */
    assert_non_null(find_set(c.replies[0]->request_headers->response->header_mutation, header[i]));
    stream_close(req);
    capture_free(&c);
    extproc_processor_free(p);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_header_mutations_are_raw_and_consistent),
      cmocka_unit_test(test_all_phases_in_order_with_one_reply_each),
      cmocka_unit_test(test_out_of_order_phases_fail_the_stream),
      cmocka_unit_test(test_skipped_phases_are_fine),
      cmocka_unit_test(test_malformed_and_empty_messages),
      cmocka_unit_test(test_immediate_response),
      cmocka_unit_test(test_error_policies),
      cmocka_unit_test(test_failed_context_init),
      cmocka_unit_test(test_observability_mode_never_replies),
      cmocka_unit_test(test_deferred_answer_from_another_thread),
      cmocka_unit_test(test_cancelled_while_deferred),
      cmocka_unit_test(test_resume_before_the_callback_returns),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
