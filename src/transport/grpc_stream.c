/* Per-stream gRPC handling: a stream is routed by its path (ext_proc's Process, the health
 * service's Check and Watch (health.c), or UNIMPLEMENTED), refused at the HTTP level when it is
 * not gRPC at all, its DATA is reassembled into messages for the engine or the health service,
 * and its replies are queued behind one data provider that ends with the trailers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/encode.h"
#include "transport/connection.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
#define HEALTH_CHECK_PATH "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH_PATH "/grpc.health.v1.Health/Watch"

/* What an open stream holds besides its message buffer (HTTP/2 and gRPC state, the request's
 * arena), about 2.2 KiB as measured in bench/RESULTS.md: counted towards the next memory trim
 * when it goes. */
enum { STREAM_FOOTPRINT_BYTES = 2048 };

/* ---- Output ---------------------------------------------------------------------------- */

static int queue_output(h2_stream *s, size_t len, uint8_t **dst) {
  out_chunk *ch = malloc(sizeof(*ch) + len);
  if (!ch) return EXTPROC_ENOMEM;
  ch->len = len;
  ch->off = 0;
  queue_push(&s->out, &ch->link);
  s->conn->queued_out_bytes += len;
  *dst = ch->data;
  return 0;
}

int h2_stream_send(h2_stream *s, const ProtobufCMessage *msg) {
  if (s->finished) return 0; /* the outcome is already sent or decided: drop quietly */
  encode_plan plan;
  const size_t len = encode_size(msg, &plan);
  uint8_t *dst;
  if (len > UINT32_MAX || queue_output(s, GRPC_PREFIX_BYTES + len, &dst) != 0)
    return EXTPROC_ENOMEM;
  grpc_write_prefix(dst, (uint32_t)len);
  encode_pack(msg, &plan, dst + GRPC_PREFIX_BYTES);
  nghttp2_session_resume_data(s->conn->session, s->id);
  return 0;
}

void h2_stream_finish(h2_stream *s, uint32_t status, const char *message) {
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
  while (n < length && !queue_empty(&s->out)) {
    out_chunk *ch = LIST_ITEM(s->out.head, out_chunk, link);
    size_t take = ch->len - ch->off;
    if (take > length - n) take = length - n;
    memcpy(buf + n, ch->data + ch->off, take);
    n += take;
    ch->off += take;
    s->conn->queued_out_bytes -= take;
    if (ch->off == ch->len) {
      queue_pop(&s->out);
      if (ch->len > GRPC_KEEP_BUFFER_BYTES) worker_note_freed(s->conn->w, ch->len);
      free(ch);
    }
  }
  if (queue_empty(&s->out) && s->finished) {
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

static int sink_send(void *io, const ProtobufCMessage *reply) { return h2_stream_send(io, reply); }

static void sink_finish(void *io, uint32_t status, const char *message) {
  h2_stream_finish(io, status, message);
}

static void sink_resumed(void *io) {
  h2_stream *s = io;
  flow_give_back(s);
  conn_flush(s->conn);
}

static const stream_sink engine_sink = {
    .send = sink_send, .finish = sink_finish, .resumed = sink_resumed};

/* ---- Per-stream input ------------------------------------------------------------------ */

static void deliver(h2_stream *s, const uint8_t *msg, size_t len) {
  if (s->kind == KIND_PROCESS)
    stream_on_message(s->engine, msg, len);
  else
    health_on_message(s, msg, len);
}

static void feed_input(h2_stream *s, const uint8_t *data, size_t len) {
  const size_t max = s->conn->w->cfg->max_message_bytes;
  while (len > 0 && !s->discard_input) {
    const uint8_t *msg = NULL;
    size_t msg_len = 0;
    const grpc_read_status st = grpc_reader_feed(&s->reader, &data, &len, &msg, &msg_len);
    if (st == GRPC_READ_NEED_MORE) return;
    if (st == GRPC_READ_MESSAGE) {
      deliver(s, msg, msg_len);
      if (s->finished) s->discard_input = true;
      worker_note_freed(s->conn->w, grpc_reader_release_spare(&s->reader));
      if (s->conn->w->spare.buf) worker_note_spare(s->conn->w);
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
    if (st == GRPC_READ_TOO_LARGE)
      limit_hit(s->conn->w->stats, LIMIT_MESSAGE_SIZE, "connection from %s, stream %d: %s",
                s->conn->peer, s->id, why);
    else if (s->engine)
      extproc_log(s->engine, EXTPROC_LOG_WARN, "stream %d: %s", s->id, why);
    else
      conn_log(s->conn, EXTPROC_LOG_WARN, "stream %d: %s", s->id, why);
    h2_stream_finish(s, code, why);
    s->discard_input = true;
    worker_note_freed(s->conn->w, s->reader.buf_cap);
    grpc_reader_free(&s->reader);
  }
}

void h2_stream_on_remote_end(h2_stream *s) {
  if (s->discard_input || s->finished) return;
  if (!grpc_reader_idle(&s->reader)) {
    h2_stream_finish(s, EXTPROC_GRPC_INTERNAL, "stream ended inside a message");
    return;
  }
  if (s->kind == KIND_PROCESS)
    stream_on_half_close(s->engine);
  else
    health_on_remote_end(s);
}

/* ---- Stream lifecycle ------------------------------------------------------------------ */

h2_stream *h2_stream_new(connection *c, int32_t id) {
  h2_stream *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  s->conn = c;
  s->id = id;
  s->watch_sent = -1;
  grpc_reader_init(&s->reader, c->w->cfg->max_message_bytes, &c->w->spare);
  dlist_push_front(&c->streams, &s->link);
  atomic_fetch_add(&c->w->stats->open_streams, 1);
  atomic_fetch_add(&c->w->stats->total_streams, 1);
  return s;
}

static bool bytes_equal(const uint8_t *a, size_t alen, const char *b) {
  return alen == strlen(b) && memcmp(a, b, alen) == 0;
}

void h2_stream_on_header(h2_stream *s, const uint8_t *name, size_t namelen, const uint8_t *value,
                         size_t valuelen) {
  if (bytes_equal(name, namelen, ":path")) {
    if (bytes_equal(value, valuelen, PROCESS_PATH))
      s->kind = KIND_PROCESS;
    else if (bytes_equal(value, valuelen, HEALTH_CHECK_PATH))
      s->kind = KIND_HEALTH_CHECK;
    else if (bytes_equal(value, valuelen, HEALTH_WATCH_PATH))
      s->kind = KIND_HEALTH_WATCH;
  } else if (bytes_equal(name, namelen, ":method")) {
    s->post = bytes_equal(value, valuelen, "POST");
  } else if (bytes_equal(name, namelen, "content-type")) {
    /* Protobuf-encoded gRPC only: application/grpc, or its explicit +proto form. */
    s->grpc_content_type = bytes_equal(value, valuelen, "application/grpc") ||
                           bytes_equal(value, valuelen, "application/grpc+proto");
  }
}

/* An HTTP-level refusal, for requests that are not gRPC at all. */
static int submit_http_error(h2_stream *s, const char *status) {
  const nghttp2_nv nva[] = {NV(":status", status, 3)};
  s->finished = s->discard_input = true;
  return nghttp2_submit_response(s->conn->session, s->id, nva, 1, NULL);
}

int h2_stream_start(h2_stream *s) {
  connection *c = s->conn;
  if (!s->post) return submit_http_error(s, "405");
  if (!s->grpc_content_type) return submit_http_error(s, "415");
  if (s->kind == KIND_UNKNOWN)
    return submit_trailers_only(s, EXTPROC_GRPC_UNIMPLEMENTED, "unknown method");
  if (s->kind == KIND_PROCESS && !c->proc)
    return submit_trailers_only(s, EXTPROC_GRPC_UNIMPLEMENTED,
                                "this address serves only grpc.health.v1.Health");
  if (s->kind == KIND_PROCESS) {
    const stream_poster poster = worker_poster(c->w);
    s->engine = stream_open(c->proc, &engine_sink, s, &poster);
    if (!s->engine)
      return submit_trailers_only(s, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    (void)stream_set_peer(s->engine, c->peer); /* out of memory: lines go without it */
  }
  return submit_response_headers(s);
}

void h2_stream_on_data(h2_stream *s, const uint8_t *data, size_t len) {
  const size_t before = grpc_reader_buffered(&s->reader);
  if (!s->discard_input) feed_input(s, data, len);
  flow_on_data(s, len, before);
}

void h2_stream_release(h2_stream *s) {
  connection *c = s->conn;
  dlist_remove(&c->streams, &s->link);
  flow_on_release(s);
  worker_note_freed(c->w, s->reader.buf_cap + STREAM_FOOTPRINT_BYTES);
  grpc_reader_free(&s->reader);
  if (s->engine) stream_close(s->engine);
  queue_link *l;
  while ((l = queue_pop(&s->out)))
    free(LIST_ITEM(l, out_chunk, link));
  free(s->message);
  free(s);
  atomic_fetch_sub(&c->w->stats->open_streams, 1);
  if (!c->streams.head) conn_note_idle(c);
}
