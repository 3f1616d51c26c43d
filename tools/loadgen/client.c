/* The load itself: M HTTP/2 connections (nghttp2 on libuv), N stream slots spread over them,
 * each slot running ext_proc streams back to back the way Envoy's ext_proc filter does.
 *
 * One thread, one loop. Frames queued while handling events are written once per loop turn
 * per connection (a prepare handle flushes every connection marked dirty), as a server would.
 * A slot is bound to one connection; when a stream ends the slot starts the next one at once
 * (or when --rate allows). Sessions are never deleted from inside their own callbacks: a
 * connection that must go is closed after nghttp2 returns. */
#include <errno.h>
#include <netdb.h>
#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/arena.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "loadgen.h"
#include "testing/envoy_request.h"
#include "transport/grpc_frame.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;

enum {
  READ_BYTES = 64 * 1024,
  WINDOW_BYTES = 256 << 20, /* Envoy's default stream and connection windows */
  RETRY_MS = 100,           /* before reconnecting a lost connection */
  LINGER_MS = 2000,         /* at most this long to say goodbye once the run is over */
  CONNECT_WAIT_S = 5,       /* at least this long for every connection's SETTINGS at the start */
};

static const char GRPC_PATH[] = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";

typedef struct lg_run lg_run;
typedef struct lg_conn lg_conn;

typedef struct lg_slot {
  lg_run *run;
  lg_conn *conn;
  struct lg_slot *next_free;
  bool is_free;
  int32_t stream_id; /* 0: no stream */
  bool measured;
  bool closing; /* half-close: every reply is in, the trailers are due */
  bool eof;     /* half-close: END_STREAM once every message is written */
  int http_status;
  bool grpc_content_type;
  int grpc_status; /* -1 until seen */
  /* Messages [answered, next) are sent and await their replies; [written, next) are still being
   * handed to nghttp2, the one at `written` from out_off on. */
  size_t next, answered, written, out_off;
  size_t duplex_off; /* FULL_DUPLEX_STREAMED: body bytes the streamed pieces have carried */
  uint64_t started_ns, sent_ns, deadline_ns;
  uint8_t *first;     /* this slot's copy of message 0, its x-request-id patched per stream */
  grpc_reader reader; /* the server's gRPC messages, however they were cut into DATA frames */
} lg_slot;

typedef enum { CONN_IDLE, CONN_CONNECTING, CONN_OPEN, CONN_CLOSING } conn_state;

typedef struct wbuf {
  uint8_t *data;
  size_t len, cap;
} wbuf;

struct lg_conn {
  lg_run *run;
  unsigned index;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_connect_t connect_req;
  uv_write_t write_req;
  uv_timer_t retry;
  nghttp2_session *session;
  conn_state state;
  bool ready;    /* the server's SETTINGS arrived */
  bool draining; /* GOAWAY received or stream ids used up: no new streams, then reconnect */
  bool dirty;
  bool writing;
  unsigned open_streams; /* streams nghttp2 has not closed yet */
  lg_slot *free_slots;
  wbuf out, inflight;
  uint8_t rbuf[READ_BYTES];
};

typedef enum { PHASE_CONNECTING, PHASE_WARMUP, PHASE_MEASURE, PHASE_DRAIN, PHASE_DONE } run_phase;

struct lg_run {
  const lg_options *o;
  const lg_script *script;
  lg_results *r;
  uv_loop_t loop;
  uv_prepare_t flusher;
  uv_timer_t phase_timer, rate_timer, tick_timer, hard_timer;
  uv_signal_t sigint;
  lg_conn *conns;
  lg_slot *slots;
  lg_conn **dirty;
  size_t dirty_count;
  unsigned rr; /* round-robin start for new streams */
  bool is_unix;
  char path[108];
  struct sockaddr_storage addr;
  char authority[256];
  nghttp2_nv nva[7];
  nghttp2_session_callbacks *callbacks;
  nghttp2_option *option;
  run_phase phase;
  bool stopping, fatal;
  bool warmed_up; /* a warmup ran */
  unsigned ready_conns;
  uint64_t t_setup_ns, t_first_ns, t_measure_ns, t_end_ns, timeout_ns;
  uint64_t streams_started; /* all, for --rate */
  uint64_t measured_started, measured_inflight;
  uint64_t seed;
  struct rusage ru_before;
  arena reply_arena; /* protobuf-c allocations for one reply, emptied after each */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t now_ns(void) { return uv_hrtime(); }

const char *error_name(lg_error e) {
  static const char *const names[ERR_KINDS] = {"bad_reply", "grpc_status", "reset",
                                               "timeout",   "http",        "aborted",
                                               "goaway",    "disconnect",  "connect"};
  return (unsigned)e < ERR_KINDS ? names[e] : "?";
}

static void note_error(lg_run *run, lg_error kind, bool warmup, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void note_error(lg_run *run, lg_error kind, bool warmup, const char *fmt, ...) {
  lg_results *r = run->r;
  if (warmup) {
    r->warmup_errors++;
  } else {
    r->errors[kind]++;
    r->errors_total++;
  }
  if (r->first_error[0]) return;
  char what[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  snprintf(r->first_error, sizeof(r->first_error), "%s: %s", error_name(kind), what);
}

static bool wbuf_append(wbuf *b, const uint8_t *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 64 * 1024;
    while (cap < b->len + len)
      cap *= 2;
    uint8_t *grown = realloc(b->data, cap);
    if (!grown) return false;
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  return true;
}

static void try_start(lg_run *run);
static void check_finish(lg_run *run);
static void conn_connect(lg_conn *c);
static void conn_close(lg_conn *c);
static void flush(lg_conn *c);
static void stop(lg_run *run);
static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data);

static void mark_dirty(lg_conn *c) {
  if (c->dirty) return;
  c->dirty = true;
  c->run->dirty[c->run->dirty_count++] = c;
}

/* ---- stream life ------------------------------------------------------------------------ */

/* The stream is over for this slot: account for it, let nghttp2 forget the slot, and free the
 * slot for the next stream. Accounting stops once the measurement is over. */
static void stream_end(lg_slot *s, bool ok, lg_error kind, const char *why) {
  lg_run *run = s->run;
  lg_conn *c = s->conn;
  const bool counting = run->phase != PHASE_DONE;
  if (counting && s->measured) {
    run->measured_inflight--;
    if (ok) {
      run->r->streams_ok++;
      hist_record(&run->r->stream_latency, now_ns() - s->started_ns);
    } else {
      run->r->streams_failed++;
    }
  }
  if (counting && !ok)
    note_error(run, kind, !s->measured, "stream %d on connection %u: %s", s->stream_id, c->index,
               why);
  if (c->session && s->stream_id)
    nghttp2_session_set_stream_user_data(c->session, s->stream_id, NULL);
  s->stream_id = 0;
  s->next = s->answered = s->written = 0;
  s->closing = s->eof = false;
  s->next_free = c->free_slots;
  c->free_slots = s;
  s->is_free = true;
  if (!counting) return;
  check_finish(run);
  try_start(run);
}

/* Ends the stream as Envoy does when it gives up on it: RST_STREAM(CANCEL). */
static void cancel_stream(lg_slot *s) {
  if (s->conn->session && s->stream_id)
    nghttp2_submit_rst_stream(s->conn->session, NGHTTP2_FLAG_NONE, s->stream_id, NGHTTP2_CANCEL);
  mark_dirty(s->conn);
}

static void fail_stream(lg_slot *s, lg_error kind, bool send_rst, const char *why) {
  if (send_rst) cancel_stream(s);
  stream_end(s, false, kind, why);
}

static bool awaiting(const lg_slot *s) { return s->answered < s->next; }

/* Queues message `s->next` behind the stream's data provider, and the ones Envoy would send
 * with it without waiting for a reply (message latency counts from here for all of them). */
static void send_burst(lg_slot *s) {
  lg_run *run = s->run;
  const lg_script *sc = run->script;
  do {
    const lg_message *m = &sc->messages[s->next++];
    if (s->measured) {
      run->r->bytes_sent += m->len;
      run->r->body_bytes_sent += m->body_len;
    }
    if (!m->no_wait) break;
  } while (s->next < sc->count);
  s->sent_ns = now_ns();
  s->deadline_ns = s->sent_ns + run->timeout_ns;
  nghttp2_session_resume_data(s->conn->session, s->stream_id); /* fails harmlessly at start */
  mark_dirty(s->conn);
}

static bool start_stream(lg_slot *s) {
  lg_run *run = s->run;
  lg_conn *c = s->conn;
  script_request_id((char *)s->first + run->script->request_id_offset, run->seed,
                    run->streams_started);
  nghttp2_data_provider provider = {.source.ptr = s, .read_callback = read_body};
  const int32_t id = nghttp2_submit_request(c->session, NULL, run->nva,
                                            sizeof(run->nva) / sizeof(run->nva[0]), &provider, s);
  if (id < 0) { /* stream ids used up (or out of memory): retire this connection */
    c->draining = true;
    mark_dirty(c);
    return false;
  }
  c->free_slots = s->next_free;
  s->is_free = false;
  s->stream_id = id;
  s->measured = run->phase == PHASE_MEASURE;
  s->closing = s->eof = false;
  s->http_status = 0;
  s->grpc_content_type = false;
  s->grpc_status = -1;
  s->next = s->answered = s->written = s->out_off = 0;
  s->duplex_off = 0;
  grpc_reader_reset(&s->reader);
  s->started_ns = now_ns();
  c->open_streams++;
  run->streams_started++;
  if (s->measured) {
    run->measured_started++;
    run->measured_inflight++;
  }
  send_burst(s);
  return true;
}

/* Every reply is in: cancel (as Envoy does) or half-close and wait for the trailers. */
static void exchange_done(lg_slot *s) {
  if (s->run->o->end == END_CANCEL) {
    cancel_stream(s);
    stream_end(s, true, ERR_KINDS, NULL);
    return;
  }
  s->closing = true;
  s->eof = true;
  s->deadline_ns = now_ns() + s->run->timeout_ns;
  nghttp2_session_resume_data(s->conn->session, s->stream_id);
  mark_dirty(s->conn);
}

typedef Envoy__Service__ExtProc__V3__BodyMutation BodyMutation;

/* The body mutation of a body reply, or NULL. */
static const BodyMutation *body_mutation_of(const ProcessingResponse *msg) {
  const Envoy__Service__ExtProc__V3__BodyResponse *br =
      msg->response_case == ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY
          ? msg->request_body
      : msg->response_case ==
              ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY
          ? msg->response_body
          : NULL;
  return br && br->response ? br->response->body_mutation : NULL;
}

/* What a body reply did to its chunk, for the checks below. */
typedef struct body_reply {
  const uint8_t *data; /* the body it sends on (NULL: no mutation) */
  size_t len;
  bool streamed, cleared, end_of_stream;
} body_reply;

static body_reply body_reply_of(const ProcessingResponse *msg) {
  const BodyMutation *bm = body_mutation_of(msg);
  body_reply b = {0};
  if (!bm) return b;
  switch (bm->mutation_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY:
    b.data = bm->body.data ? bm->body.data : (const uint8_t *)"";
    b.len = bm->body.len;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY:
    b.cleared = bm->clear_body;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE:
    b.streamed = true;
    if (bm->streamed_response) {
      b.data =
          bm->streamed_response->body.data ? bm->streamed_response->body.data : (const uint8_t *)"";
      b.len = bm->streamed_response->body.len;
      b.end_of_stream = bm->streamed_response->end_of_stream;
    }
    break;
  default: break;
  }
  return b;
}

/* The body the replies must carry on, per --expect-body (NULL: anything goes). */
static const uint8_t *wanted_body(const lg_run *run) {
  switch (run->o->expect_body) {
  case EXPECT_SAME: return run->script->body;
  case EXPECT_UPPER: return run->script->body_upper;
  default: return NULL;
  }
}

/* A STREAMED, BUFFERED or BUFFERED_PARTIAL chunk's reply: unchanged (no mutation, or the same
 * bytes) or replaced, as --expect-body wants. Returns NULL or what is wrong. */
static const char *check_chunk_reply(const lg_run *run, const lg_message *m, const body_reply *b) {
  const uint8_t *want = wanted_body(run);
  if (!want) return NULL;
  if (b->streamed) return "a streamed_response outside FULL_DUPLEX_STREAMED";
  const uint8_t *chunk = run->script->body + m->body_off;
  want += m->body_off;
  if (b->cleared) return m->body_len == 0 ? NULL : "the chunk was cleared";
  if (!b->data) /* no mutation: the chunk goes on as it was */
    return chunk == want || memcmp(chunk, want, m->body_len) == 0 ? NULL
                                                                  : "the chunk was not rewritten";
  if (b->len != m->body_len) return "the replacement's size differs from the chunk's";
  return memcmp(b->data, want, b->len) == 0 ? NULL : "the replacement's bytes are not the ones due";
}

/* A FULL_DUPLEX_STREAMED piece: it must be a streamed_response (or carry nothing), and with
 * --expect-body the pieces together must be the body due. Returns NULL or what is wrong. */
static const char *check_piece(lg_slot *s, const body_reply *b) {
  const lg_run *run = s->run;
  if (b->cleared || (b->data && !b->streamed))
    return "a body or clear_body mutation in FULL_DUPLEX_STREAMED (Envoy takes only "
           "streamed_response)";
  const uint8_t *want = wanted_body(run);
  const size_t total = run->script->body_bytes, off = s->duplex_off;
  s->duplex_off += b->len;
  if (!want) return NULL;
  if (b->len > total - off) return "the streamed pieces carry more than the body";
  if (b->len && memcmp(b->data, want + off, b->len) != 0)
    return "a streamed piece's bytes are not the ones due";
  if (b->end_of_stream && s->duplex_off != total) return "the body ended short";
  return NULL;
}

/* Checks a body reply for message m. Returns NULL or what is wrong; *bytes is the body it
 * sends on, *done false while a FULL_DUPLEX_STREAMED body awaits more pieces. */
static const char *check_body_reply(lg_slot *s, const lg_message *m, const ProcessingResponse *msg,
                                    size_t *bytes, bool *done) {
  const body_reply b = body_reply_of(msg);
  *bytes = b.len;
  *done = true;
  if (!m->duplex) return check_chunk_reply(s->run, m, &b);
  *done = b.end_of_stream;
  if (b.end_of_stream && m->duplex_end > s->next)
    return "the streamed body ended before every chunk was sent";
  return check_piece(s, &b);
}

/* One complete ProcessingResponse for slot s. */
static void handle_reply(lg_slot *s, const uint8_t *data, size_t len) {
  lg_run *run = s->run;
  const lg_script *sc = run->script;
  if (!awaiting(s)) {
    fail_stream(s, ERR_BAD_REPLY, true, "a reply with no message outstanding");
    return;
  }
  ProtobufCAllocator alloc = arena_protobuf_allocator(&run->reply_arena);
  ProcessingResponse *msg =
      envoy__service__ext_proc__v3__processing_response__unpack(&alloc, len, data);
  if (!msg) {
    arena_reset(&run->reply_arena, ARENA_CACHED_BLOCK);
    fail_stream(s, ERR_BAD_REPLY, true, "malformed ProcessingResponse");
    return;
  }
  const int got = (int)msg->response_case;
  const bool timeout_only =
      got == ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE__NOT_SET &&
      msg->override_message_timeout;
  const lg_message *m = &sc->messages[s->answered];
  const bool immediate =
      got == ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE;
  size_t body_bytes = 0;
  bool done = true;
  const char *wrong = NULL;
  if (!timeout_only && !immediate && got == m->expect && m->is_body)
    wrong = check_body_reply(s, m, msg, &body_bytes, &done);
  arena_reset(&run->reply_arena, ARENA_CACHED_BLOCK);
  if (timeout_only) { /* not the answer yet: it follows */
    if (s->measured) run->r->timeout_overrides++;
    return;
  }
  char why[192];
  if (!immediate && got != m->expect) {
    snprintf(why, sizeof(why), "%s answered with %s", m->phase, envoy_response_case_name(got));
    fail_stream(s, ERR_BAD_REPLY, true, why);
    return;
  }
  if (wrong) {
    snprintf(why, sizeof(why), "%s (message %zu): %s", m->phase, s->answered, wrong);
    fail_stream(s, ERR_BAD_REPLY, true, why);
    return;
  }
  if (s->measured) {
    run->r->messages++;
    run->r->body_bytes_received += body_bytes;
    hist_record(&run->r->message_latency, now_ns() - s->sent_ns);
    if (immediate) run->r->immediate_responses++;
  }
  if (immediate) {
    exchange_done(s);
    return;
  }
  s->deadline_ns = now_ns() + run->timeout_ns; /* the next reply's turn */
  if (!done) return;
  s->answered = m->duplex ? m->duplex_end : s->answered + 1;
  if (s->answered == sc->count)
    exchange_done(s);
  else if (s->answered == s->next)
    send_burst(s);
}

/* Cuts the response body into gRPC messages. Stops once the stream has left the slot. */
static void feed_response(lg_slot *s, int32_t id, const uint8_t *data, size_t len) {
  while (len > 0 && s->stream_id == id) {
    const uint8_t *msg;
    size_t msg_len;
    switch (grpc_reader_feed(&s->reader, &data, &len, &msg, &msg_len)) {
    case GRPC_READ_NEED_MORE: return;
    case GRPC_READ_MESSAGE: handle_reply(s, msg, msg_len); break;
    case GRPC_READ_NO_MEMORY:
      fail_stream(s, ERR_BAD_REPLY, true, "reply too large for memory");
      return;
    default: /* compressed (no limit is set) */
      fail_stream(s, ERR_BAD_REPLY, true, "compressed or malformed gRPC message prefix");
      return;
    }
  }
}

/* Trailers (or a trailers-only response) ended the server's side. */
static void handle_trailers(lg_slot *s) {
  char why[96];
  if (s->grpc_status != 0) {
    snprintf(why, sizeof(why), "grpc-status %d", s->grpc_status);
    fail_stream(s, ERR_GRPC_STATUS, true,
                s->grpc_status < 0 ? "trailers without grpc-status" : why);
  } else if (s->closing) {
    stream_end(s, true, ERR_KINDS, NULL);
  } else {
    fail_stream(s, ERR_BAD_REPLY, true, "the server ended the stream before the last reply");
  }
}

/* ---- nghttp2 callbacks ------------------------------------------------------------------ */

/* The request body: the messages sent and not yet written, one after the other, then
 * END_STREAM when half-closing. Message 0 is the slot's copy, its x-request-id patched. */
static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data) {
  (void)session, (void)user_data;
  lg_slot *s = source->ptr;
  if (s->stream_id != stream_id) return NGHTTP2_ERR_DEFERRED; /* a cancelled stream's leftover */
  const lg_message *messages = s->run->script->messages;
  size_t copied = 0;
  while (copied < length && s->written < s->next) {
    const lg_message *m = &messages[s->written];
    const uint8_t *data = s->written == 0 ? s->first : m->data;
    size_t n = m->len - s->out_off;
    if (n > length - copied) n = length - copied;
    memcpy(buf + copied, data + s->out_off, n);
    copied += n;
    s->out_off += n;
    if (s->out_off == m->len) {
      s->written++;
      s->out_off = 0;
    }
  }
  if (s->written == s->next) {
    if (s->eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      return (ssize_t)copied;
    }
    if (copied == 0) return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)copied;
}

static bool name_is(const uint8_t *name, size_t len, const char *want) {
  return len == strlen(want) && memcmp(name, want, len) == 0;
}

static int parse_int(const uint8_t *v, size_t len) {
  int n = 0;
  if (len == 0 || len > 9) return -2;
  for (size_t i = 0; i < len; i++) {
    if (v[i] < '0' || v[i] > '9') return -2;
    n = n * 10 + (v[i] - '0');
  }
  return n;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags, (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  lg_slot *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!s) return 0;
  if (name_is(name, namelen, ":status")) {
    s->http_status = parse_int(value, valuelen);
  } else if (name_is(name, namelen, "content-type")) {
    static const char grpc[] = "application/grpc";
    s->grpc_content_type = valuelen >= sizeof(grpc) - 1 &&
                           memcmp(value, grpc, sizeof(grpc) - 1) == 0 &&
                           (valuelen == sizeof(grpc) - 1 || value[sizeof(grpc) - 1] == '+' ||
                            value[sizeof(grpc) - 1] == ';');
  } else if (name_is(name, namelen, "grpc-status")) {
    s->grpc_status = parse_int(value, valuelen);
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  lg_conn *c = user_data;
  lg_run *run = c->run;
  lg_slot *s = frame->hd.stream_id
                   ? nghttp2_session_get_stream_user_data(session, frame->hd.stream_id)
                   : NULL;
  char why[96];
  switch (frame->hd.type) {
  case NGHTTP2_SETTINGS:
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && !c->ready) {
      c->ready = true;
      run->ready_conns++;
      try_start(run);
    }
    return 0;
  case NGHTTP2_GOAWAY:
    if (!c->draining && !run->stopping)
      note_error(run, ERR_GOAWAY, run->phase != PHASE_MEASURE && run->phase != PHASE_DRAIN,
                 "connection %u: GOAWAY %s, last stream %d", c->index,
                 nghttp2_http2_strerror(frame->goaway.error_code), frame->goaway.last_stream_id);
    c->draining = true;
    return 0;
  case NGHTTP2_RST_STREAM:
    if (s) {
      snprintf(why, sizeof(why), "RST_STREAM %s",
               nghttp2_http2_strerror(frame->rst_stream.error_code));
      fail_stream(s, ERR_RESET, false, why);
    }
    return 0;
  case NGHTTP2_HEADERS:
    if (!s) return 0;
    if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      if (s->http_status != 200 || !s->grpc_content_type) {
        snprintf(why, sizeof(why), ":status %d%s", s->http_status,
                 s->grpc_content_type ? "" : ", content-type not application/grpc");
        fail_stream(s, ERR_HTTP, true, why);
        return 0;
      }
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) handle_trailers(s);
    } else if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
      handle_trailers(s);
    }
    return 0;
  case NGHTTP2_DATA:
    if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
      fail_stream(s, ERR_BAD_REPLY, true, "the server ended the stream without trailers");
    return 0;
  default: return 0;
  }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags, (void)user_data;
  lg_slot *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (s) feed_response(s, stream_id, data, len);
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  lg_conn *c = user_data;
  c->open_streams--;
  lg_slot *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!s) return 0; /* ended on our side already */
  if (error_code == NGHTTP2_REFUSED_STREAM)
    fail_stream(s, ERR_ABORTED, false, "refused (GOAWAY)");
  else
    fail_stream(s, ERR_BAD_REPLY, false, "closed by the server without trailers");
  return 0;
}

/* ---- connections ------------------------------------------------------------------------ */

/* Ends every stream still on the connection: lost with it (counted), or abandoned at the end. */
static void abandon_streams(lg_conn *c, const char *why) {
  lg_run *run = c->run;
  for (unsigned i = 0; i < run->o->concurrency; i++) {
    lg_slot *s = &run->slots[i];
    if (s->conn == c && !s->is_free) stream_end(s, false, ERR_ABORTED, why);
  }
}

static void on_retry(uv_timer_t *t) { conn_connect(t->data); }

static void on_closed(uv_handle_t *h) {
  lg_conn *c = h->data;
  lg_run *run = c->run;
  c->state = CONN_IDLE;
  if (!run->stopping) {
    uv_timer_start(&c->retry, on_retry, RETRY_MS, 0);
    return;
  }
  for (unsigned i = 0; i < run->o->connections; i++)
    if (run->conns[i].state != CONN_IDLE) return;
  /* Everything is closed: let the loop end. */
  uv_prepare_stop(&run->flusher);
  uv_timer_stop(&run->hard_timer);
}

static void conn_close(lg_conn *c) {
  if (c->state == CONN_IDLE || c->state == CONN_CLOSING) return;
  const bool was_open = c->state == CONN_OPEN;
  c->state = CONN_CLOSING;
  if (was_open) {
    uv_read_stop(&c->h.stream);
    abandon_streams(c, "connection closed");
    nghttp2_session_del(c->session);
    c->session = NULL;
  }
  if (c->ready) c->run->ready_conns--;
  c->ready = c->draining = c->writing = false;
  c->out.len = c->inflight.len = 0;
  c->open_streams = 0;
  uv_close(&c->h.handle, on_closed);
}

/* The connection broke under us: count it (unless it was expected), close, reconnect. */
static void conn_fail(lg_conn *c, lg_error kind, const char *why) {
  lg_run *run = c->run;
  if (run->phase == PHASE_CONNECTING && !run->stopping) {
    fprintf(stderr, "extproc-load: %s: %s\n", run->o->target, why);
    run->fatal = true;
  }
  if (!run->stopping && !c->draining)
    note_error(run, kind, run->phase != PHASE_MEASURE && run->phase != PHASE_DRAIN,
               "connection %u: %s", c->index, why);
  conn_close(c);
  if (run->fatal) stop(run);
}

static void on_write(uv_write_t *req, int status) {
  lg_conn *c = req->data;
  if (c->state != CONN_OPEN) return; /* cancelled by a close */
  c->writing = false;
  c->inflight.len = 0;
  if (status < 0) {
    conn_fail(c, ERR_DISCONNECT, uv_strerror(status));
    return;
  }
  flush(c);
}

/* Serializes what nghttp2 has queued and writes it: one write per connection per loop turn. */
static void flush(lg_conn *c) {
  lg_run *run = c->run;
  if (c->state != CONN_OPEN || c->writing) return;
  for (;;) {
    const uint8_t *data;
    const ssize_t n = nghttp2_session_mem_send(c->session, &data);
    if (n < 0) {
      conn_fail(c, ERR_DISCONNECT, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0) break;
    if (!wbuf_append(&c->out, data, (size_t)n)) {
      conn_fail(c, ERR_DISCONNECT, "out of memory");
      return;
    }
  }
  if (c->out.len > 0) {
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    const int n = uv_try_write(&c->h.stream, &b, 1);
    if (n < 0 && n != UV_EAGAIN) {
      conn_fail(c, ERR_DISCONNECT, uv_strerror(n));
      return;
    }
    const size_t done = n > 0 ? (size_t)n : 0;
    if (done < c->out.len) { /* the rest goes out asynchronously, from the other buffer */
      const wbuf t = c->inflight;
      c->inflight = c->out;
      c->out = t;
      c->out.len = 0;
      b = uv_buf_init((char *)c->inflight.data + done, (unsigned)(c->inflight.len - done));
      c->writing = true;
      c->write_req.data = c;
      const int rv = uv_write(&c->write_req, &c->h.stream, &b, 1, on_write);
      if (rv < 0) {
        c->writing = false;
        conn_fail(c, ERR_DISCONNECT, uv_strerror(rv));
      }
      return;
    }
    c->out.len = 0;
  }
  /* All written. A retired connection goes once its streams are gone; at the end, once the
   * GOAWAY is out. */
  if ((c->draining && c->open_streams == 0) ||
      (run->stopping && !nghttp2_session_want_write(c->session)))
    conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  lg_conn *c = h->data;
  *buf = uv_buf_init((char *)c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  lg_conn *c = stream->data;
  if (nread == 0 || c->state != CONN_OPEN) return;
  if (nread < 0) {
    conn_fail(c, ERR_DISCONNECT, nread == UV_EOF ? "EOF from the server" : uv_strerror((int)nread));
    return;
  }
  const ssize_t rv = nghttp2_session_mem_recv(c->session, c->rbuf, (size_t)nread);
  if (rv < 0) {
    conn_fail(c, ERR_DISCONNECT, nghttp2_strerror((int)rv));
    return;
  }
  mark_dirty(c);
}

static bool conn_open_session(lg_conn *c) {
  lg_run *run = c->run;
  if (nghttp2_session_client_new2(&c->session, run->callbacks, c, run->option) != 0) return false;
  const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                             {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_BYTES}};
  return nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings,
                                 sizeof(settings) / sizeof(settings[0])) == 0 &&
         nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, WINDOW_BYTES) == 0;
}

static void on_connect(uv_connect_t *req, int status) {
  lg_conn *c = req->data;
  if (status == UV_ECANCELED || c->state != CONN_CONNECTING) return;
  if (status < 0) {
    conn_fail(c, ERR_CONNECT, uv_strerror(status));
    return;
  }
  c->state = CONN_OPEN;
  if (!conn_open_session(c)) {
    conn_fail(c, ERR_CONNECT, "cannot create the HTTP/2 session");
    return;
  }
  if (!c->run->is_unix) uv_tcp_nodelay(&c->h.tcp, 1);
  const int rv = uv_read_start(&c->h.stream, on_alloc, on_read);
  if (rv < 0) {
    conn_fail(c, ERR_CONNECT, uv_strerror(rv));
    return;
  }
  mark_dirty(c);
}

static void conn_connect(lg_conn *c) {
  lg_run *run = c->run;
  if (run->stopping || c->state != CONN_IDLE) return;
  c->state = CONN_CONNECTING;
  c->connect_req.data = c;
  const int rv =
      run->is_unix ? uv_pipe_init(&run->loop, &c->h.pipe, 0) : uv_tcp_init(&run->loop, &c->h.tcp);
  if (rv < 0) { /* nothing to close: give up */
    fprintf(stderr, "extproc-load: cannot create a socket: %s\n", uv_strerror(rv));
    c->state = CONN_IDLE;
    run->fatal = true;
    stop(run);
    return;
  }
  c->h.handle.data = c;
  if (run->is_unix) { /* reports failure through on_connect */
    uv_pipe_connect(&c->connect_req, &c->h.pipe, run->path, on_connect);
    return;
  }
  const int crv =
      uv_tcp_connect(&c->connect_req, &c->h.tcp, (const struct sockaddr *)&run->addr, on_connect);
  if (crv < 0) conn_fail(c, ERR_CONNECT, uv_strerror(crv));
}

/* ---- starting streams ------------------------------------------------------------------- */

typedef enum { GATE_OPEN, GATE_RATE, GATE_SHUT } gate;

static gate may_start(lg_run *run) {
  if (run->stopping) return GATE_SHUT;
  if (run->phase == PHASE_MEASURE) {
    if (run->o->count && run->measured_started >= run->o->count) return GATE_SHUT;
  } else if (run->phase != PHASE_WARMUP) {
    return GATE_SHUT;
  }
  if (run->o->rate > 0) {
    const double elapsed = (double)(now_ns() - run->t_first_ns) / 1e9;
    if ((double)run->streams_started >= elapsed * run->o->rate + 1.0) return GATE_RATE;
  }
  return GATE_OPEN;
}

static void on_rate_timer(uv_timer_t *t) { try_start(t->data); }

static void try_start(lg_run *run) {
  const unsigned m = run->o->connections;
  gate g = GATE_OPEN;
  bool progress = true, waiting = false;
  while (progress) {
    progress = false;
    for (unsigned i = 0; i < m; i++) {
      lg_conn *c = &run->conns[(run->rr + i) % m];
      if (c->state != CONN_OPEN || !c->ready || c->draining || !c->free_slots) continue;
      waiting = true;
      if ((g = may_start(run)) != GATE_OPEN) goto out;
      if (start_stream(c->free_slots)) {
        progress = true;
        run->rr = (run->rr + i + 1) % m;
      }
    }
  }
out:
  if (g == GATE_RATE && waiting && !uv_is_active((uv_handle_t *)&run->rate_timer)) {
    const uint64_t due =
        run->t_first_ns + (uint64_t)((double)run->streams_started * 1e9 / run->o->rate);
    const uint64_t now = now_ns();
    const uint64_t ms = due > now ? (due - now + 999999) / 1000000 : 0;
    uv_timer_start(&run->rate_timer, on_rate_timer, ms, 0);
  }
}

/* ---- the run's phases ------------------------------------------------------------------- */

static void sample_server(lg_run *run, proc_sample *out) {
  if (run->o->server_pid) *out = proc_sample_cpu(run->o->server_pid);
}

static void finish(lg_run *run) {
  if (run->phase == PHASE_DONE) return;
  lg_results *r = run->r;
  run->t_end_ns = now_ns();
  if (run->t_measure_ns) {
    r->elapsed_s = (double)(run->t_end_ns - run->t_measure_ns) / 1e9;
    sample_server(run, &r->server_after);
    if (run->o->server_pid) r->server_memory = proc_read_memory(run->o->server_pid);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const int64_t us = ((int64_t)ru.ru_utime.tv_sec - run->ru_before.ru_utime.tv_sec +
                        (int64_t)ru.ru_stime.tv_sec - run->ru_before.ru_stime.tv_sec) *
                           1000000 +
                       ((int64_t)ru.ru_utime.tv_usec - run->ru_before.ru_utime.tv_usec +
                        (int64_t)ru.ru_stime.tv_usec - run->ru_before.ru_stime.tv_usec);
    r->client_cpu_us = us > 0 ? (uint64_t)us : 0;
  }
  run->phase = PHASE_DONE;
  stop(run);
}

static void check_finish(lg_run *run) {
  if (run->measured_inflight > 0) return;
  if ((run->phase == PHASE_MEASURE && run->o->count && run->measured_started >= run->o->count) ||
      run->phase == PHASE_DRAIN)
    finish(run);
}

/* Arms the phase timer to fire at `at_ns` (uv_hrtime). libuv's timers count from the loop's
 * cached millisecond clock and may fire up to a millisecond early: the callbacks re-arm. */
static bool phase_timer_at(lg_run *run, uint64_t at_ns, uv_timer_cb cb) {
  const uint64_t now = now_ns();
  if (now >= at_ns) return false;
  uv_timer_start(&run->phase_timer, cb, (at_ns - now + 999999) / 1000000, 0);
  return true;
}

static void on_duration_end(uv_timer_t *t) {
  lg_run *run = t->data;
  if (phase_timer_at(run, run->t_measure_ns + (uint64_t)(run->o->duration * 1e9), on_duration_end))
    return;
  run->phase = PHASE_DRAIN;
  check_finish(run);
}

static void begin_measure(lg_run *run) {
  run->warmed_up = run->phase == PHASE_WARMUP;
  run->phase = PHASE_MEASURE;
  run->t_measure_ns = now_ns();
  if (run->warmed_up) run->r->warmup_s = (double)(run->t_measure_ns - run->t_first_ns) / 1e9;
  sample_server(run, &run->r->server_before);
  if (run->o->server_pid) run->r->server_peak_reset = proc_reset_peak_rss(run->o->server_pid);
  getrusage(RUSAGE_SELF, &run->ru_before);
  if (run->o->duration > 0) on_duration_end(&run->phase_timer); /* arms the timer */
  try_start(run);
}

static void on_warmup_end(uv_timer_t *t) {
  lg_run *run = t->data;
  if (!phase_timer_at(run, run->t_first_ns + (uint64_t)(run->o->warmup * 1e9), on_warmup_end))
    begin_measure(run);
}

/* Every 10 ms: begin once every connection is ready; time out streams whose reply is late. */
static void on_tick(uv_timer_t *t) {
  lg_run *run = t->data;
  if (run->phase == PHASE_CONNECTING) {
    if (run->ready_conns < run->o->connections) {
      const double wait = run->o->timeout > CONNECT_WAIT_S ? run->o->timeout : CONNECT_WAIT_S;
      if ((double)(now_ns() - run->t_setup_ns) < wait * 1e9) return;
      fprintf(stderr, "extproc-load: %s: %u of %u connections ready after %.3g s\n", run->o->target,
              run->ready_conns, run->o->connections, wait);
      run->fatal = true;
      stop(run);
      return;
    }
    run->t_first_ns = now_ns();
    if (run->o->warmup > 0) {
      run->phase = PHASE_WARMUP;
      try_start(run);
      on_warmup_end(&run->phase_timer); /* arms the timer */
    } else {
      begin_measure(run);
    }
    return;
  }
  const uint64_t now = now_ns();
  for (unsigned i = 0; i < run->o->concurrency && !run->stopping; i++) {
    lg_slot *s = &run->slots[i];
    if (s->is_free || !(awaiting(s) || s->closing) || now < s->deadline_ns) continue;
    char why[96];
    snprintf(why, sizeof(why), "no %s within %.3g s", s->closing ? "trailers" : "reply",
             run->o->timeout);
    fail_stream(s, ERR_TIMEOUT, true, why);
  }
}

static void on_hard_timeout(uv_timer_t *t) {
  lg_run *run = t->data;
  if (run->stopping) { /* saying goodbye takes too long: just close */
    for (unsigned i = 0; i < run->o->connections; i++)
      conn_close(&run->conns[i]);
    return;
  }
  fprintf(stderr, "extproc-load: hard timeout (%.3g s) reached\n", run->o->hard_timeout);
  run->r->hard_timeout = true;
  for (unsigned i = 0; i < run->o->concurrency; i++) {
    lg_slot *s = &run->slots[i];
    if (s->is_free || !s->measured || run->phase == PHASE_CONNECTING) continue;
    run->r->streams_failed++;
    note_error(run, ERR_TIMEOUT, false, "stream %d unfinished at the hard timeout", s->stream_id);
  }
  run->measured_inflight = 0;
  finish(run);
}

static void on_sigint(uv_signal_t *sig, int signum) {
  (void)signum;
  lg_run *run = sig->data;
  fprintf(stderr, "extproc-load: interrupted\n");
  run->r->interrupted = true;
  run->measured_inflight = 0;
  finish(run);
}

/* Ends the run: stop starting streams, cancel the ones left (as Envoy would), send GOAWAY, and
 * close every connection once its output is out (at most LINGER_MS). */
static void stop(lg_run *run) {
  if (run->stopping) return;
  run->stopping = true;
  uv_timer_stop(&run->phase_timer);
  uv_timer_stop(&run->rate_timer);
  uv_timer_stop(&run->tick_timer);
  uv_signal_stop(&run->sigint);
  uv_timer_start(&run->hard_timer, on_hard_timeout, LINGER_MS, 0);
  run->phase = PHASE_DONE;
  for (unsigned i = 0; i < run->o->concurrency; i++) {
    lg_slot *s = &run->slots[i];
    if (!s->is_free) fail_stream(s, ERR_ABORTED, true, "run over");
  }
  bool any = false;
  for (unsigned i = 0; i < run->o->connections; i++) {
    lg_conn *c = &run->conns[i];
    uv_timer_stop(&c->retry);
    if (c->state == CONN_OPEN) {
      nghttp2_session_terminate_session(c->session, NGHTTP2_NO_ERROR);
      mark_dirty(c);
    } else if (c->state == CONN_CONNECTING) {
      conn_close(c);
    }
    if (c->state != CONN_IDLE) any = true;
  }
  if (!any) {
    uv_prepare_stop(&run->flusher);
    uv_timer_stop(&run->hard_timer);
  }
}

static void on_prepare(uv_prepare_t *p) {
  lg_run *run = p->data;
  while (run->dirty_count > 0) {
    lg_conn *c = run->dirty[--run->dirty_count];
    c->dirty = false;
    flush(c);
  }
}

/* ---- setup ------------------------------------------------------------------------------ */

static bool resolve(lg_run *run, const char *target) {
  if (strncmp(target, "unix:", 5) == 0) {
    if (strlen(target + 5) == 0 || strlen(target + 5) >= sizeof(run->path)) {
      fprintf(stderr, "extproc-load: bad unix socket path in '%s'\n", target);
      return false;
    }
    run->is_unix = true;
    snprintf(run->path, sizeof(run->path), "%s", target + 5);
    snprintf(run->authority, sizeof(run->authority), "localhost");
    return true;
  }
  char host[256];
  const char *port;
  if (target[0] == '[') {
    const char *close = strchr(target, ']');
    if (!close || close[1] != ':' || (size_t)(close - target - 1) >= sizeof(host)) goto bad;
    memcpy(host, target + 1, (size_t)(close - target - 1));
    host[close - target - 1] = '\0';
    port = close + 2;
  } else {
    const char *colon = strrchr(target, ':');
    if (!colon || (size_t)(colon - target) >= sizeof(host) || colon == target) goto bad;
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    port = colon + 1;
  }
  if (!*port) goto bad;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  const int rv = getaddrinfo(host, port, &hints, &res);
  if (rv != 0 || !res) {
    fprintf(stderr, "extproc-load: cannot resolve '%s': %s\n", target, gai_strerror(rv));
    return false;
  }
  memcpy(&run->addr, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  snprintf(run->authority, sizeof(run->authority), "%s", target);
  return true;
bad:
  fprintf(stderr, "extproc-load: bad target '%s' (HOST:PORT, [IPV6]:PORT or unix:PATH)\n", target);
  return false;
}

static nghttp2_nv make_nv(const char *name, const char *value) {
  return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

static bool setup_nghttp2(lg_run *run) {
  if (nghttp2_session_callbacks_new(&run->callbacks) != 0 || nghttp2_option_new(&run->option) != 0)
    return false;
  nghttp2_session_callbacks_set_on_header_callback(run->callbacks, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(run->callbacks, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(run->callbacks, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(run->callbacks, on_stream_close);
  nghttp2_option_set_no_closed_streams(run->option, 1);
  run->nva[0] = make_nv(":method", "POST");
  run->nva[1] = make_nv(":scheme", "http");
  run->nva[2] = make_nv(":path", GRPC_PATH);
  run->nva[3] = make_nv(":authority", run->authority);
  run->nva[4] = make_nv("content-type", "application/grpc");
  run->nva[5] = make_nv("te", "trailers");
  run->nva[6] = make_nv("user-agent", "extproc-load/"
                                      "0.1");
  return true;
}

static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static uint64_t random_seed(void) {
  uint64_t seed = uv_hrtime();
  FILE *f = fopen("/dev/urandom", "rb");
  if (f) {
    if (fread(&seed, sizeof(seed), 1, f) != 1) seed ^= (uint64_t)uv_os_getpid() << 32;
    fclose(f);
  }
  return seed;
}

static void free_run(lg_run *run) {
  if (run->slots)
    for (unsigned i = 0; i < run->o->concurrency; i++) {
      free(run->slots[i].first);
      grpc_reader_free(&run->slots[i].reader);
    }
  if (run->conns)
    for (unsigned i = 0; i < run->o->connections; i++) {
      free(run->conns[i].out.data);
      free(run->conns[i].inflight.data);
    }
  free(run->slots);
  free(run->conns);
  free(run->dirty);
  arena_free(&run->reply_arena);
  arena_cache_release();
  if (run->callbacks) nghttp2_session_callbacks_del(run->callbacks);
  if (run->option) nghttp2_option_del(run->option);
}

static bool setup(lg_run *run) {
  const lg_options *o = run->o;
  if (!resolve(run, o->target) || !setup_nghttp2(run)) return false;
  run->conns = calloc(o->connections, sizeof(*run->conns));
  run->slots = calloc(o->concurrency, sizeof(*run->slots));
  run->dirty = calloc(o->connections, sizeof(*run->dirty));
  if (!run->conns || !run->slots || !run->dirty) return false;
  for (unsigned i = 0; i < o->connections; i++) {
    lg_conn *c = &run->conns[i];
    c->run = run;
    c->index = i;
    uv_timer_init(&run->loop, &c->retry);
    c->retry.data = c;
  }
  const lg_message *first = &run->script->messages[0];
  for (unsigned i = o->concurrency; i-- > 0;) { /* pushed in reverse: slot 0 is used first */
    lg_slot *s = &run->slots[i];
    s->run = run;
    s->conn = &run->conns[i % o->connections];
    s->first = malloc(first->len);
    if (!s->first) return false;
    grpc_reader_init(&s->reader, SIZE_MAX, NULL); /* any size the server sends */
    memcpy(s->first, first->data, first->len);
    s->is_free = true;
    s->next_free = s->conn->free_slots;
    s->conn->free_slots = s;
  }
  run->seed = random_seed();
  run->timeout_ns = (uint64_t)(o->timeout * 1e9);
  run->t_setup_ns = now_ns();
  if (o->server_pid) run->r->server_idle = proc_read_memory(o->server_pid);
  uv_prepare_init(&run->loop, &run->flusher);
  run->flusher.data = run;
  uv_prepare_start(&run->flusher, on_prepare);
  uv_timer_t *timers[] = {&run->phase_timer, &run->rate_timer, &run->tick_timer, &run->hard_timer};
  for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
    uv_timer_init(&run->loop, timers[i]);
    timers[i]->data = run;
  }
  uv_signal_init(&run->loop, &run->sigint);
  run->sigint.data = run;
  uv_signal_start(&run->sigint, on_sigint, SIGINT);
  uv_timer_start(&run->tick_timer, on_tick, 10, 10);
  uv_timer_start(&run->hard_timer, on_hard_timeout, (uint64_t)(o->hard_timeout * 1000), 0);
  return true;
}

int loadgen_run(const lg_options *o, const lg_script *script, lg_results *r) {
  lg_run *run = calloc(1, sizeof(*run));
  if (!run) return -1;
  run->o = o;
  run->script = script;
  run->r = r;
  arena_init(&run->reply_arena, ARENA_CACHED_BLOCK);
  hist_init(&r->message_latency);
  hist_init(&r->stream_latency);
  if (uv_loop_init(&run->loop) != 0) {
    free(run);
    return -1;
  }
  bool ok = setup(run);
  if (ok) {
    for (unsigned i = 0; i < o->connections; i++)
      conn_connect(&run->conns[i]);
    uv_run(&run->loop, UV_RUN_DEFAULT);
  } else {
    fprintf(stderr, "extproc-load: setup failed\n");
  }
  uv_walk(&run->loop, close_any, NULL);
  uv_run(&run->loop, UV_RUN_DEFAULT);
  uv_loop_close(&run->loop);
  for (unsigned i = 0; run->conns && i < o->connections; i++)
    if (run->conns[i].session) nghttp2_session_del(run->conns[i].session);
  ok = ok && !run->fatal && run->t_measure_ns != 0;
  r->server = o->server_pid != 0;
  free_run(run);
  free(run);
  return ok ? 0 : -1;
}
