/* The transport's input budgets, over real sockets with the h2_client playing Envoy's side.
 *
 * The server never refuses data the peer was allowed to send; it pushes back by holding
 * flow-control credit (connection.c, may_take_input):
 *  - incomplete messages buffered over all streams of a connection beyond 2 x max_message_bytes
 *    are not credited, except on the stream with the most buffered, which still completes;
 *  - once more than 4 MiB of replies are queued and unread, no stream is credited.
 * Each test measures how far a client gets before its windows run out, checks it against the
 * bound the code implies (without the budget the client would send everything it queued), then
 * lets the exchange finish and checks that nothing deadlocks and every reply arrives. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "testing/envoy_request.h"
#include "transport/grpc_frame.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;

/* The server's budgets (connection.c). */
enum { OUTPUT_BUDGET_BYTES = 4 << 20, PARTIAL_BUDGET_FACTOR = 2 };
enum { WAIT_MS = 10000, QUIET_MS = 300, TEST_WATCHDOG_SECONDS = 60 };

/* ---- The processor --------------------------------------------------------------------- */

/* Every request_body reply replaces the chunk with REPLY_BODY_BYTES bytes that start with the
 * chunk itself: small requests, large replies (so the output budget fills after a few hundred
 * messages), and each reply says which request it answers. */
enum { REPLY_BODY_BYTES = 4096 };

static extproc_result amplify_body(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  uint8_t out[REPLY_BODY_BYTES];
  memset(out, '.', sizeof(out));
  memcpy(out, body, len < sizeof(out) ? len : sizeof(out));
  return extproc_body_replace(req, out, sizeof(out)) == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

/* ---- Fixture --------------------------------------------------------------------------- */

typedef struct fixture {
  extproc_processor *proc;
  extproc_server *srv;
  int port;
  h2_client *client;
  uint8_t *buf; /* the test's input, freed by teardown even when an assertion fails */
} fixture;

static int setup(void **state) {
  alarm(TEST_WATCHDOG_SECONDS); /* SIGALRM's default action fails the run */
  fixture *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  assert_int_equal(extproc_processor_new(&f->proc, "limits-test"), 0);
  if (!f->proc || extproc_processor_on(f->proc, EXTPROC_REQUEST_BODY, amplify_body) != 0) {
    extproc_processor_free(f->proc);
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  h2_client_free(f->client);
  free(f->buf);
  if (f->srv) {
    extproc_server_stop(f->srv);
    extproc_server_wait(f->srv);
    extproc_server_free(f->srv);
  }
  extproc_processor_free(f->proc);
  free(f);
  alarm(0);
  return 0;
}

/* One worker, so the client's one connection is the only one on its loop. */
static void start_server(fixture *f, size_t max_message_bytes, uint32_t initial_window_bytes) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.drain_delay_ms = 0;
  opts.max_message_bytes = max_message_bytes;
  opts.initial_window_bytes = initial_window_bytes;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  assert_non_null(f->srv);
  const int index = extproc_server_listen(f->srv, "127.0.0.1:0", f->proc);
  assert_true(index >= 0);
  f->port = extproc_server_port(f->srv, index);
  assert_true(f->port > 0);
  assert_int_equal(extproc_server_start(f->srv), 0);
  f->client = h2_client_connect_tcp("127.0.0.1", f->port);
  assert_non_null(f->client);
}

static void wait_server_idle(const extproc_server *srv) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (extproc_server_open_streams(srv) != 0) {
    if (now_ms() > deadline)
      fail_msg("server still has %llu open streams after %d ms",
               (unsigned long long)extproc_server_open_streams(srv), WAIT_MS);
    sleep_ms(1);
  }
}

/* Runs the client until flow control stops it: nothing moved for QUIET_MS, nothing waits in
 * the client's socket buffer, and each of the `n` streams has either sent everything queued or
 * has no window left. A slow server only makes this wait longer (bounded by WAIT_MS). */
static void wait_stalled(h2_client *c, const int32_t *ids, size_t n) {
  const int64_t deadline = now_ms() + WAIT_MS;
  for (;;) {
    assert_int_equal(h2_client_wait_quiet(c, QUIET_MS), 0);
    bool stalled = h2_client_pending_output(c) == 0;
    for (size_t i = 0; i < n && stalled; i++)
      stalled = h2_client_unsent_bytes(c, ids[i]) == 0 || h2_client_send_window(c, ids[i]) == 0;
    if (stalled) return;
    if (now_ms() > deadline) fail_msg("the client neither stalls nor finishes");
  }
}

/* ---- Messages -------------------------------------------------------------------------- */

/* Appends one gRPC-framed message (prefix and `m` encoded) at `out`; returns the bytes written. */
static size_t frame_message(uint8_t *out, const envoy_request *m) {
  assert_non_null(m);
  const size_t len = protobuf_c_message_get_packed_size(&m->base);
  grpc_write_prefix(out, (uint32_t)len);
  protobuf_c_message_pack(&m->base, out + GRPC_PREFIX_BYTES);
  return GRPC_PREFIX_BYTES + len;
}

/* A framed request_body message (end_of_stream set) whose ProcessingRequest is exactly `size`
 * bytes, so its prefix announces `size`. Returns a malloc'd buffer of GRPC_PREFIX_BYTES + size. */
static uint8_t *framed_body_of_size(size_t size) {
  uint8_t *body = malloc(size), *framed = NULL;
  assert_non_null(body);
  memset(body, 'b', size);
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  for (size_t body_len = size - 16; body_len < size && !framed; body_len++) {
    const envoy_request *m = envoy_request_body(&a, EXTPROC_REQUEST_BODY, body, body_len, true);
    assert_non_null(m);
    if (protobuf_c_message_get_packed_size(&m->base) != size) continue;
    framed = malloc(GRPC_PREFIX_BYTES + size);
    assert_non_null(framed);
    assert_int_equal(frame_message(framed, m), GRPC_PREFIX_BYTES + size);
  }
  arena_free(&a);
  free(body);
  if (!framed) fail_msg("no request_body message of exactly %zu bytes", size);
  return framed;
}

/* The request_headers message that opens an exchange (end_of_stream false: a body follows). */
static size_t frame_request_headers(uint8_t *out) {
  static const char *const headers[] = {":method", "POST"};
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  const size_t n =
      frame_message(out, envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, headers, 1, false));
  arena_free(&a);
  return n;
}

/* A small request_body chunk that names itself: "chunk-%08zu" and padding. */
enum { CHUNK_BYTES = 64, CHUNK_WIRE_MAX = 128 };

static size_t frame_chunk(uint8_t *out, size_t seq, bool end_of_stream) {
  char body[CHUNK_BYTES + 1];
  memset(body, 'c', CHUNK_BYTES);
  snprintf(body, sizeof(body), "chunk-%08zu", seq);
  body[strlen(body)] = '-';
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  const envoy_request *m =
      envoy_request_body(&a, EXTPROC_REQUEST_BODY, body, CHUNK_BYTES, end_of_stream);
  assert_non_null(m);
  assert_true(GRPC_PREFIX_BYTES + protobuf_c_message_get_packed_size(&m->base) <= CHUNK_WIRE_MAX);
  const size_t n = frame_message(out, m);
  arena_free(&a);
  return n;
}

/* Checks that `m` is the reply to request_body chunk `seq`: CONTINUE, the body replaced by
 * REPLY_BODY_BYTES starting with the chunk's name. */
static void check_chunk_reply(const h2_client_msg *m, size_t seq) {
  ProcessingResponse *r =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, m->len, m->data);
  assert_non_null(r);
  assert_int_equal(r->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY);
  const Envoy__Service__ExtProc__V3__CommonResponse *common = r->request_body->response;
  assert_non_null(common);
  assert_non_null(common->body_mutation);
  assert_int_equal(common->body_mutation->mutation_case,
                   ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY);
  assert_int_equal(common->body_mutation->body.len, REPLY_BODY_BYTES);
  char want[32];
  snprintf(want, sizeof(want), "chunk-%08zu-", seq);
  if (memcmp(common->body_mutation->body.data, want, strlen(want)) != 0)
    fail_msg("reply %zu answers %.15s", seq, (const char *)common->body_mutation->body.data);
  envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
}

/* ---- 1. Partial-message budget --------------------------------------------------------- */

enum {
  PARTIAL_MAX_MESSAGE = 256 * 1024,
  PARTIAL_STREAMS = 12,
  PARTIAL_WINDOW = 64 * 1024, /* the server's initial stream window */
};

/* Twelve streams each announce a 256 KiB message and send all of it but the last byte, as fast
 * as the server's windows allow. The server credits incomplete-message bytes only while the
 * connection buffers at most 2 x 256 KiB of them, and past that only the stream with the most
 * buffered. So a stream receives at most what was credited to it plus its initial window:
 *   sent <= 2 x max_message (credited under the budget)
 *         + one whole message but its last byte (credited to the favoured stream)
 *         + streams x initial window (received, never credited)
 * where without the budget every stream would send its whole message. Then the last bytes go
 * out; every message must still complete (nothing may wait on credit that never comes). */
/* Past max_open_streams over the whole server, a new stream is refused at once with
 * REFUSED_STREAM (nothing of it processed), and one more is served once a stream closes. */
static void test_open_streams_beyond_the_limit_are_refused(void **state) {
  fixture *f = *state;
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  opts.drain_delay_ms = 0;
  opts.max_open_streams = 3;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  const int index = extproc_server_listen(f->srv, "127.0.0.1:0", f->proc);
  assert_true(index >= 0);
  assert_int_equal(extproc_server_start(f->srv), 0);
  f->client = h2_client_connect_tcp("127.0.0.1", extproc_server_port(f->srv, index));
  assert_non_null(f->client);
  int32_t open[3];
  for (int i = 0; i < 3; i++) {
    open[i] = h2_client_open_stream(f->client, PROCESS_PATH);
    assert_int_equal(h2_client_wait_headers(f->client, open[i]), 0); /* the server answered */
  }
  const int32_t refused = h2_client_open_stream(f->client, PROCESS_PATH);
  assert_int_equal(h2_client_wait_closed(f->client, refused), 0);
  const h2_client_stream *r = h2_client_get_stream(f->client, refused);
  assert_true(r->reset_received);
  assert_int_equal(r->reset_error, NGHTTP2_REFUSED_STREAM);
  assert_false(r->headers_received);
  assert_int_equal(extproc_server_open_streams(f->srv), 3);
  /* One closes: the next one is served. */
  assert_int_equal(h2_client_reset(f->client, open[0], NGHTTP2_CANCEL), 0);
  const int64_t deadline = now_ms() + WAIT_MS;
  while (extproc_server_open_streams(f->srv) != 2 && now_ms() < deadline)
    assert_true(h2_client_poll(f->client, 10) >= 0);
  const int32_t next = h2_client_open_stream(f->client, PROCESS_PATH);
  assert_int_equal(h2_client_wait_headers(f->client, next), 0);
  assert_false(h2_client_get_stream(f->client, next)->reset_received);
}

static void test_partial_message_budget(void **state) {
  fixture *f = *state;
  start_server(f, PARTIAL_MAX_MESSAGE, PARTIAL_WINDOW);
  h2_client *c = f->client;
  uint8_t *framed = f->buf = framed_body_of_size(PARTIAL_MAX_MESSAGE);
  const size_t wire = GRPC_PREFIX_BYTES + PARTIAL_MAX_MESSAGE;

  int32_t ids[PARTIAL_STREAMS];
  for (size_t i = 0; i < PARTIAL_STREAMS; i++) {
    ids[i] = h2_client_open_stream(c, PROCESS_PATH);
    assert_true(ids[i] > 0);
    assert_int_equal(h2_client_send_raw(c, ids[i], framed, wire - 1, 0), 0);
  }
  const int64_t start = now_ms();
  wait_stalled(c, ids, PARTIAL_STREAMS);

  const uint64_t sent = h2_client_data_bytes_sent(c);
  size_t whole = 0; /* streams that sent all but the last byte */
  for (size_t i = 0; i < PARTIAL_STREAMS; i++) {
    const h2_client_stream *s = h2_client_get_stream(c, ids[i]);
    assert_non_null(s);
    assert_int_equal(s->message_count, 0); /* no message is complete yet */
    assert_false(s->closed);
    if (h2_client_unsent_bytes(c, ids[i]) == 0) {
      assert_int_equal(s->data_bytes_sent, wire - 1);
      whole++;
    } else {
      /* Stalled by flow control, not by the client. */
      assert_int_equal(h2_client_send_window(c, ids[i]), 0);
    }
    print_message("stream %d sent %llu bytes\n", ids[i], (unsigned long long)s->data_bytes_sent);
  }
  const uint64_t budget = PARTIAL_BUDGET_FACTOR * (uint64_t)PARTIAL_MAX_MESSAGE;
  const uint64_t bound = budget + (wire - 1) + (uint64_t)PARTIAL_STREAMS * PARTIAL_WINDOW;
  print_message("sent %llu bytes before stalling (bound %llu, %llu without the budget)\n",
                (unsigned long long)sent, (unsigned long long)bound,
                (unsigned long long)PARTIAL_STREAMS * (wire - 1));
  if (sent > bound)
    fail_msg("the client sent %llu bytes of incomplete messages, more than the bound %llu",
             (unsigned long long)sent, (unsigned long long)bound);
  assert_true(sent > budget); /* the budget itself is credited */
  assert_true(whole >= 1);    /* the favoured stream was fed to the end */
  assert_true(whole < PARTIAL_STREAMS);

  /* The last bytes, from the last stream opened to the first: every message completes. */
  for (size_t i = PARTIAL_STREAMS; i-- > 0;)
    assert_int_equal(h2_client_send_raw(c, ids[i], framed + wire - 1, 1, 0), 0);
  for (size_t i = 0; i < PARTIAL_STREAMS; i++) {
    if (h2_client_wait_messages(c, ids[i], 1) != 0) {
      size_t done = 0;
      for (size_t j = 0; j < PARTIAL_STREAMS; j++)
        done += h2_client_get_stream(c, ids[j])->message_count;
      fail_msg("stream %d got no reply: %zu of %d messages completed, stream sent %llu of %zu "
               "bytes, %zu unsent, send window %lld",
               ids[i], done, PARTIAL_STREAMS,
               (unsigned long long)h2_client_get_stream(c, ids[i])->data_bytes_sent, wire,
               h2_client_unsent_bytes(c, ids[i]), (long long)h2_client_send_window(c, ids[i]));
    }
  }
  for (size_t i = 0; i < PARTIAL_STREAMS; i++) {
    assert_int_equal(h2_client_half_close(c, ids[i]), 0);
    assert_int_equal(h2_client_wait_closed(c, ids[i]), 0);
    const h2_client_stream *s = h2_client_get_stream(c, ids[i]);
    assert_int_equal(s->grpc_status, 0);
    assert_int_equal(s->message_count, 1);
    assert_int_equal(s->data_bytes_sent, wire);
  }
  wait_server_idle(f->srv);
  assert_false(h2_client_goaway_received(c, NULL));
  print_message("%d messages of %d bytes in %lld ms\n", PARTIAL_STREAMS, PARTIAL_MAX_MESSAGE,
                (long long)(now_ms() - start));
}

/* ---- 2. Output budget ------------------------------------------------------------------ */

enum {
  OUTPUT_WINDOW = 64 * 1024, /* the server's initial stream window */
  OUTPUT_CHUNKS = 8000,      /* far more than the budget lets through before the stall */
};

/* A client that never lets the server send (its SETTINGS_INITIAL_WINDOW_SIZE is 0) streams
 * small body chunks, each answered by a 4 KiB reply that can only queue. Once more than 4 MiB
 * of replies wait, the server credits nothing more, so the client gets at most
 *   (chunks whose replies fit in the budget, plus the one that crosses it) x chunk size
 *   + the stream's initial window (received, never credited)
 * onto the wire; without the budget it would send all 8,000 chunks. Then the client opens its
 * window: every reply arrives, in order, and the client goes on to the end of the exchange. */
static void test_output_budget(void **state) {
  fixture *f = *state;
  start_server(f, 0, OUTPUT_WINDOW);
  h2_client *c = f->client;
  assert_int_equal(h2_client_set_initial_window(c, 0), 0);
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);

  uint8_t *input = f->buf = malloc(256 + (size_t)OUTPUT_CHUNKS * CHUNK_WIRE_MAX);
  assert_non_null(input);
  size_t len = frame_request_headers(input);
  const size_t headers_wire = len;
  size_t chunk_wire = 0;
  for (size_t i = 0; i < OUTPUT_CHUNKS; i++) {
    const size_t n = frame_chunk(input + len, i, false);
    assert_true(chunk_wire == 0 || n == chunk_wire); /* all chunks are the same size */
    chunk_wire = n;
    len += n;
  }
  const size_t total_input = len;
  assert_int_equal(h2_client_send_raw(c, id, input, len, 0), 0);
  const int64_t start = now_ms();
  wait_stalled(c, &id, 1);

  const h2_client_stream *s = h2_client_get_stream(c, id);
  const uint64_t sent = s->data_bytes_sent;
  assert_true(s->headers_received); /* HEADERS are not flow-controlled; DATA is */
  assert_int_equal(s->message_count, 0);
  if (h2_client_unsent_bytes(c, id) == 0)
    fail_msg("nothing stopped the client: it sent all %llu bytes with %d replies unread",
             (unsigned long long)sent, OUTPUT_CHUNKS + 1);
  assert_int_equal(h2_client_send_window(c, id), 0); /* stalled by the server, not the client */

  /* Open the window: replies flow, the server credits again, the rest goes out. */
  assert_int_equal(h2_client_set_initial_window(c, 1 << 20), 0);
  assert_int_equal(h2_client_wait_messages(c, id, 1 + OUTPUT_CHUNKS), 0);
  s = h2_client_get_stream(c, id);
  assert_int_equal(s->message_count, 1 + OUTPUT_CHUNKS);
  ProcessingResponse *first = envoy__service__ext_proc__v3__processing_response__unpack(
      NULL, s->messages[0].len, s->messages[0].data);
  assert_non_null(first);
  assert_int_equal(first->response_case,
                   ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS);
  envoy__service__ext_proc__v3__processing_response__free_unpacked(first, NULL);
  size_t reply_wire = SIZE_MAX;
  for (size_t i = 0; i < OUTPUT_CHUNKS; i++) {
    check_chunk_reply(&s->messages[1 + i], i);
    if (GRPC_PREFIX_BYTES + s->messages[1 + i].len < reply_wire)
      reply_wire = GRPC_PREFIX_BYTES + s->messages[1 + i].len;
  }

  /* Replies past the budget are never credited for: at most budget / reply + 1 chunks, plus
   * the window, plus the headers message. */
  const uint64_t bound =
      headers_wire + (OUTPUT_BUDGET_BYTES / reply_wire + 1) * chunk_wire + OUTPUT_WINDOW;
  print_message("sent %llu bytes before stalling (bound %llu, %zu without the budget; "
                "chunk %zu bytes, reply %zu bytes)\n",
                (unsigned long long)sent, (unsigned long long)bound, total_input, chunk_wire,
                reply_wire);
  assert_true(sent <= bound);
  assert_true(sent < total_input);
  /* The budget itself was credited: the client got past its first window. */
  assert_true(sent > OUTPUT_WINDOW);

  /* The exchange goes on: a last chunk, the half-close, OK. */
  uint8_t last[CHUNK_WIRE_MAX];
  const size_t last_len = frame_chunk(last, OUTPUT_CHUNKS, true);
  assert_int_equal(h2_client_send_raw(c, id, last, last_len, 0), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  s = h2_client_get_stream(c, id);
  assert_int_equal(s->grpc_status, 0);
  assert_int_equal(s->message_count, 2 + OUTPUT_CHUNKS);
  check_chunk_reply(&s->messages[1 + OUTPUT_CHUNKS], OUTPUT_CHUNKS);
  wait_server_idle(f->srv);
  print_message("%d chunks and their replies in %lld ms\n", OUTPUT_CHUNKS,
                (long long)(now_ms() - start));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_open_streams_beyond_the_limit_are_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_partial_message_budget, setup, teardown),
      cmocka_unit_test_setup_teardown(test_output_budget, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
