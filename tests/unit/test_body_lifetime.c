/* Body chunks that outlive their input bytes, on a real server through the test HTTP/2 client.
 *
 * The engine reads a body chunk where it arrived (the worker's read buffer, or the stream's
 * reassembly buffer) and copies it only when the phase is answered later: deferred with
 * extproc_request_defer(), returned as EXTPROC_DEFER, or run on the blocking pool. Each
 * processor below reads the chunk after the callback has returned (from another thread) and
 * answers with it uppercased or, in FULL_DUPLEX_STREAMED, with the chunk itself; the client sends
 * each stream's chunks back to back (so later ones wait in the stream's queue), some cut into
 * DATA frames of a few bytes, while a second connection on the same worker keeps its read buffer
 * busy. Every reply must carry exactly the bytes that were sent. */
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

#include "base/arena.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"
#include "testing/envoy_request.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

/* Enough streams and chunks that queued messages, reassembly and the pool all take part, yet
 * the test stays well under a second. */
enum { STREAMS = 24, CHUNKS = 4, CHUNK_MAX = 3000, ANSWER_DELAY_MS = 3 };

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;

/* ---- Processors ------------------------------------------------------------------------ */

static void uppercase_body(extproc_request *req) {
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  uint8_t *out = malloc(len ? len : 1);
  assert_non_null(out);
  for (size_t i = 0; i < len; i++)
    out[i] = body[i] >= 'a' && body[i] <= 'z' ? (uint8_t)(body[i] - 32) : body[i];
  assert_int_equal(extproc_body_replace(req, out, len), 0);
  free(out);
}

typedef struct later {
  extproc_request *req;
  bool uppercase; /* else the chunk goes back unchanged (FULL_DUPLEX_STREAMED echoes it) */
} later;

static void *answer_later(void *arg) {
  later *l = arg;
  sleep_ms(ANSWER_DELAY_MS);
  if (l->uppercase) uppercase_body(l->req);
  assert_int_equal(extproc_request_resume(l->req, EXTPROC_CONTINUE), 0);
  free(l);
  return NULL;
}

static extproc_result defer_to_thread(extproc_request *req, bool uppercase) {
  later *l = malloc(sizeof(*l));
  assert_non_null(l);
  *l = (later){req, uppercase};
  assert_int_equal(extproc_request_defer(req), 0);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, answer_later, l), 0);
  pthread_detach(t);
  return EXTPROC_DEFER;
}

static extproc_result deferred_upper(extproc_request *req, void *ctx) {
  (void)ctx;
  return defer_to_thread(req, true);
}

static extproc_result deferred_echo(extproc_request *req, void *ctx) {
  (void)ctx;
  return defer_to_thread(req, false);
}

static extproc_result blocking_upper(extproc_request *req, void *ctx) {
  (void)ctx;
  sleep_ms(1);
  uppercase_body(req);
  return EXTPROC_CONTINUE;
}

/* ---- The client ------------------------------------------------------------------------ */

static void fill_chunk(uint8_t *p, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (uint8_t)('a' + (seed >> 16) % 26);
  }
}

/* The body a reply carries: body_mutation.body, or a streamed_response's body. */
static bool reply_body(const h2_client_msg *m, uint8_t **out, size_t *len) {
  ProcessingResponse *r =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, m->len, m->data);
  if (!r || !r->request_body || !r->request_body->response ||
      !r->request_body->response->body_mutation) {
    if (r) envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
    return false;
  }
  const Envoy__Service__ExtProc__V3__BodyMutation *bm = r->request_body->response->body_mutation;
  const ProtobufCBinaryData *b = NULL;
  if (bm->mutation_case == ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY)
    b = &bm->body;
  else if (bm->mutation_case ==
           ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE)
    b = &bm->streamed_response->body;
  bool ok = b != NULL;
  if (ok) {
    *len = b->len;
    *out = malloc(b->len ? b->len : 1);
    if (b->len) memcpy(*out, b->data, b->len);
  }
  envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
  return ok;
}

/* Keeps the worker's read buffer busy with other bytes while the tested streams wait. */
typedef struct noise {
  int port;
  atomic_bool stop;
  pthread_t thread;
} noise;

static void *make_noise(void *arg) {
  noise *n = arg;
  h2_client *c = h2_client_connect_tcp("127.0.0.1", n->port);
  assert_non_null(c);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  uint8_t junk[4096];
  memset(junk, 'Z', sizeof(junk));
  static const char *const pairs[] = {":method", "POST", ":path", "/noise"};
  size_t hlen, blen;
  const uint8_t *h = envoy_request_encode(
      &a, envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, pairs, 2, 0), &hlen);
  const uint8_t *b = envoy_request_encode(
      &a, envoy_request_body(&a, EXTPROC_REQUEST_BODY, junk, sizeof(junk), true), &blen);
  while (!atomic_load(&n->stop)) {
    const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(id > 0);
    assert_int_equal(h2_client_send_message(c, id, h, hlen, 0), 0);
    assert_int_equal(h2_client_send_message(c, id, b, blen, 0), 0);
    assert_int_equal(h2_client_wait_messages(c, id, 2), 0);
    assert_int_equal(h2_client_reset(c, id, 8), 0);
    assert_int_equal(h2_client_wait_closed(c, id), 0);
    assert_int_equal(h2_client_forget_stream(c, id), 0);
  }
  arena_free(&a);
  arena_cache_release();
  h2_client_free(c);
  return NULL;
}

/* STREAMS streams of CHUNKS chunks each, every reply checked against what was sent. */
static void run_streams(int port, extproc_body_mode mode, bool uppercase) {
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  static const char *const pairs[] = {":method", "POST", ":path", "/body"};
  envoy_request *hm = envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, pairs, 2, false);
  assert_true(envoy_request_set_protocol_config(&a, hm, mode, EXTPROC_BODY_NONE));
  size_t hlen;
  const uint8_t *h = envoy_request_encode(&a, hm, &hlen);
  static uint8_t sent[STREAMS][CHUNKS][CHUNK_MAX];
  static size_t sent_len[STREAMS][CHUNKS];
  int32_t ids[STREAMS];
  for (int s = 0; s < STREAMS; s++) {
    ids[s] = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(ids[s] > 0);
    assert_int_equal(h2_client_send_message(c, ids[s], h, hlen, 0), 0);
    for (int k = 0; k < CHUNKS; k++) {
      const size_t len = 1 + (size_t)(s * 131 + k * 977) % (CHUNK_MAX - 1);
      fill_chunk(sent[s][k], len, (unsigned)(s * CHUNKS + k + 1));
      sent_len[s][k] = len;
      size_t blen;
      const uint8_t *b = envoy_request_encode(
          &a, envoy_request_body(&a, EXTPROC_REQUEST_BODY, sent[s][k], len, k == CHUNKS - 1),
          &blen);
      /* Every third stream cut into small frames: its chunks are reassembled. */
      assert_int_equal(h2_client_send_message(c, ids[s], b, blen, s % 3 == 0 ? 7 : 0), 0);
    }
    h2_client_half_close(c, ids[s]);
  }
  assert_int_equal(h2_client_flush(c), 0);
  for (int s = 0; s < STREAMS; s++) {
    assert_int_equal(h2_client_wait_trailers(c, ids[s]), 0);
    const h2_client_stream *st = h2_client_get_stream(c, ids[s]);
    assert_int_equal(st->grpc_status, 0);
    /* The headers' reply, then one reply per chunk. */
    assert_int_equal(st->message_count, 1 + CHUNKS);
    for (int k = 0; k < CHUNKS; k++) {
      uint8_t *got = NULL;
      size_t got_len = 0;
      assert_true(reply_body(&st->messages[1 + k], &got, &got_len));
      assert_int_equal(got_len, sent_len[s][k]);
      for (size_t i = 0; i < got_len; i++) {
        const uint8_t want = uppercase ? (uint8_t)(sent[s][k][i] - 32) : sent[s][k][i];
        if (got[i] != want)
          fail_msg("stream %d chunk %d byte %zu: got 0x%02x, want 0x%02x", s, k, i, got[i], want);
      }
      free(got);
    }
  }
  arena_free(&a);
  h2_client_free(c);
}

static void test_bodies_outlive_their_input(void **state) {
  (void)state;
  extproc_processor *deferred, *echo, *blocking;
  assert_int_equal(extproc_processor_new(&deferred, "DeferredUpper"), 0);
  extproc_processor_on(deferred, EXTPROC_REQUEST_BODY, deferred_upper);
  assert_int_equal(extproc_processor_new(&echo, "DeferredEcho"), 0);
  extproc_processor_on(echo, EXTPROC_REQUEST_BODY, deferred_echo);
  assert_int_equal(extproc_processor_new(&blocking, "BlockingUpper"), 0);
  extproc_processor_on(blocking, EXTPROC_REQUEST_BODY, blocking_upper);
  assert_int_equal(extproc_processor_set_blocking(blocking, true), 0);

  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1; /* one read buffer shared by every connection */
  opts.blocking_threads = 2;
  opts.drain_delay_ms = 0; /* nothing to drain: stop at once */
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  const int di = extproc_server_listen(srv, "127.0.0.1:0", deferred);
  const int ei = extproc_server_listen(srv, "127.0.0.1:0", echo);
  const int bi = extproc_server_listen(srv, "127.0.0.1:0", blocking);
  assert_true(di >= 0 && ei >= 0 && bi >= 0);
  assert_int_equal(extproc_server_start(srv), 0);

  noise n = {.port = extproc_server_port(srv, bi)};
  assert_int_equal(pthread_create(&n.thread, NULL, make_noise, &n), 0);
  run_streams(extproc_server_port(srv, di), EXTPROC_BODY_STREAMED, true);
  run_streams(extproc_server_port(srv, di), EXTPROC_BODY_BUFFERED, true);
  run_streams(extproc_server_port(srv, bi), EXTPROC_BODY_STREAMED, true);
  run_streams(extproc_server_port(srv, ei), EXTPROC_BODY_FULL_DUPLEX_STREAMED, false);
  atomic_store(&n.stop, true);
  pthread_join(n.thread, NULL);

  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(deferred);
  extproc_processor_free(echo);
  extproc_processor_free(blocking);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bodies_outlive_their_input, watchdog_setup,
                                      watchdog_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
