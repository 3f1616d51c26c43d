/* The session allocator of idle connections (transport/idle_memory.c): nghttp2's large blocks
 * on pages of their own, given back while idle without changing what the session does. A real
 * nghttp2 server session talks to a real nghttp2 client session in memory; residency is read
 * with mincore(2). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "transport/idle_memory.h"

enum { FRAME_BUFFER_BYTES = 9 + 1 + 16384 };

/* Pages of [p, p + len) in memory now. */
static size_t resident_pages(const void *p, size_t len) {
  const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  const size_t n = (len + pg - 1) / pg;
  unsigned char vec[64];
  assert_true(n <= sizeof(vec));
  assert_int_equal(mincore((void *)p, n * pg, vec), 0);
  size_t in = 0;
  for (size_t i = 0; i < n; i++)
    in += vec[i] & 1;
  return in;
}

/* ---- a client and a server session, in memory ---- */

typedef struct pair {
  nghttp2_session *client, *server;
  int responses; /* response HEADERS the client received */
  int requests;  /* request HEADERS the server received, answered by the test */
  int32_t last_request;
} pair;

static int on_client_frame(nghttp2_session *s, const nghttp2_frame *f, void *user) {
  (void)s;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE)
    ((pair *)user)->responses++;
  return 0;
}

static int on_server_frame(nghttp2_session *s, const nghttp2_frame *f, void *user) {
  (void)s;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    ((pair *)user)->requests++;
    ((pair *)user)->last_request = f->hd.stream_id;
  }
  return 0;
}

static void move(nghttp2_session *from, nghttp2_session *to) {
  for (;;) {
    const uint8_t *data;
    const ssize_t n = nghttp2_session_mem_send(from, &data);
    assert_true(n >= 0);
    if (n == 0) return;
    assert_int_equal(nghttp2_session_mem_recv(to, data, (size_t)n), n);
  }
}

static void pump(pair *p) {
  for (int i = 0; i < 8; i++) {
    move(p->client, p->server);
    move(p->server, p->client);
  }
  assert_false(nghttp2_session_want_write(p->server));
}

static void open_pair(pair *p, idle_pages *pg) {
  memset(p, 0, sizeof(*p));
  nghttp2_session_callbacks *cb;
  assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_client_frame);
  assert_int_equal(nghttp2_session_client_new(&p->client, cb, p), 0);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_server_frame);
  nghttp2_option *opt;
  assert_int_equal(nghttp2_option_new(&opt), 0);
  nghttp2_option_set_no_closed_streams(opt, 1); /* as the server's connections do */
  nghttp2_mem mem = idle_pages_allocator(pg);
  assert_int_equal(nghttp2_session_server_new3(&p->server, cb, p, opt, &mem), 0);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);
  assert_int_equal(nghttp2_submit_settings(p->client, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  assert_int_equal(nghttp2_submit_settings(p->server, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  pump(p);
}

#define NV(n, v)                                                                                   \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0 }

/* One request with END_STREAM, answered with END_STREAM: the stream is gone on both sides. */
static void exchange(pair *p) {
  const nghttp2_nv req[] = {NV(":method", "GET"), NV(":scheme", "http"), NV(":path", "/x"),
                            NV(":authority", "a"), NV("x-long", "a header value to index")};
  const int responses = p->responses;
  assert_true(nghttp2_submit_request(p->client, NULL, req, 5, NULL, NULL) > 0);
  pump(p);
  const nghttp2_nv resp[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
  assert_int_equal(nghttp2_submit_response(p->server, p->last_request, resp, 2, NULL), 0);
  pump(p);
  assert_int_equal(p->responses, responses + 1);
  assert_int_equal(nghttp2_session_get_stream_user_data(p->server, p->last_request), NULL);
}

static void close_pair(pair *p, idle_pages *pg) {
  nghttp2_session_del(p->client);
  nghttp2_session_del(p->server);
  idle_pages_free(pg);
}

static const uint8_t *frame_buffer(const idle_pages *pg) {
  for (unsigned i = 0; i < pg->blocks; i++)
    if (pg->block[i].len == FRAME_BUFFER_BYTES) return pg->block[i].p;
  return NULL;
}

static void test_frame_buffer_goes_back_and_the_session_goes_on(void **state) {
  (void)state;
  idle_pages pg;
  idle_pages_init(&pg);
  assert_non_null(pg.base);
  pair p;
  open_pair(&p, &pg);
  exchange(&p);
  const uint8_t *fb = frame_buffer(&pg);
  assert_non_null(fb); /* nghttp2 asked for its frame buffer, and got pages of ours */
  assert_true(resident_pages(fb, FRAME_BUFFER_BYTES) >= 1);

  assert_true(idle_pages_release(&pg) >= FRAME_BUFFER_BYTES);
  assert_int_equal(resident_pages(fb, FRAME_BUFFER_BYTES), 0);
  for (unsigned i = 0; i < pg.blocks; i++) /* the stream map of a session with no stream too */
    if (pg.block[i].len) assert_int_equal(resident_pages(pg.block[i].p, pg.block[i].len), 0);

  /* The session works as before: requests, responses, a PING and its ACK, HPACK state intact
   * (the client's indexed header refers to the server's table). */
  for (int i = 0; i < 3; i++) {
    exchange(&p);
    idle_pages_release(&pg);
  }
  assert_int_equal(nghttp2_submit_ping(p.server, NGHTTP2_FLAG_NONE, NULL), 0);
  pump(&p);
  assert_int_equal(p.requests, 4);
  assert_int_equal(p.responses, 4);
  close_pair(&p, &pg);
}

static void test_blocks_with_content_stay(void **state) {
  (void)state;
  idle_pages pg;
  idle_pages_init(&pg);
  nghttp2_mem mem = idle_pages_allocator(&pg);
  uint8_t *small = mem.malloc(100, mem.mem_user_data);
  assert_false(small >= pg.base && small < pg.base + pg.size); /* small blocks: malloc's */
  uint8_t *big = mem.calloc(1, 4096, mem.mem_user_data);
  assert_ptr_equal(big, pg.base); /* page-aligned, ours, and zeroed */
  for (size_t i = 0; i < 4096; i++)
    assert_int_equal(big[i], 0);
  big[100] = 7;
  assert_int_equal(idle_pages_release(&pg), 0); /* not a frame buffer, not zeros: kept */
  assert_int_equal(big[100], 7);
  assert_int_equal(resident_pages(big, 4096), 1);
  big[100] = 0;
  assert_int_equal(idle_pages_release(&pg), 4096); /* zeros: given back, still reads zeros */
  assert_int_equal(resident_pages(big, 4096), 0);
  assert_int_equal(big[100], 0);
  /* Growing a block of ours moves it, with its content. */
  big[0] = 9;
  uint8_t *grown = mem.realloc(big, 8192, mem.mem_user_data);
  assert_non_null(grown);
  assert_int_equal(grown[0], 9);
  mem.free(grown, mem.mem_user_data);
  mem.free(small, mem.mem_user_data);
  idle_pages_free(&pg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frame_buffer_goes_back_and_the_session_goes_on),
      cmocka_unit_test(test_blocks_with_content_stay),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
