/* One HTTP/2 connection from Envoy: nghttp2 session, gRPC framing, and the per-stream glue to
 * the engine.
 *
 * Output is coalesced: frames produced while handling an event are written with one write call
 * at the end of that event (conn_flush), not one per frame. Input flow control is manual: a
 * stream's bytes are handed back to the peer's window once processed, and held back while a
 * deferred phase keeps the stream busy. */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "grpc/health/v1/health.pb-c.h"
#include "transport/grpc_frame.h"
#include "transport/transport.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
#define HEALTH_CHECK_PATH "/grpc.health.v1.Health/Check"

/* Connection-level receive window: large enough that many concurrent streams each with a
 * message in flight do not stall one another, small enough to bound what a peer can push. */
enum { CONNECTION_WINDOW_BYTES = 16 << 20 };
/* Replies queued but not yet taken by the peer: past this, the connection takes no more input
 * (its window credit is held back) until the peer reads. */
enum { OUTPUT_BUDGET_BYTES = 4 << 20 };
/* A single write is capped so one busy connection cannot starve the loop. */
enum { MAX_WRITE_BYTES = 1 << 20 };

typedef enum stream_kind { KIND_UNKNOWN, KIND_PROCESS, KIND_HEALTH } stream_kind;

typedef struct out_chunk {
  struct out_chunk *next;
  size_t len, off;
  uint8_t data[];
} out_chunk;

typedef struct h2_stream {
  connection *conn;
  int32_t id;
  stream_kind kind;
  bool post;              /* :method is POST */
  bool grpc_content_type; /* content-type is application/grpc[+proto] */
  grpc_reader reader;
  extproc_request *engine; /* KIND_PROCESS only */
  out_chunk *out_head, *out_tail;
  bool finished; /* the final status is set; trailers follow the queued output */
  uint32_t status;
  char *message;
  bool discard_input; /* after an error: input is consumed and dropped */
  size_t held_bytes;  /* received but not yet returned to the peer's window */
  struct h2_stream *prev, *next;
} h2_stream;

struct connection {
  worker *w;
  const extproc_processor *proc;
  stream_handle h;
  nghttp2_session *session;
  h2_stream *streams;
  uv_write_t write_req;
  uint8_t *wbuf;
  size_t wlen, wcap, woff;
  bool writing;
  bool closing;
  /* Input budgets (see may_take_input). */
  size_t partial_bytes;    /* bytes of incomplete messages buffered, over all streams */
  size_t queued_out_bytes; /* reply bytes queued, not yet handed to nghttp2 */
  h2_stream *favoured;     /* over the partial budget: the one stream still fed */
  bool input_held;         /* some stream holds credit for budget reasons */
  connection *prev, *next;
};

static void conn_flush(connection *c);
static void connection_close(connection *c);

/* ---- Output ---------------------------------------------------------------------------- */

static int queue_output(h2_stream *s, size_t len, uint8_t **dst) {
  out_chunk *ch = malloc(sizeof(*ch) + len);
  if (!ch) return EXTPROC_ENOMEM;
  ch->next = NULL;
  ch->len = len;
  ch->off = 0;
  if (s->out_tail)
    s->out_tail->next = ch;
  else
    s->out_head = ch;
  s->out_tail = ch;
  s->conn->queued_out_bytes += len;
  *dst = ch->data;
  return 0;
}

/* Queues one framed gRPC message and wakes the stream's data provider. */
static int send_message(h2_stream *s, const ProtobufCMessage *msg) {
  if (s->finished) return 0; /* the outcome is already sent or decided: drop quietly */
  const size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *dst;
  if (len > UINT32_MAX || queue_output(s, GRPC_PREFIX_BYTES + len, &dst) != 0)
    return EXTPROC_ENOMEM;
  grpc_write_prefix(dst, (uint32_t)len);
  protobuf_c_message_pack(msg, dst + GRPC_PREFIX_BYTES);
  nghttp2_session_resume_data(s->conn->session, s->id);
  return 0;
}

static void finish_stream(h2_stream *s, uint32_t status, const char *message) {
  if (s->finished) return;
  s->finished = true;
  s->status = status;
  s->message = message ? strdup(message) : NULL;
  nghttp2_session_resume_data(s->conn->session, s->id);
}

/* grpc-message is percent-encoded: printable ASCII except '%' goes as is. */
static size_t percent_encode(const char *in, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (; *in && n + 4 < cap; in++) {
    const unsigned char ch = (unsigned char)*in;
    if (ch >= 0x20 && ch < 0x7f && ch != '%') {
      out[n++] = (char)ch;
    } else {
      out[n++] = '%';
      out[n++] = hex[ch >> 4];
      out[n++] = hex[ch & 15];
    }
  }
  out[n] = '\0';
  return n;
}

#define NV(name, value, value_len)                                                                 \
  { (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, (value_len), NGHTTP2_NV_FLAG_NONE }

static int submit_trailers(h2_stream *s) {
  char status[12], message[1024];
  const int status_len = snprintf(status, sizeof(status), "%u", s->status);
  nghttp2_nv nva[2] = {NV("grpc-status", status, (size_t)status_len)};
  size_t n = 1;
  if (s->message) {
    const size_t mlen = percent_encode(s->message, message, sizeof(message));
    nva[n++] = (nghttp2_nv)NV("grpc-message", message, mlen);
  }
  return nghttp2_submit_trailer(s->conn->session, s->id, nva, n);
}

/* The data provider: drains the stream's queued messages, then ends with the trailers. */
static ssize_t read_output(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *source, void *user_data) {
  (void)session, (void)stream_id, (void)user_data;
  h2_stream *s = source->ptr;
  size_t n = 0;
  while (n < length && s->out_head) {
    out_chunk *ch = s->out_head;
    size_t take = ch->len - ch->off;
    if (take > length - n) take = length - n;
    memcpy(buf + n, ch->data + ch->off, take);
    n += take;
    ch->off += take;
    s->conn->queued_out_bytes -= take;
    if (ch->off == ch->len) {
      s->out_head = ch->next;
      if (!s->out_head) s->out_tail = NULL;
      free(ch);
    }
  }
  if (!s->out_head && s->finished) {
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (submit_trailers(s) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return (ssize_t)n;
  }
  return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

static int submit_response_headers(h2_stream *s) {
  const nghttp2_nv nva[] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16)};
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_output};
  return nghttp2_submit_response(s->conn->session, s->id, nva, 2, &prd);
}

/* A trailers-only response: the whole answer in one HEADERS frame, for requests that never
 * reach a service. */
static int submit_trailers_only(h2_stream *s, uint32_t status, const char *message) {
  char st[12], msg[512];
  const int st_len = snprintf(st, sizeof(st), "%u", status);
  const size_t msg_len = percent_encode(message, msg, sizeof(msg));
  const nghttp2_nv nva[] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16),
                            NV("grpc-status", st, (size_t)st_len),
                            NV("grpc-message", msg, msg_len)};
  s->finished = true;
  s->discard_input = true;
  return nghttp2_submit_response(s->conn->session, s->id, nva, 4, NULL);
}

/* ---- The engine's view of a stream ----------------------------------------------------- */

static int sink_send(void *io, const ProtobufCMessage *reply) { return send_message(io, reply); }

static void sink_finish(void *io, uint32_t status, const char *message) {
  finish_stream(io, status, message);
}

/* Whether a stream's received bytes may go back to the peer's window now. Holding them back is
 * how the server pushes back, without ever refusing data the peer was allowed to send:
 *  - a deferred phase holds its stream, so Envoy cannot queue input behind it without bound;
 *  - replies the peer does not read hold every stream (the peer is not reading: stop taking);
 *  - past the partial-message budget only the stream with the most buffered is fed, so memory
 *    stays bounded and that message still completes, then the next. */
static bool may_take_input(const connection *c, const h2_stream *s) {
  if (s->engine && stream_busy(s->engine)) return false;
  if (c->queued_out_bytes > OUTPUT_BUDGET_BYTES) return false;
  if (grpc_reader_idle(&s->reader)) return true;
  return c->partial_bytes <= 2 * c->w->srv->opts.max_message_bytes || s == c->favoured;
}

static void give_back_window(h2_stream *s) {
  if (s->held_bytes == 0) return;
  nghttp2_session_consume(s->conn->session, s->id, s->held_bytes);
  s->held_bytes = 0;
}

/* The stream with the most of an incomplete message buffered, or NULL: over the partial budget
 * it alone is fed, so it completes and frees its share, then the next one is picked. */
static h2_stream *most_buffered(const connection *c) {
  h2_stream *best = NULL;
  size_t best_bytes = 0;
  for (h2_stream *s = c->streams; s; s = s->next) {
    const size_t n = grpc_reader_buffered(&s->reader);
    if (n > best_bytes) {
      best = s;
      best_bytes = n;
    }
  }
  return best;
}

/* The favoured stream is done (message complete, or stream gone): hand the role on, and let the
 * release pass give the new one its held credit, or the connection would stall. */
static void pass_favour(connection *c) {
  c->favoured = most_buffered(c);
  if (c->favoured) c->input_held = true;
}

/* Gives back what streams held once the reason is gone. Runs after each event while anything
 * is held for budget reasons, so the common path never walks the streams. */
static void release_held_input(connection *c) {
  if (!c->input_held || c->closing) return;
  c->input_held = false;
  for (h2_stream *s = c->streams; s; s = s->next) {
    if (!s->held_bytes) continue;
    if (may_take_input(c, s))
      give_back_window(s);
    else if (!(s->engine && stream_busy(s->engine)))
      c->input_held = true;
  }
}

static void sink_resumed(void *io) {
  h2_stream *s = io;
  give_back_window(s);
  conn_flush(s->conn);
}

static const stream_sink engine_sink = {
    .send = sink_send, .finish = sink_finish, .resumed = sink_resumed};

/* ---- Per-stream input ------------------------------------------------------------------ */

static void answer_health(h2_stream *s, const uint8_t *msg, size_t len) {
  Grpc__Health__V1__HealthCheckRequest *in =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (!in) {
    finish_stream(s, EXTPROC_GRPC_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return;
  }
  /* The server as a whole ("") and the ext_proc service are what we serve. */
  const bool known = in->service[0] == '\0' ||
                     strcmp(in->service, "envoy.service.ext_proc.v3.ExternalProcessor") == 0;
  grpc__health__v1__health_check_request__free_unpacked(in, NULL);
  if (!known) {
    finish_stream(s, EXTPROC_GRPC_NOT_FOUND, "unknown service");
    return;
  }
  Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  out.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  if (send_message(s, &out.base) != 0) {
    finish_stream(s, EXTPROC_GRPC_INTERNAL, "out of memory");
    return;
  }
  /* Check is unary: one answer, then the status; anything more the client sends is dropped. */
  finish_stream(s, EXTPROC_GRPC_OK, NULL);
}

static void deliver(h2_stream *s, const uint8_t *msg, size_t len) {
  if (s->kind == KIND_PROCESS)
    stream_on_message(s->engine, msg, len);
  else
    answer_health(s, msg, len);
}

static void feed_input(h2_stream *s, const uint8_t *data, size_t len) {
  const size_t max = s->conn->w->srv->opts.max_message_bytes;
  while (len > 0 && !s->discard_input) {
    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    const grpc_read_status st = grpc_reader_feed(&s->reader, &data, &len, &msg, &msg_len);
    if (st == GRPC_READ_NEED_MORE) return;
    if (st == GRPC_READ_MESSAGE) {
      deliver(s, msg, msg_len);
      if (s->finished) s->discard_input = true;
      continue;
    }
    char why[160];
    uint32_t code = EXTPROC_GRPC_RESOURCE_EXHAUSTED;
    if (st == GRPC_READ_TOO_LARGE) {
      snprintf(why, sizeof(why), "received message of %zu bytes exceeds the limit of %zu bytes",
               msg_len, max);
    } else if (st == GRPC_READ_COMPRESSED) {
      code = EXTPROC_GRPC_UNIMPLEMENTED;
      snprintf(why, sizeof(why), "compressed messages are not supported");
    } else {
      snprintf(why, sizeof(why), "out of memory reassembling a message");
    }
    log_line(EXTPROC_LOG_WARN, "stream %d: %s", s->id, why);
    finish_stream(s, code, why);
    s->discard_input = true;
    grpc_reader_free(&s->reader);
  }
}

static void on_remote_end(h2_stream *s) {
  if (s->discard_input || s->finished) return;
  if (!grpc_reader_idle(&s->reader)) {
    finish_stream(s, EXTPROC_GRPC_INTERNAL, "stream ended inside a message");
    return;
  }
  if (s->kind == KIND_PROCESS)
    stream_on_half_close(s->engine);
  else /* a health check that ended without its request */
    finish_stream(s, EXTPROC_GRPC_INVALID_ARGUMENT, "no HealthCheckRequest was sent");
}

static void stream_release(h2_stream *s) {
  connection *c = s->conn;
  if (s->prev)
    s->prev->next = s->next;
  else
    c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  /* Bytes we held back still count against the connection window. */
  if (s->held_bytes && !c->closing) nghttp2_session_consume_connection(c->session, s->held_bytes);
  c->partial_bytes -= grpc_reader_buffered(&s->reader);
  grpc_reader_free(&s->reader);
  if (c->favoured == s) pass_favour(c); /* s is already unlinked */
  for (out_chunk *ch = s->out_head; ch; ch = ch->next)
    c->queued_out_bytes -= ch->len - ch->off;
  if (s->engine) stream_close(s->engine);
  while (s->out_head) {
    out_chunk *next = s->out_head->next;
    free(s->out_head);
    s->out_head = next;
  }
  free(s->message);
  free(s);
  atomic_fetch_sub(&c->w->srv->open_streams, 1);
}

/* ---- nghttp2 callbacks ----------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  connection *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2_stream *s = calloc(1, sizeof(*s));
  if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets just this stream */
  s->conn = c;
  s->id = frame->hd.stream_id;
  grpc_reader_init(&s->reader, c->w->srv->opts.max_message_bytes);
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  atomic_fetch_add(&c->w->srv->open_streams, 1);
  atomic_fetch_add(&c->w->srv->total_streams, 1);
  nghttp2_session_set_stream_user_data(session, s->id, s);
  return 0;
}

static bool bytes_equal(const uint8_t *a, size_t alen, const char *b) {
  return alen == strlen(b) && memcmp(a, b, alen) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags, (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!s) return 0;
  if (bytes_equal(name, namelen, ":path")) {
    if (bytes_equal(value, valuelen, PROCESS_PATH))
      s->kind = KIND_PROCESS;
    else if (bytes_equal(value, valuelen, HEALTH_CHECK_PATH))
      s->kind = KIND_HEALTH;
  } else if (bytes_equal(name, namelen, ":method")) {
    s->post = bytes_equal(value, valuelen, "POST");
  } else if (bytes_equal(name, namelen, "content-type")) {
    /* Protobuf-encoded gRPC only: application/grpc, or its explicit +proto form. */
    s->grpc_content_type = bytes_equal(value, valuelen, "application/grpc") ||
                           bytes_equal(value, valuelen, "application/grpc+proto");
  }
  return 0;
}

/* An HTTP-level refusal, for requests that are not gRPC at all. */
static int submit_http_error(h2_stream *s, const char *status) {
  const nghttp2_nv nva[] = {NV(":status", status, 3)};
  s->finished = s->discard_input = true;
  return nghttp2_submit_response(s->conn->session, s->id, nva, 1, NULL);
}

static int start_stream(h2_stream *s) {
  connection *c = s->conn;
  if (!s->post) return submit_http_error(s, "405");
  if (!s->grpc_content_type) return submit_http_error(s, "415");
  if (s->kind == KIND_UNKNOWN)
    return submit_trailers_only(s, EXTPROC_GRPC_UNIMPLEMENTED, "unknown method");
  if (s->kind == KIND_PROCESS) {
    const stream_poster poster = worker_poster(c->w);
    s->engine = stream_open(c->proc, &engine_sink, s, &poster);
    if (!s->engine)
      return submit_trailers_only(s, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory");
  }
  return submit_response_headers(s);
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!s) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (start_stream(s) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) on_remote_end(s);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags, (void)user_data;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!s) {
    nghttp2_session_consume_connection(session, len);
    return 0;
  }
  connection *c = s->conn;
  const size_t before = grpc_reader_buffered(&s->reader);
  if (!s->discard_input) feed_input(s, data, len);
  const size_t after = grpc_reader_buffered(&s->reader);
  c->partial_bytes = c->partial_bytes + after - before;
  if (c->favoured == s && after == 0) pass_favour(c); /* its message is complete */
  if (after > 0 && (!c->favoured || after > grpc_reader_buffered(&c->favoured->reader)))
    c->favoured = s;
  s->held_bytes += len;
  if (may_take_input(c, s)) {
    give_back_window(s);
  } else if (!(s->engine && stream_busy(s->engine))) {
    c->input_held = true;
  }
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  /* We ended the stream before Envoy did (an error): tell it to stop sending. */
  if (s && s->discard_input && nghttp2_session_get_stream_remote_close(session, s->id) == 0)
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)user_data;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!s) return 0;
  /* Envoy ends every ext_proc stream with RST_STREAM: a normal end, not an error. */
  if (error_code != NGHTTP2_NO_ERROR && log_enabled(EXTPROC_LOG_DEBUG)) {
    if (s->engine)
      extproc_log(s->engine, EXTPROC_LOG_DEBUG, "stream %d reset by peer (%s)", stream_id,
                  nghttp2_http2_strerror(error_code));
    else
      log_line(EXTPROC_LOG_DEBUG, "stream %d reset by peer (%s)", stream_id,
               nghttp2_http2_strerror(error_code));
  }
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  stream_release(s);
  return 0;
}

static nghttp2_session_callbacks *make_callbacks(void) {
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0) return NULL;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  return cb;
}

static nghttp2_option *make_options(void) {
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) return NULL;
  nghttp2_option_set_no_auto_window_update(opt, 1);
  /* Envoy resets every finished ext_proc stream, thousands per second per connection under
   * load. nghttp2's rapid-reset guard (1,000 resets faster than 33/s) would answer that with
   * GOAWAY; the concurrent-stream limit is our guard instead. */
  nghttp2_option_set_stream_reset_rate_limit(opt, UINT64_MAX, UINT64_MAX);
  return opt;
}

static int new_session(connection *c) {
  nghttp2_session_callbacks *cb = make_callbacks();
  nghttp2_option *opt = make_options();
  int rv = -1;
  if (cb && opt) rv = nghttp2_session_server_new2(&c->session, cb, c, opt);
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  if (rv != 0) return -1;
  const extproc_server_options *o = &c->w->srv->opts;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, o->max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, o->initial_window_bytes}};
  if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings, 2) != 0) return -1;
  return nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                               CONNECTION_WINDOW_BYTES);
}

/* ---- Socket I/O ------------------------------------------------------------------------ */

static void on_closed(uv_handle_t *h) {
  connection *c = h->data;
  free(c->wbuf);
  free(c);
}

static void connection_close(connection *c) {
  if (c->closing) return;
  c->closing = true;
  worker *w = c->w;
  if (c->prev)
    c->prev->next = c->next;
  else
    w->connections = c->next;
  if (c->next) c->next->prev = c->prev;
  /* nghttp2_session_del does not call on_stream_close: release streams ourselves. */
  while (c->streams)
    stream_release(c->streams);
  nghttp2_session_del(c->session);
  c->session = NULL;
  uv_close(&c->h.handle, on_closed);
  worker_connection_gone(w);
}

void connections_close_all(worker *w) {
  while (w->connections)
    connection_close(w->connections);
}

void connections_drain_all(worker *w) {
  /* A drained connection with no open stream closes at once and unlinks itself. */
  for (connection *c = w->connections, *next; c; c = next) {
    next = c->next;
    nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->session), NGHTTP2_NO_ERROR,
                          NULL, 0);
    conn_flush(c);
  }
}

static void on_write(uv_write_t *req, int status) {
  connection *c = req->data;
  c->writing = false;
  if (c->closing) return;
  if (status < 0) {
    connection_close(c);
    return;
  }
  conn_flush(c);
}

static bool wbuf_append(connection *c, const uint8_t *data, size_t len) {
  if (c->wlen + len > c->wcap) {
    size_t cap = c->wcap ? c->wcap : 16384;
    while (cap < c->wlen + len)
      cap *= 2;
    uint8_t *nb = realloc(c->wbuf, cap);
    if (!nb) return false;
    c->wbuf = nb;
    c->wcap = cap;
  }
  memcpy(c->wbuf + c->wlen, data, len);
  c->wlen += len;
  return true;
}

/* Writes everything nghttp2 has queued in one go: try a direct write first (the common case,
 * no callback), and hand the rest to libuv. */
static void conn_flush(connection *c) {
  while (!c->writing && !c->closing) {
    release_held_input(c); /* output drained last round may let input flow again */
    c->wlen = 0;
    for (;;) {
      const uint8_t *data;
      const ssize_t n = nghttp2_session_mem_send(c->session, &data);
      if (n < 0 || (n > 0 && !wbuf_append(c, data, (size_t)n))) {
        connection_close(c);
        return;
      }
      if (n == 0 || c->wlen >= MAX_WRITE_BYTES) break;
    }
    if (c->wlen == 0) {
      if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session))
        connection_close(c);
      return;
    }
    uv_buf_t buf = uv_buf_init((char *)c->wbuf, (unsigned)c->wlen);
    const int written = uv_try_write(&c->h.stream, &buf, 1);
    if (written == (int)c->wlen) continue;
    if (written < 0 && written != UV_EAGAIN) {
      connection_close(c);
      return;
    }
    if (written > 0)
      buf = uv_buf_init((char *)c->wbuf + written, (unsigned)(c->wlen - (size_t)written));
    c->write_req.data = c;
    if (uv_write(&c->write_req, &c->h.stream, &buf, 1, on_write) != 0) {
      connection_close(c);
      return;
    }
    c->writing = true;
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  connection *c = h->data;
  *buf = uv_buf_init((char *)c->w->read_buf, sizeof(c->w->read_buf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  connection *c = stream->data;
  if (nread < 0) {
    if (nread != UV_EOF)
      log_line(EXTPROC_LOG_DEBUG, "connection read: %s", uv_strerror((int)nread));
    connection_close(c);
    return;
  }
  if (nread == 0) return;
  const ssize_t rv =
      nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread);
  if (rv < 0) {
    log_line(EXTPROC_LOG_WARN, "HTTP/2 error from peer: %s", nghttp2_strerror((int)rv));
    /* nghttp2 has queued a GOAWAY for protocol errors: try to send it, then close. */
    conn_flush(c);
    connection_close(c);
    return;
  }
  conn_flush(c);
}

void connection_accept(listener *l) {
  worker *w = l->w;
  connection *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->w = w;
  c->proc = l->spec->proc;
  int rv =
      l->spec->is_unix ? uv_pipe_init(&w->loop, &c->h.pipe, 0) : uv_tcp_init(&w->loop, &c->h.tcp);
  if (rv != 0) {
    free(c);
    return;
  }
  c->h.handle.data = c;
  c->closing = true; /* until fully set up: makes an early close free everything */
  if (uv_accept(&l->h.stream, &c->h.stream) != 0 || new_session(c) != 0) {
    if (c->session) nghttp2_session_del(c->session);
    uv_close(&c->h.handle, on_closed);
    return;
  }
  c->closing = false;
  if (!l->spec->is_unix) uv_tcp_nodelay(&c->h.tcp, 1);
  c->next = w->connections;
  if (w->connections) w->connections->prev = c;
  w->connections = c;
  if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
    connection_close(c);
    return;
  }
  conn_flush(c); /* our SETTINGS */
}
