/* The transport over real sockets: an in-process server and a blocking HTTP/2 gRPC client
 * (h2_client) playing Envoy's side. Covers the Process round trip over TCP, IPv6 and unix
 * sockets, message reassembly from 1-byte DATA frames, unknown methods, message-size limits,
 * malformed and out-of-order messages, health checks, Envoy-style stream resets at volume, and
 * clients that vanish mid-stream; also the hardening: non-POST and non-protobuf requests refused
 * at the HTTP level, unary health checks, no body after headers that ended the stream, unix
 * socket paths that are not sockets left alone and our socket file removed, and hostile Struct
 * nesting refused over the wire. Leaks are caught by running the suite under ASan/LSan. (The
 * flow-control budgets are in test_limits.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"
#include "extproc/server.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "h2_client.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
#define HEALTH_PATH "/grpc.health.v1.Health/Check"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;
typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Config__Core__V3__HeaderValue HeaderValue;

enum { MAX_CLIENTS = 4, WAIT_MS = 10000 };

/* ---- Time ------------------------------------------------------------------------------ */

/* ---- The processor --------------------------------------------------------------------- */

/* What the last request_headers callback saw, written on the server's loop thread. */
static pthread_mutex_t g_seen_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_seen[256];

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  const extproc_request_info *info = extproc_request_get_info(req);
  pthread_mutex_lock(&g_seen_lock);
  snprintf(g_seen, sizeof(g_seen), "%s %s %s", info->method ? info->method : "-",
           info->path ? info->path : "-", info->request_id ? info->request_id : "-");
  pthread_mutex_unlock(&g_seen_lock);
  return extproc_header_set(req, "x-test", "1") == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  return extproc_header_set(req, "x-test", "1") == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

static void seen_reset(void) {
  pthread_mutex_lock(&g_seen_lock);
  g_seen[0] = '\0';
  pthread_mutex_unlock(&g_seen_lock);
}

static void assert_seen(const char *want) {
  char copy[sizeof(g_seen)];
  pthread_mutex_lock(&g_seen_lock);
  memcpy(copy, g_seen, sizeof(copy));
  pthread_mutex_unlock(&g_seen_lock);
  assert_string_equal(copy, want);
}

/* ---- Fixture: one processor, one server per test, clients freed at the end --------------- */

typedef struct fixture {
  extproc_processor *proc;
  extproc_server *srv;
  int port;
  char unix_path[108];
  h2_client *clients[MAX_CLIENTS];
  size_t client_count;
} fixture;

/* A watchdog for what the client's own timeouts cannot bound (a server that never stops):
 * SIGALRM's default action ends the process, which ctest reports as a failure. */
enum { TEST_WATCHDOG_SECONDS = 120 };

static int setup(void **state) {
  alarm(TEST_WATCHDOG_SECONDS);
  fixture *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  assert_int_equal(extproc_processor_new(&f->proc, "transport-test"), 0);
  if (!f->proc || extproc_processor_on(f->proc, EXTPROC_REQUEST_HEADERS, on_request_headers) ||
      extproc_processor_on(f->proc, EXTPROC_RESPONSE_HEADERS, on_response_headers)) {
    extproc_processor_free(f->proc);
    free(f);
    return -1;
  }
  seen_reset();
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  for (size_t i = 0; i < f->client_count; i++)
    h2_client_free(f->clients[i]);
  if (f->srv) {
    extproc_server_stop(f->srv);
    extproc_server_wait(f->srv);
    extproc_server_free(f->srv);
  }
  extproc_processor_free(f->proc);
  if (f->unix_path[0]) unlink(f->unix_path);
  free(f);
  alarm(0);
  return 0;
}

/* Creates, binds and starts the server (one worker). Returns the listen result, so a caller
 * can skip when an address family is unavailable; asserts everything else. */
static int start_server(fixture *f, const char *address, size_t max_message_bytes) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.drain_delay_ms = 0; /* tests of the drain set their own */
  if (max_message_bytes) opts.max_message_bytes = max_message_bytes;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  assert_non_null(f->srv);
  const int index = extproc_server_listen(f->srv, address, f->proc);
  if (index < 0) return index;
  f->port = extproc_server_port(f->srv, index);
  assert_int_equal(extproc_server_start(f->srv), 0);
  return 0;
}

static void start_tcp_server(fixture *f, size_t max_message_bytes) {
  assert_int_equal(start_server(f, "127.0.0.1:0", max_message_bytes), 0);
  assert_true(f->port > 0);
}

static h2_client *track(fixture *f, h2_client *c) {
  assert_non_null(c);
  assert_true(f->client_count < MAX_CLIENTS);
  f->clients[f->client_count++] = c;
  return c;
}

static h2_client *connect_tcp(fixture *f, const char *host) {
  return track(f, h2_client_connect_tcp(host, f->port));
}

/* Frees a client now (e.g. after closing its socket) and drops it from the fixture. */
static void untrack(fixture *f, h2_client *c) {
  for (size_t i = 0; i < f->client_count; i++) {
    if (f->clients[i] != c) continue;
    f->clients[i] = f->clients[--f->client_count];
    h2_client_free(c);
    return;
  }
  fail_msg("client not tracked");
}

/* Waits (bounded) until the server has no open stream. */
static void wait_server_idle(const extproc_server *srv) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (extproc_server_open_streams(srv) != 0) {
    if (now_ms() > deadline)
      fail_msg("server still has %llu open streams after %d ms",
               (unsigned long long)extproc_server_open_streams(srv), WAIT_MS);
    sleep_ms(1);
  }
}

/* ---- Building requests ----------------------------------------------------------------- */

typedef struct packed {
  uint8_t *data;
  size_t len;
} packed;

static packed pack(const ProtobufCMessage *msg) {
  packed p = {.len = protobuf_c_message_get_packed_size(msg)};
  p.data = malloc(p.len ? p.len : 1);
  assert_non_null(p.data);
  protobuf_c_message_pack(msg, p.data);
  return p;
}

typedef struct kv {
  const char *key, *value;
} kv;

/* A ProcessingRequest carrying request_headers (or response_headers), with every value in
 * raw_value as Envoy sends it. */
static packed pack_headers(bool response, const kv *headers, size_t n, bool end_of_stream) {
  HeaderValue values[8];
  HeaderValue *ptrs[8];
  assert_true(n <= 8);
  for (size_t i = 0; i < n; i++) {
    envoy__config__core__v3__header_value__init(&values[i]);
    values[i].key = (char *)headers[i].key;
    values[i].raw_value.data = (uint8_t *)headers[i].value;
    values[i].raw_value.len = strlen(headers[i].value);
    ptrs[i] = &values[i];
  }
  Envoy__Config__Core__V3__HeaderMap map = ENVOY__CONFIG__CORE__V3__HEADER_MAP__INIT;
  map.headers = ptrs;
  map.n_headers = n;
  Envoy__Service__ExtProc__V3__HttpHeaders hh = ENVOY__SERVICE__EXT_PROC__V3__HTTP_HEADERS__INIT;
  hh.headers = &map;
  hh.end_of_stream = end_of_stream;
  ProcessingRequest req = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  if (response) {
    req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS;
    req.response_headers = &hh;
  } else {
    req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
    req.request_headers = &hh;
  }
  return pack(&req.base);
}

static const kv REQUEST_HEADERS[] = {{":method", "GET"}, {":path", "/x"}, {"x-request-id", "abc"}};
static const kv RESPONSE_HEADERS[] = {{":status", "200"}, {"content-type", "text/plain"}};

static packed pack_request_headers(void) { return pack_headers(false, REQUEST_HEADERS, 3, false); }

static packed pack_response_headers(void) { return pack_headers(true, RESPONSE_HEADERS, 2, true); }

static packed pack_request_body(size_t body_len) {
  uint8_t *body = malloc(body_len);
  assert_non_null(body);
  memset(body, 'b', body_len);
  Envoy__Service__ExtProc__V3__HttpBody hb = ENVOY__SERVICE__EXT_PROC__V3__HTTP_BODY__INIT;
  hb.body.data = body;
  hb.body.len = body_len;
  hb.end_of_stream = true;
  ProcessingRequest req = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY;
  req.request_body = &hb;
  packed p = pack(&req.base);
  free(body);
  return p;
}

static void send_packed(h2_client *c, int32_t id, packed p, size_t frame_bytes) {
  assert_int_equal(h2_client_send_message(c, id, p.data, p.len, frame_bytes), 0);
  free(p.data);
}

/* ---- Checking replies ------------------------------------------------------------------ */

/* The reply to a headers phase: the matching oneof, and a header mutation that sets exactly
 * x-test: 1 in raw_value only, with append=false and OVERWRITE_IF_EXISTS_OR_ADD. */
static void check_headers_reply(const h2_client_msg *m, bool response) {
  ProcessingResponse *r =
      envoy__service__ext_proc__v3__processing_response__unpack(NULL, m->len, m->data);
  assert_non_null(r);
  const Envoy__Service__ExtProc__V3__HeadersResponse *h;
  if (response) {
    assert_int_equal(r->response_case,
                     ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS);
    h = r->response_headers;
  } else {
    assert_int_equal(r->response_case,
                     ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS);
    h = r->request_headers;
  }
  assert_non_null(h);
  assert_non_null(h->response);
  assert_int_equal(h->response->status,
                   ENVOY__SERVICE__EXT_PROC__V3__COMMON_RESPONSE__RESPONSE_STATUS__CONTINUE);
  const Envoy__Service__ExtProc__V3__HeaderMutation *hm = h->response->header_mutation;
  assert_non_null(hm);
  assert_int_equal(hm->n_set_headers, 1);
  assert_int_equal(hm->n_remove_headers, 0);
  const Envoy__Config__Core__V3__HeaderValueOption *opt = hm->set_headers[0];
  assert_non_null(opt->header);
  assert_string_equal(opt->header->key, "x-test");
  assert_int_equal(opt->header->raw_value.len, 1);
  assert_memory_equal(opt->header->raw_value.data, "1", 1);
  assert_true(opt->header->value == NULL || opt->header->value[0] == '\0');
  assert_non_null(opt->append);
  assert_false(opt->append->value);
  assert_int_equal(
      opt->append_action,
      ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__OVERWRITE_IF_EXISTS_OR_ADD);
  assert_null(h->response->body_mutation);
  envoy__service__ext_proc__v3__processing_response__free_unpacked(r, NULL);
}

static void check_grpc_response_headers(const h2_client_stream *s) {
  assert_true(s->headers_received);
  assert_int_equal(s->http_status, 200);
  assert_non_null(s->content_type);
  assert_string_equal(s->content_type, "application/grpc");
}

/* Waits for the stream's end and checks it ended with `grpc_status` (trailers, not a reset
 * before them). */
static const h2_client_stream *expect_status(h2_client *c, int32_t id, int grpc_status) {
  assert_int_equal(h2_client_wait_trailers(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_non_null(s);
  assert_true(s->trailers_received);
  assert_int_equal(s->http_status, 200);
  assert_int_equal(s->grpc_status, grpc_status);
  return s;
}

/* One whole ext_proc exchange on `c`: request_headers, response_headers, half-close, OK.
 * With frame_bytes 1, every message arrives one byte per DATA frame. */
static void round_trip(h2_client *c, size_t frame_bytes) {
  seen_reset();
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  const uint64_t frames_before = h2_client_data_frames_sent(c);
  packed req = pack_request_headers();
  const size_t wire_len = 5 + req.len;
  send_packed(c, id, req, frame_bytes);
  assert_int_equal(h2_client_flush(c), 0);
  const uint64_t frames = h2_client_data_frames_sent(c) - frames_before;
  if (frame_bytes)
    assert_int_equal(frames, (wire_len + frame_bytes - 1) / frame_bytes);
  else
    assert_int_equal(frames, 1);
  assert_int_equal(h2_client_wait_messages(c, id, 1), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  check_grpc_response_headers(s);
  assert_int_equal(s->message_count, 1);
  check_headers_reply(&s->messages[0], false);
  assert_seen("GET /x abc");

  send_packed(c, id, pack_response_headers(), frame_bytes);
  assert_int_equal(h2_client_wait_messages(c, id, 2), 0);
  s = h2_client_get_stream(c, id);
  check_headers_reply(&s->messages[1], true);

  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  s = h2_client_get_stream(c, id);
  assert_true(s->trailers_received);
  assert_false(s->trailers_only);
  assert_int_equal(s->grpc_status, 0);
  assert_null(s->grpc_message);
  assert_false(s->reset_received);
  assert_false(s->framing_error);
  assert_int_equal(s->close_error, NGHTTP2_NO_ERROR);
  assert_int_equal(s->message_count, 2); /* exactly one reply per message */
  assert_int_equal(h2_client_forget_stream(c, id), 0);
  assert_false(h2_client_goaway_received(c, NULL));
}

/* ---- 1. Round trip over TCP ------------------------------------------------------------ */

static void test_round_trip_tcp(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  assert_true(h2_client_max_concurrent_streams(c) >= 1);
  round_trip(c, 0);
  round_trip(c, 1); /* every message one byte per DATA frame */
  round_trip(c, 7); /* frames that straddle the prefix and the message */
  wait_server_idle(f->srv);
  assert_int_equal(extproc_server_total_streams(f->srv), 3);
}

/* Two messages in one DATA frame, and a message that starts in the frame where the previous
 * one ends: the reader must cut them apart. */
static void test_messages_share_frames(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  packed a = pack_request_headers(), b = pack_response_headers();
  const size_t total = 10 + a.len + b.len;
  uint8_t *both = malloc(total);
  assert_non_null(both);
  both[0] = 0;
  both[1] = (uint8_t)(a.len >> 24), both[2] = (uint8_t)(a.len >> 16);
  both[3] = (uint8_t)(a.len >> 8), both[4] = (uint8_t)a.len;
  memcpy(both + 5, a.data, a.len);
  uint8_t *p = both + 5 + a.len;
  p[0] = 0;
  p[1] = (uint8_t)(b.len >> 24), p[2] = (uint8_t)(b.len >> 16);
  p[3] = (uint8_t)(b.len >> 8), p[4] = (uint8_t)b.len;
  memcpy(p + 5, b.data, b.len);
  /* Frames of 13 bytes: boundaries fall inside prefixes and messages alike. */
  assert_int_equal(h2_client_send_raw(c, id, both, total, 13), 0);
  free(both), free(a.data), free(b.data);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_int_equal(s->grpc_status, 0);
  assert_int_equal(s->message_count, 2);
  check_headers_reply(&s->messages[0], false);
  check_headers_reply(&s->messages[1], true);
}

/* ---- 2. IPv6 and unix sockets ---------------------------------------------------------- */

static void test_round_trip_ipv6(void **state) {
  fixture *f = *state;
  if (start_server(f, "[::1]:0", 0) != 0) {
    print_message("IPv6 loopback unavailable; skipping\n");
    skip();
  }
  assert_true(f->port > 0);
  h2_client *c = connect_tcp(f, "::1");
  round_trip(c, 0);
  round_trip(c, 1);
  wait_server_idle(f->srv);
}

static void test_round_trip_unix(void **state) {
  fixture *f = *state;
  static int counter;
  snprintf(f->unix_path, sizeof(f->unix_path), "/tmp/extproc-test-%ld-%d.sock", (long)getpid(),
           ++counter);
  char address[128];
  snprintf(address, sizeof(address), "unix:%s", f->unix_path);
  assert_int_equal(start_server(f, address, 0), 0);
  assert_int_equal(f->port, 0);
  h2_client *c = track(f, h2_client_connect_unix(f->unix_path));
  round_trip(c, 0);
  round_trip(c, 1);
  wait_server_idle(f->srv);
}

/* An address a live server holds is an error for a second one, over TCP (despite the workers'
 * SO_REUSEPORT) and over a unix socket; a stale socket file is replaced. */
static void test_address_in_use(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  extproc_server *second;
  assert_int_equal(extproc_server_new(&second, NULL), 0);
  assert_non_null(second);
  char address[128];
  snprintf(address, sizeof(address), "127.0.0.1:%d", f->port);
  assert_int_equal(extproc_server_listen(second, address, f->proc), EXTPROC_EIO);

  snprintf(f->unix_path, sizeof(f->unix_path), "/tmp/extproc-test-%ld-inuse.sock", (long)getpid());
  snprintf(address, sizeof(address), "unix:%s", f->unix_path);
  unlink(f->unix_path);
  /* A stale file: bound, then its socket closed, so nobody answers there. */
  const int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", f->unix_path);
  assert_int_equal(bind(stale, (struct sockaddr *)&sun, sizeof(sun)), 0);
  close(stale);
  assert_true(extproc_server_listen(second, address, f->proc) >= 0);
  assert_int_equal(extproc_server_start(second), 0);
  extproc_server *third;
  assert_int_equal(extproc_server_new(&third, NULL), 0);
  assert_int_equal(extproc_server_listen(third, address, f->proc), EXTPROC_EIO);
  extproc_server_free(third);
  h2_client *c = track(f, h2_client_connect_unix(f->unix_path));
  round_trip(c, 0); /* the live server was not disturbed */
  untrack(f, c);
  extproc_server_stop_now(second); /* defaults: a drain would only make the test slower */
  extproc_server_wait(second);
  extproc_server_free(second);
}

/* A path that holds a regular file is an error, and the file is left exactly as it was; the
 * socket file a server creates is removed by extproc_server_free. */
static void test_unix_socket_files(void **state) {
  fixture *f = *state;
  char path[108], address[128];
  snprintf(path, sizeof(path), "/tmp/extproc-test-%ld-regular.sock", (long)getpid());
  snprintf(address, sizeof(address), "unix:%s", path);
  static const char contents[] = "not a socket\n";
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  assert_int_equal(fputs(contents, file) >= 0, 1);
  assert_int_equal(fclose(file), 0);
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  assert_non_null(srv);
  const int rv = extproc_server_listen(srv, address, f->proc);
  extproc_server_free(srv);
  struct stat st;
  const int stat_rv = lstat(path, &st);
  char read_back[64] = {0};
  file = fopen(path, "r");
  if (file) {
    const size_t n = fread(read_back, 1, sizeof(read_back) - 1, file);
    read_back[n] = '\0';
    fclose(file);
  }
  unlink(path);
  assert_int_equal(rv, EXTPROC_EIO);
  assert_int_equal(stat_rv, 0);
  assert_true(S_ISREG(st.st_mode));
  assert_string_equal(read_back, contents);

  /* A server's own socket file lives as long as the server. */
  snprintf(f->unix_path, sizeof(f->unix_path), "/tmp/extproc-test-%ld-owned.sock", (long)getpid());
  snprintf(address, sizeof(address), "unix:%s", f->unix_path);
  unlink(f->unix_path);
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  assert_non_null(srv);
  assert_true(extproc_server_listen(srv, address, f->proc) >= 0);
  assert_int_equal(lstat(f->unix_path, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(extproc_server_start(srv), 0);
  h2_client *c = track(f, h2_client_connect_unix(f->unix_path));
  round_trip(c, 0);
  untrack(f, c);
  extproc_server_stop_now(srv); /* defaults: a drain would only make the test slower */
  extproc_server_wait(srv);
  assert_int_equal(lstat(f->unix_path, &st), 0); /* still there until free */
  extproc_server_free(srv);
  errno = 0;
  assert_int_equal(lstat(f->unix_path, &st), -1);
  assert_int_equal(errno, ENOENT);

  /* Likewise for a server that listened but never started. */
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  assert_non_null(srv);
  assert_true(extproc_server_listen(srv, address, f->proc) >= 0);
  assert_int_equal(lstat(f->unix_path, &st), 0);
  extproc_server_free(srv);
  assert_int_equal(lstat(f->unix_path, &st), -1);
}

/* A rolling restart on a unix socket: the next server replaces the socket file once the old one
 * no longer answers there (here: listened but never started, as after its listener closed at a
 * stop); freeing the old server must leave the new one's file, which goes with the new one. */
static void test_unix_socket_of_a_successor_is_left(void **state) {
  fixture *f = *state;
  char address[128];
  snprintf(f->unix_path, sizeof(f->unix_path), "/tmp/extproc-test-%ld-successor.sock",
           (long)getpid());
  snprintf(address, sizeof(address), "unix:%s", f->unix_path);
  unlink(f->unix_path);
  extproc_server *old_srv, *new_srv;
  assert_int_equal(extproc_server_new(&old_srv, NULL), 0);
  assert_true(extproc_server_listen(old_srv, address, f->proc) >= 0);
  assert_int_equal(extproc_server_new(&new_srv, NULL), 0);
  assert_true(extproc_server_listen(new_srv, address, f->proc) >= 0);
  extproc_server_free(old_srv);
  struct stat st;
  assert_int_equal(lstat(f->unix_path, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(extproc_server_start(new_srv), 0);
  h2_client *c = track(f, h2_client_connect_unix(f->unix_path));
  round_trip(c, 0);
  untrack(f, c);
  extproc_server_stop_now(new_srv);
  extproc_server_wait(new_srv);
  extproc_server_free(new_srv);
  assert_int_equal(lstat(f->unix_path, &st), -1);
}

/* ---- 3. Unknown method ----------------------------------------------------------------- */

static void test_unknown_path(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  const int32_t id = h2_client_open_stream(c, "/foo.Bar/Baz");
  assert_true(id > 0);
  const h2_client_stream *s = expect_status(c, id, 12 /* UNIMPLEMENTED */);
  assert_true(s->trailers_only);
  assert_non_null(s->content_type);
  assert_string_equal(s->content_type, "application/grpc");
  assert_non_null(s->grpc_message);
  assert_int_equal(s->message_count, 0);
  /* The server ends the stream without waiting for the client: it resets its side. */
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  assert_true(h2_client_get_stream(c, id)->reset_received);
  assert_int_equal(h2_client_get_stream(c, id)->message_count, 0);
  wait_server_idle(f->srv);
  /* The connection goes on serving. */
  round_trip(c, 0);
  assert_false(h2_client_goaway_received(c, NULL));
  wait_server_idle(f->srv);
}

/* Opens a stream with `method` and `content_type` and expects a bare HTTP refusal: one
 * HEADERS frame with END_STREAM and `http_status`, no gRPC status, no message. */
static void expect_http_refusal(h2_client *c, const char *path, const char *method,
                                const char *content_type, int http_status) {
  const int32_t id = h2_client_open_stream_as(c, path, method, content_type);
  assert_true(id > 0);
  assert_int_equal(h2_client_wait_headers(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_true(s->headers_received);
  if (s->http_status != http_status)
    fail_msg("%s %s with content-type %s: HTTP status %d, expected %d", method, path,
             content_type ? content_type : "(none)", s->http_status, http_status);
  assert_true(s->trailers_only);
  /* The server ends the exchange at once: it resets the client's side too. */
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  assert_true(s->reset_received);
  assert_int_equal(s->grpc_status, -1);
  assert_int_equal(s->message_count, 0);
  assert_int_equal(h2_client_forget_stream(c, id), 0);
}

/* One request_headers exchange on a stream opened with `content_type`: reply, then OK. */
static void exchange_with_content_type(h2_client *c, const char *content_type) {
  const int32_t id = h2_client_open_stream_as(c, PROCESS_PATH, "POST", content_type);
  assert_true(id > 0);
  send_packed(c, id, pack_request_headers(), 0);
  assert_int_equal(h2_client_wait_messages(c, id, 1), 0);
  check_headers_reply(&h2_client_get_stream(c, id)->messages[0], false);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  check_grpc_response_headers(s);
  assert_int_equal(s->grpc_status, 0);
  assert_int_equal(s->message_count, 1);
}

/* gRPC is POST only (405 otherwise), and protobuf-encoded only: content-type application/grpc
 * or application/grpc+proto; anything else, +json included, is 415. */
static void test_http_refusals(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  expect_http_refusal(c, PROCESS_PATH, "GET", "application/grpc", 405);
  expect_http_refusal(c, PROCESS_PATH, "PUT", "application/grpc", 405);
  expect_http_refusal(c, HEALTH_PATH, "GET", "application/grpc", 405);
  expect_http_refusal(c, PROCESS_PATH, "POST", "application/grpc+json", 415);
  expect_http_refusal(c, HEALTH_PATH, "POST", "application/grpc+json", 415);
  expect_http_refusal(c, PROCESS_PATH, "POST", "application/json", 415);
  expect_http_refusal(c, PROCESS_PATH, "POST", NULL, 415);
  wait_server_idle(f->srv);
  assert_int_equal(extproc_server_total_streams(f->srv), 7);
  exchange_with_content_type(c, "application/grpc");
  exchange_with_content_type(c, "application/grpc+proto");
  assert_false(h2_client_goaway_received(c, NULL));
  wait_server_idle(f->srv);
}

/* ---- 4. Message-size limit ------------------------------------------------------------- */

/* A request_headers message padded to exactly `size` bytes. */
static packed pack_request_headers_of_size(size_t size) {
  char *pad = malloc(size + 1);
  assert_non_null(pad);
  for (size_t n = 0; n <= size; n++) {
    memset(pad, 'p', n);
    pad[n] = '\0';
    const kv headers[] = {
        {":method", "GET"}, {":path", "/x"}, {"x-request-id", "abc"}, {"x-pad", pad}};
    packed p = pack_headers(false, headers, 4, false);
    if (p.len == size) {
      free(pad);
      return p;
    }
    free(p.data);
  }
  free(pad);
  fail_msg("cannot pad a request to %zu bytes", size);
  return (packed){0};
}

static void test_oversize_message(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 1024);
  h2_client *c = connect_tcp(f, "127.0.0.1");

  /* A whole 4 KiB message. */
  packed big = pack_request_body(4000);
  assert_true(big.len > 1024);
  const int32_t a = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(a > 0);
  send_packed(c, a, big, 0);
  const h2_client_stream *s = expect_status(c, a, 8 /* RESOURCE_EXHAUSTED */);
  assert_non_null(s->grpc_message);
  assert_non_null(strstr(s->grpc_message, "limit"));
  assert_int_equal(s->message_count, 0);
  check_grpc_response_headers(s);
  if (!s->closed) assert_int_equal(h2_client_half_close(c, a), 0);
  assert_int_equal(h2_client_wait_closed(c, a), 0);

  /* Only the prefix announces 4096 bytes; a few follow, byte by byte, and then nothing. */
  const int32_t b = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(b > 0);
  const uint8_t prefix[5] = {0, 0, 0, 0x10, 0x00};
  assert_int_equal(h2_client_send_raw(c, b, prefix, sizeof(prefix), 1), 0);
  assert_int_equal(h2_client_send_raw(c, b, "0123456789", 10, 1), 0);
  s = expect_status(c, b, 8);
  assert_non_null(s->grpc_message);

  /* A message of exactly the limit is fine. */
  const int32_t d = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(d > 0);
  send_packed(c, d, pack_request_headers_of_size(1024), 0);
  assert_int_equal(h2_client_wait_messages(c, d, 1), 0);
  check_headers_reply(&h2_client_get_stream(c, d)->messages[0], false);
  assert_int_equal(h2_client_half_close(c, d), 0);
  expect_status(c, d, 0);

  /* The same connection still serves normal streams. */
  round_trip(c, 0);
  round_trip(c, 1);
  assert_false(h2_client_goaway_received(c, NULL));
  assert_false(h2_client_disconnected(c));
  wait_server_idle(f->srv);
}

/* ---- 5. Malformed and out-of-order messages -------------------------------------------- */

static void expect_invalid(h2_client *c, const void *msg, size_t len, int grpc_status) {
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  assert_int_equal(h2_client_send_message(c, id, msg, len, 0), 0);
  const h2_client_stream *s = expect_status(c, id, grpc_status);
  assert_non_null(s->grpc_message);
  assert_int_equal(s->message_count, 0);
  if (!s->closed) assert_int_equal(h2_client_reset(c, id, NGHTTP2_CANCEL), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
}

static void test_malformed_messages(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");

  /* Not protobuf: field 31 with the invalid wire type 7. */
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  expect_invalid(c, garbage, sizeof(garbage), 3 /* INVALID_ARGUMENT */);
  /* A truncated message: request_headers announces 100 bytes and carries 2. */
  const uint8_t truncated[] = {0x12, 0x64, 0x0a, 0x00};
  expect_invalid(c, truncated, sizeof(truncated), 3);
  /* Valid protobuf, no phase: empty, and with only observability_mode set. */
  expect_invalid(c, "", 0, 3);
  ProcessingRequest none = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  none.observability_mode = true;
  packed p = pack(&none.base);
  expect_invalid(c, p.data, p.len, 3);
  free(p.data);

  /* request_headers twice: the first is answered, the second fails the stream. */
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  send_packed(c, id, pack_request_headers(), 0);
  assert_int_equal(h2_client_wait_messages(c, id, 1), 0);
  send_packed(c, id, pack_request_headers(), 0);
  const h2_client_stream *s = expect_status(c, id, 9 /* FAILED_PRECONDITION */);
  assert_int_equal(s->message_count, 1);
  check_headers_reply(&s->messages[0], false);
  assert_non_null(s->grpc_message);
  if (!s->closed) assert_int_equal(h2_client_reset(c, id, NGHTTP2_CANCEL), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);

  round_trip(c, 0);
  wait_server_idle(f->srv);
}

/* Headers with end_of_stream say nothing else follows in that direction: a body chunk after
 * them fails the stream with FAILED_PRECONDITION, after the headers' own reply. */
static void expect_body_after_ended_headers(h2_client *c, bool response) {
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  size_t replies = 0;
  if (response) { /* the request side first, complete */
    send_packed(c, id, pack_headers(false, REQUEST_HEADERS, 3, true), 0);
    assert_int_equal(h2_client_wait_messages(c, id, ++replies), 0);
  }
  send_packed(
      c, id,
      pack_headers(response, response ? RESPONSE_HEADERS : REQUEST_HEADERS, response ? 2 : 3, true),
      0);
  assert_int_equal(h2_client_wait_messages(c, id, ++replies), 0);
  check_headers_reply(&h2_client_get_stream(c, id)->messages[replies - 1], response);

  Envoy__Service__ExtProc__V3__HttpBody hb = ENVOY__SERVICE__EXT_PROC__V3__HTTP_BODY__INIT;
  hb.body.data = (uint8_t *)"late";
  hb.body.len = 4;
  hb.end_of_stream = true;
  ProcessingRequest req = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  if (response) {
    req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY;
    req.response_body = &hb;
  } else {
    req.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY;
    req.request_body = &hb;
  }
  send_packed(c, id, pack(&req.base), 0);
  const h2_client_stream *s = expect_status(c, id, 9 /* FAILED_PRECONDITION */);
  assert_int_equal(s->message_count, replies); /* no reply to the body chunk */
  assert_non_null(s->grpc_message);
  if (!s->closed) assert_int_equal(h2_client_reset(c, id, NGHTTP2_CANCEL), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
}

static void test_body_after_end_of_stream(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  expect_body_after_ended_headers(c, false);
  expect_body_after_ended_headers(c, true);
  round_trip(c, 0);
  wait_server_idle(f->srv);
}

/* A stream that ends inside a message is an error, not a silent success. */
static void test_half_close_inside_message(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  const int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  const uint8_t partial[] = {0, 0, 0, 0, 100, 1, 2, 3};
  assert_int_equal(h2_client_send_raw(c, id, partial, sizeof(partial), 0), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  assert_true(s->trailers_received);
  assert_true(s->grpc_status > 0);
  round_trip(c, 0);
  wait_server_idle(f->srv);
}

/* ---- 6. Health ------------------------------------------------------------------------- */

static void health_check(h2_client *c, const char *service, int grpc_status, int serving) {
  const int32_t id = h2_client_open_stream(c, HEALTH_PATH);
  assert_true(id > 0);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  assert_int_equal(h2_client_send_pb(c, id, &req.base, 0), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  const h2_client_stream *s = h2_client_get_stream(c, id);
  check_grpc_response_headers(s);
  assert_true(s->trailers_received);
  assert_int_equal(s->grpc_status, grpc_status);
  if (serving < 0) {
    assert_int_equal(s->message_count, 0);
    return;
  }
  assert_int_equal(s->message_count, 1);
  Grpc__Health__V1__HealthCheckResponse *resp = grpc__health__v1__health_check_response__unpack(
      NULL, s->messages[0].len, s->messages[0].data);
  assert_non_null(resp);
  assert_int_equal(resp->status, serving);
  grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
}

static void test_health(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  health_check(c, "", 0, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  health_check(c, "envoy.service.ext_proc.v3.ExternalProcessor", 0,
               GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  health_check(c, "no.such.Service", 5 /* NOT_FOUND */, -1);
  round_trip(c, 0);
  wait_server_idle(f->srv);
}

/* Check is unary: the reply and grpc-status 0 come after the one request, without waiting for
 * the client's half-close; a stream half-closed without a request is INVALID_ARGUMENT. */
static void test_health_unary(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  h2_client_set_timeout(c, 3000); /* the old, streaming behaviour never answers: fail fast */
  const int32_t id = h2_client_open_stream(c, HEALTH_PATH);
  assert_true(id > 0);
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  assert_int_equal(h2_client_send_pb(c, id, &req.base, 0), 0);
  const h2_client_stream *s = expect_status(c, id, 0);
  check_grpc_response_headers(s);
  assert_false(s->trailers_only);
  assert_null(s->grpc_message);
  assert_int_equal(s->message_count, 1);
  Grpc__Health__V1__HealthCheckResponse *resp = grpc__health__v1__health_check_response__unpack(
      NULL, s->messages[0].len, s->messages[0].data);
  assert_non_null(resp);
  assert_int_equal(resp->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
  /* The server ended its side first: it resets the rest of the stream. */
  assert_int_equal(h2_client_wait_closed(c, id), 0);
  s = h2_client_get_stream(c, id);
  assert_true(s->reset_received);
  assert_int_equal(s->reset_error, NGHTTP2_NO_ERROR);
  assert_int_equal(s->message_count, 1);

  /* Two requests in one go: one answer, the second is dropped. */
  const int32_t twice = h2_client_open_stream(c, HEALTH_PATH);
  assert_true(twice > 0);
  assert_int_equal(h2_client_send_pb(c, twice, &req.base, 0), 0);
  assert_int_equal(h2_client_send_pb(c, twice, &req.base, 0), 0);
  s = expect_status(c, twice, 0);
  assert_int_equal(h2_client_wait_closed(c, twice), 0);
  assert_int_equal(h2_client_get_stream(c, twice)->message_count, 1);

  /* Half-closed with no request. */
  const int32_t empty = h2_client_open_stream(c, HEALTH_PATH);
  assert_true(empty > 0);
  assert_int_equal(h2_client_half_close(c, empty), 0);
  s = expect_status(c, empty, 3 /* INVALID_ARGUMENT */);
  assert_int_equal(s->message_count, 0);
  assert_non_null(s->grpc_message);
  assert_int_equal(h2_client_wait_closed(c, empty), 0);

  round_trip(c, 0);
  wait_server_idle(f->srv);
}

/* ---- 7. Envoy-style resets at volume --------------------------------------------------- */

enum { RESET_STREAMS = 50000, RESET_WINDOW = 100, RESET_MAX_PENDING = 256 * 1024 };

typedef enum reset_mode {
  RESET_BEFORE_REPLY,  /* the RST follows the message at once */
  RESET_AFTER_REPLY,   /* the RST follows the reply, the stream still open both ways */
  RESET_AFTER_HALF_END /* half-close, then the RST, racing the server's trailers */
} reset_mode;

typedef struct reset_slot {
  int32_t id;
  reset_mode mode;
  bool reset_sent;
} reset_slot;

static void test_rapid_resets(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  size_t window = RESET_WINDOW;
  if (h2_client_max_concurrent_streams(c) < window) window = h2_client_max_concurrent_streams(c);
  assert_true(window > 0);

  packed msg = pack_request_headers();
  reset_slot slots[RESET_WINDOW];
  size_t live = 0, opened = 0, done = 0, after_reply = 0;
  const int64_t start = now_ms();
  int64_t last_progress = start;
  while (done < RESET_STREAMS) {
    while (live < window && opened < RESET_STREAMS &&
           h2_client_pending_output(c) < RESET_MAX_PENDING) {
      reset_slot *sl = &slots[live++];
      sl->id = h2_client_open_stream(c, PROCESS_PATH);
      assert_true(sl->id > 0);
      sl->mode = (reset_mode)(opened++ % 3);
      sl->reset_sent = false;
      assert_int_equal(h2_client_send_message(c, sl->id, msg.data, msg.len, 0), 0);
      if (sl->mode == RESET_AFTER_HALF_END) assert_int_equal(h2_client_half_close(c, sl->id), 0);
      if (sl->mode != RESET_AFTER_REPLY) {
        assert_int_equal(h2_client_reset(c, sl->id, NGHTTP2_CANCEL), 0);
        sl->reset_sent = true;
      }
    }
    const bool can_open = live < window && opened < RESET_STREAMS;
    uint32_t goaway_error = 0;
    const int polled = h2_client_poll(c, can_open ? 0 : 100);
    if (h2_client_goaway_received(c, &goaway_error))
      fail_msg("GOAWAY (error %u) after %zu streams", goaway_error, opened);
    assert_true(polled >= 0);
    for (size_t i = 0; i < live;) {
      reset_slot *sl = &slots[i];
      const h2_client_stream *s = h2_client_get_stream(c, sl->id);
      assert_non_null(s);
      if (!sl->reset_sent && s->message_count > 0 && !s->closed) {
        assert_int_equal(h2_client_reset(c, sl->id, NGHTTP2_CANCEL), 0);
        sl->reset_sent = true;
        after_reply++;
      }
      if (!s->closed) {
        i++;
        continue;
      }
      /* The server never ends a stream on its own here: every close is our reset. */
      assert_true(sl->reset_sent);
      assert_false(s->reset_received);
      assert_int_equal(h2_client_forget_stream(c, sl->id), 0);
      slots[i] = slots[--live];
      done++;
      last_progress = now_ms();
    }
    if (now_ms() - last_progress > WAIT_MS)
      fail_msg("no stream finished for %d ms (%zu of %d done)", WAIT_MS, done, RESET_STREAMS);
  }
  free(msg.data);
  const int64_t elapsed = now_ms() - start;
  assert_int_equal(after_reply, (RESET_STREAMS + 1) / 3);

  /* The connection is still fine: one more complete exchange. */
  round_trip(c, 0);
  assert_false(h2_client_goaway_received(c, NULL));
  assert_false(h2_client_disconnected(c));
  wait_server_idle(f->srv);
  assert_true(extproc_server_total_streams(f->srv) >= RESET_STREAMS + 1);
  print_message("%d reset streams in %lld ms\n", RESET_STREAMS, (long long)elapsed);
}

/* ---- 8. Clients that vanish ------------------------------------------------------------ */

static void abrupt_disconnect(fixture *f, bool tcp_reset) {
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");
  /* Mid-message: the prefix announces 100 bytes, 10 follow. */
  const int32_t a = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(a > 0);
  const uint8_t partial[15] = {0, 0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  assert_int_equal(h2_client_send_raw(c, a, partial, sizeof(partial), 0), 0);
  /* Mid-exchange: request_headers answered, response_headers never sent. */
  const int32_t b = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(b > 0);
  send_packed(c, b, pack_request_headers(), 0);
  assert_int_equal(h2_client_wait_messages(c, b, 1), 0);
  /* Just opened. */
  const int32_t d = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(d > 0);
  assert_int_equal(h2_client_wait_headers(c, d), 0);
  /* The server processes a connection's frames in order, so all three are open now. */
  assert_int_equal(extproc_server_open_streams(f->srv), 3);

  h2_client_close_socket(c, tcp_reset);
  untrack(f, c);
  wait_server_idle(f->srv);

  /* The server is still up. */
  h2_client *c2 = connect_tcp(f, "127.0.0.1");
  round_trip(c2, 0);
  wait_server_idle(f->srv);
}

static void test_abrupt_close(void **state) { abrupt_disconnect(*state, false); }

static void test_abrupt_tcp_reset(void **state) { abrupt_disconnect(*state, true); }

/* ---- 9. Hostile nesting --------------------------------------------------------------- */

static void test_deep_nesting(void **state) {
  fixture *f = *state;
  start_tcp_server(f, 0);
  h2_client *c = connect_tcp(f, "127.0.0.1");

  /* A shallow one is an ordinary request. */
  uint8_t *start;
  size_t len;
  int32_t id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  uint8_t *buf = nested_attributes(8, &start, &len);
  int rv = h2_client_send_message(c, id, start, len, 0);
  free(buf);
  assert_int_equal(rv, 0);
  assert_int_equal(h2_client_wait_messages(c, id, 1), 0);
  assert_int_equal(h2_client_half_close(c, id), 0);
  expect_status(c, id, 0);

  id = h2_client_open_stream(c, PROCESS_PATH);
  assert_true(id > 0);
  buf = nested_attributes(5000, &start, &len);
  rv = h2_client_send_message(c, id, start, len, 0);
  free(buf);
  assert_int_equal(rv, 0);
  const h2_client_stream *s = expect_status(c, id, 8 /* RESOURCE_EXHAUSTED */);
  assert_int_equal(s->message_count, 0);
  assert_non_null(s->grpc_message);
  if (!s->closed) assert_int_equal(h2_client_reset(c, id, NGHTTP2_CANCEL), 0);
  assert_int_equal(h2_client_wait_closed(c, id), 0);

  /* The server goes on, on this connection and on a new one. */
  round_trip(c, 0);
  assert_false(h2_client_goaway_received(c, NULL));
  round_trip(connect_tcp(f, "127.0.0.1"), 0);
  wait_server_idle(f->srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_round_trip_tcp, setup, teardown),
      cmocka_unit_test_setup_teardown(test_messages_share_frames, setup, teardown),
      cmocka_unit_test_setup_teardown(test_round_trip_ipv6, setup, teardown),
      cmocka_unit_test_setup_teardown(test_round_trip_unix, setup, teardown),
      cmocka_unit_test_setup_teardown(test_address_in_use, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unix_socket_of_a_successor_is_left, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unix_socket_files, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_path, setup, teardown),
      cmocka_unit_test_setup_teardown(test_http_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oversize_message, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_messages, setup, teardown),
      cmocka_unit_test_setup_teardown(test_body_after_end_of_stream, setup, teardown),
      cmocka_unit_test_setup_teardown(test_half_close_inside_message, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_unary, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rapid_resets, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abrupt_close, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abrupt_tcp_reset, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deep_nesting, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
