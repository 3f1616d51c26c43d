/* Socket I/O and the nghttp2 session of one connection from Envoy.
 *
 * Output is coalesced: frames produced while handling an event are written with one write call
 * at the end of that event (conn_flush), not one per frame, from a buffer the worker's
 * connections share; a connection has a buffer of its own only while the socket has not taken
 * all of a round. Per-stream gRPC handling is in grpc_stream.c, the input budgets in flow.c, the
 * handshake, idle and keepalive deadlines in connection_timeouts.c.
 *
 * On a TLS connection the same path carries records: what is read is handed to OpenSSL and what
 * it decrypts to nghttp2; a round's frames are encrypted in one go and written as one (tls.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "transport/connection.h"
#include "transport/tls.h"

/* Connection-level receive window: large enough that many concurrent streams each with a
 * message in flight do not stall one another, small enough to bound what a peer can push. */
enum { CONNECTION_WINDOW_BYTES = 16 << 20 };
/* A single write is capped so one busy connection cannot starve the loop. */
enum { MAX_WRITE_BYTES = 1 << 20 };

static connection *connection_of(const dlist_link *l) { return LIST_ITEM(l, connection, link); }

/* ---- nghttp2 session callbacks: each hands the frame to its stream -------------------- */

static bool is_request_headers(const nghttp2_frame *frame) {
  return frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST;
}

/* Each open stream holds its request state (a few KiB) for as long as the peer keeps it open, and
 * no timeout ends a stream a live peer keeps: past max_open_streams, over the whole server, a
 * new stream is refused with REFUSED_STREAM, which tells the client (Envoy retries such a
 * stream) that nothing of it was processed. */
static bool refuse_over_stream_limit(connection *c, int32_t id) {
  worker *w = c->w;
  if (atomic_load_explicit(&w->stats->open_streams, memory_order_relaxed) <
      w->cfg->max_open_streams)
    return false;
  nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
  limit_hit(w->stats, LIMIT_OPEN_STREAMS,
            "connection from %s: stream %d refused: %llu streams open (max_open_streams)", c->peer,
            id, (unsigned long long)w->cfg->max_open_streams);
  return true;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  if (!is_request_headers(frame)) return 0;
  if (refuse_over_stream_limit(user_data, frame->hd.stream_id)) return 0;
  h2_stream *s = h2_stream_new(user_data, frame->hd.stream_id);
  if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets just this stream */
  nghttp2_session_set_stream_user_data(session, s->id, s);
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags, (void)user_data;
  if (!is_request_headers(frame)) return 0;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (s) h2_stream_on_header(s, name, namelen, value, valuelen);
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  connection *c = user_data;
  /* nghttp2 checks the preface, and that SETTINGS comes first, before any frame gets here. */
  if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK))
    conn_note_handshake(c);
  if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) conn_note_ping_ack(c);
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
  if (!s) return 0;
  if (is_request_headers(frame) && h2_stream_start(s) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) h2_stream_on_remote_end(s);
  return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)flags, (void)user_data;
  h2_stream *s = nghttp2_session_get_stream_user_data(session, stream_id);
  if (s)
    h2_stream_on_data(s, data, len);
  else
    nghttp2_session_consume_connection(session, len);
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
      conn_log(s->conn, EXTPROC_LOG_DEBUG, "stream %d reset by peer (%s)", stream_id,
               nghttp2_http2_strerror(error_code));
  }
  nghttp2_session_set_stream_user_data(session, stream_id, NULL);
  h2_stream_release(s);
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
  /* A closed stream is forgotten at once. nghttp2 otherwise keeps closed streams (up to the
   * concurrent-stream limit) for RFC 7540 priorities, which Envoy does not send on ext_proc
   * connections: memory per connection that only grows with its busiest moment. */
  nghttp2_option_set_no_closed_streams(opt, 1);
  return opt;
}

static int new_session(connection *c) {
  nghttp2_session_callbacks *cb = make_callbacks();
  nghttp2_option *opt = make_options();
  int rv = -1;
  idle_pages_init(&c->pages);
  nghttp2_mem mem = idle_pages_allocator(&c->pages); /* nghttp2 keeps a copy */
  if (cb && opt) rv = nghttp2_session_server_new3(&c->session, cb, c, opt, &mem);
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  if (rv != 0) return -1;
  const transport_config *cfg = c->w->cfg;
  /* SETTINGS_HEADER_TABLE_SIZE stays at its default (4,096): Envoy's encoder indexes the
   * headers it repeats on every stream (path, content-type, te, its own) in that table. RFC 9218's
   * NO_RFC7540_PRIORITIES tells the peer priorities are not used, so nghttp2 keeps no priority
   * tree of idle and closed streams. */
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->initial_window_bytes},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1}};
  if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings,
                              sizeof(settings) / sizeof(settings[0])) != 0)
    return -1;
  return nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0,
                                               CONNECTION_WINDOW_BYTES);
}

/* ---- Socket I/O ------------------------------------------------------------------------ */

static void on_closed(uv_handle_t *h) {
  connection *c = h->data;
  if (--c->handles_open > 0) return;
  tls_conn_free(c->tls); /* not in conn_close: a read may still be decrypting into it */
  free(c->pending);
  idle_pages_free(&c->pages); /* the session, their only user, is deleted */
  free(c);
}

static void close_handles(connection *c) {
  uv_close((uv_handle_t *)&c->timer, on_closed);
  uv_close(&c->h.handle, on_closed);
}

/* The connection's max_connections slot is free again. */
static void release_slot(worker *w) { atomic_fetch_sub(&w->stats->connections_open, 1); }

void conn_close(connection *c) {
  if (c->closing) return;
  c->closing = true;
  worker *w = c->w;
  dlist_remove(&w->connections, &c->link);
  /* nghttp2_session_del does not call on_stream_close: release streams ourselves. */
  while (c->streams.head)
    h2_stream_release(stream_of(c->streams.head));
  nghttp2_session_del(c->session);
  c->session = NULL;
  close_handles(c);
  release_slot(w);
  worker_connection_gone(w);
}

void conn_goaway(connection *c, uint32_t error_code, const char *debug) {
  nghttp2_submit_goaway(c->session, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(c->session), error_code,
                        (const uint8_t *)debug, debug ? strlen(debug) : 0);
  conn_flush(c);
}

void connections_close_all(worker *w) {
  uint64_t cut = 0;
  while (w->connections.head) {
    connection *c = connection_of(w->connections.head);
    for (const dlist_link *l = c->streams.head; l; l = l->next)
      cut++;
    conn_close(c);
  }
  atomic_fetch_add(&w->stats->streams_cut, cut);
}

void connections_drain_all(worker *w) {
  /* A drained connection with no open stream closes at once and unlinks itself. */
  for (dlist_link *l = w->connections.head, *next; l; l = next) {
    next = l->next;
    conn_goaway(connection_of(l), NGHTTP2_NO_ERROR, NULL);
  }
}

static void on_write(uv_write_t *req, int status) {
  connection *c = req->data;
  free(c->pending);
  c->pending = NULL;
  if (c->closing) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  conn_flush(c);
}

/* Appends to the worker's output buffer, which holds one round of output of one connection. */
static bool out_append(worker *w, size_t *len, const uint8_t *data, size_t n) {
  if (*len + n > w->out_cap) {
    size_t cap = w->out_cap ? w->out_cap : 16384;
    while (cap < *len + n)
      cap *= 2;
    uint8_t *nb = realloc(w->out_buf, cap);
    if (!nb) return false;
    w->out_buf = nb;
    w->out_cap = cap;
  }
  memcpy(w->out_buf + *len, data, n);
  *len += n;
  return true;
}

/* Hands what the socket did not take to libuv, in a copy of the connection's own (freed once
 * written), so the worker's buffer is free for the next connection. */
static bool write_rest(connection *c, const uint8_t *data, size_t len) {
  c->pending = malloc(len);
  if (!c->pending) return false;
  memcpy(c->pending, data, len);
  uv_buf_t buf = uv_buf_init((char *)c->pending, (unsigned)len);
  c->write_req.data = c;
  if (uv_write(&c->write_req, &c->h.stream, &buf, 1, on_write) == 0) return true;
  free(c->pending);
  c->pending = NULL;
  return false;
}

/* Gathers what nghttp2 has queued, up to MAX_WRITE_BYTES, into the worker's output buffer. */
static bool gather_frames(connection *c, size_t *len) {
  for (;;) {
    const uint8_t *data;
    const ssize_t n = nghttp2_session_mem_send(c->session, &data);
    if (n < 0 || (n > 0 && !out_append(c->w, len, data, (size_t)n))) return false;
    if (n == 0 || *len >= MAX_WRITE_BYTES) return true;
  }
}

/* One round's bytes for the socket: nghttp2's frames, encrypted on TLS, where the handshake's
 * messages (or an alert) come first. Frames wait for the client's first decrypted bytes, as on
 * cleartext they wait for its first bytes (see connection_accept). */
static bool next_round(connection *c, const uint8_t **out, size_t *out_len) {
  worker *w = c->w;
  size_t len = 0;
  const bool frames = !c->tls || (tls_conn_established(c->tls) && c->head_len > 0);
  if (frames && !gather_frames(c, &len)) return false;
  if (!c->tls) {
    *out = w->out_buf;
    *out_len = len;
    return true;
  }
  *out_len = 0;
  if (!tls_conn_output(c->tls, w->out_buf, len, &w->tls_buf, &w->tls_cap, out_len)) return false;
  *out = w->tls_buf;
  return true;
}

/* Writes everything nghttp2 has queued in one go: try a direct write first (the common case,
 * no callback), and hand the rest to libuv. */
void conn_flush(connection *c) {
  worker *w = c->w;
  while (!c->pending && !c->closing) {
    flow_release_held(c); /* output drained last round may let input flow again */
    const uint8_t *data;
    size_t len;
    if (!next_round(c, &data, &len)) {
      conn_close(c);
      return;
    }
    if (len == 0) {
      if (nghttp2_session_want_read(c->session) || nghttp2_session_want_write(c->session)) return;
      /* HTTP/2 is done with the connection (a GOAWAY went out, no stream is open): a TLS peer is
       * told the session ends (close_notify) before the socket closes. */
      if (c->tls && tls_conn_shutdown(c->tls)) continue;
      conn_close(c);
      return;
    }
    atomic_fetch_add_explicit(&w->stats->bytes_sent_total, len, memory_order_relaxed);
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
    const int written = uv_try_write(&c->h.stream, &buf, 1);
    if (written == (int)len) continue;
    if (written < 0 && written != UV_EAGAIN) {
      conn_close(c);
      return;
    }
    const size_t off = written > 0 ? (size_t)written : 0;
    if (!write_rest(c, data + off, len - off)) {
      conn_close(c);
      return;
    }
  }
}

void conn_write_now(connection *c, const uint8_t *data, size_t len) {
  if (c->closing || c->pending) return; /* never ahead of output already queued */
  if (c->tls) {
    size_t n = 0;
    if (!tls_conn_output(c->tls, data, len, &c->w->tls_buf, &c->w->tls_cap, &n)) return;
    data = c->w->tls_buf;
    len = n;
  }
  if (len == 0) return;
  uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
  (void)uv_try_write(&c->h.stream, &buf, 1);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  connection *c = h->data;
  *buf = uv_buf_init((char *)c->w->read_buf, sizeof(c->w->read_buf));
}

/* Keeps the connection's first bytes for peer_refuse_foreign(); true on its first read. */
static bool keep_head(connection *c, const uint8_t *data, size_t len) {
  const bool first = c->head_len == 0;
  if (c->head_len < sizeof(c->head)) {
    const size_t take = len < sizeof(c->head) - c->head_len ? len : sizeof(c->head) - c->head_len;
    memcpy(c->head + c->head_len, data, take);
    c->head_len += (uint8_t)take;
  }
  return first;
}

/* Hands input to nghttp2. Returns false if the connection was closed. */
static bool receive_frames(connection *c, const uint8_t *data, size_t len) {
  const bool first_read = keep_head(c, data, len);
  const ssize_t rv = nghttp2_session_mem_recv(c->session, data, len);
  if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
    /* The first read usually holds a whole HTTP/1.x request line; later ones only the head. */
    peer_refuse_foreign(c, first_read ? data : c->head, first_read ? len : c->head_len);
    conn_close(c);
    return false;
  }
  if (rv < 0) {
    conn_log(c, EXTPROC_LOG_WARN, "HTTP/2 error from peer: %s", nghttp2_strerror((int)rv));
    /* nghttp2 has queued a GOAWAY for protocol errors: try to send it, then close. */
    conn_flush(c);
    conn_close(c);
    return false;
  }
  return !c->closing;
}

/* The TLS handshake failed: counted, one line saying why (or what the client speaks instead of
 * TLS), the alert sent to a TLS client, closed. */
static void refuse_handshake(connection *c) {
  atomic_fetch_add(&c->w->stats->tls_handshake_failures_total, 1);
  char why[256];
  tls_conn_error(c->tls, why, sizeof(why));
  if (peer_refuse_handshake(c, why)) conn_write_now(c, NULL, 0);
  conn_close(c);
}

/* Bytes read on a TLS connection: the handshake first, then records to decrypt. */
static void on_tls_input(connection *c, const uint8_t *data, size_t len) {
  if (!tls_conn_established(c->tls)) keep_head(c, data, len); /* to name a non-TLS client */
  if (!tls_conn_feed(c->tls, data, len)) {
    conn_close(c);
    return;
  }
  if (!tls_conn_established(c->tls)) {
    const tls_step step = tls_conn_handshake(c->tls);
    if (step == TLS_STEP_FAILED) {
      refuse_handshake(c);
      return;
    }
    if (step == TLS_STEP_WANT_INPUT) {
      conn_flush(c); /* the server's handshake messages */
      return;
    }
    c->head_len = 0; /* from here on the head is the decrypted stream's */
    if (log_enabled(EXTPROC_LOG_DEBUG)) {
      char what[128];
      tls_conn_describe(c->tls, what, sizeof(what));
      conn_log(c, EXTPROC_LOG_DEBUG, "TLS handshake done: %s", what);
    }
  }
  /* The read buffer's bytes are OpenSSL's now: it takes the decrypted ones. */
  uint8_t *plain = c->w->read_buf;
  for (;;) {
    const ssize_t n = tls_conn_read(c->tls, plain, sizeof(c->w->read_buf));
    if (n == 0) break;
    if (n < 0) { /* close_notify, or a record that does not decrypt */
      conn_close(c);
      return;
    }
    if (!receive_frames(c, plain, (size_t)n)) return;
  }
  conn_flush(c);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  connection *c = stream->data;
  if (nread < 0) {
    if (nread != UV_EOF)
      conn_log(c, EXTPROC_LOG_DEBUG, "connection read: %s", uv_strerror((int)nread));
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  c->last_input_ms = uv_now(&c->w->loop);
  /* Input on a connection without streams (a PING, SETTINGS, WINDOW_UPDATE) may make nghttp2
   * write its frame buffer again after the pages were given back: sweep once more. */
  if (!c->streams.head) worker_release_idle_later(c->w);
  atomic_fetch_add_explicit(&c->w->stats->bytes_received_total, (uint64_t)nread,
                            memory_order_relaxed);
  const uint8_t *data = (const uint8_t *)buf->base;
  if (c->tls)
    on_tls_input(c, data, (size_t)nread);
  else if (receive_frames(c, data, (size_t)nread))
    conn_flush(c);
}

/* Undoes a connection whose setup failed after its handles were initialized. */
static void abort_setup(connection *c) {
  c->closing = true;
  if (c->session) nghttp2_session_del(c->session);
  c->session = NULL;
  close_handles(c);
  release_slot(c->w);
}

void connection_accept(listener *l, int fd, const char *peer) {
  worker *w = l->w;
  connection *c = calloc(1, sizeof(*c));
  /* Initializing a TCP or pipe handle or a timer allocates nothing and cannot fail. */
  if (!c || uv_timer_init(&w->loop, &c->timer) != 0 ||
      (l->spec->is_unix ? uv_pipe_init(&w->loop, &c->h.pipe, 0)
                        : uv_tcp_init(&w->loop, &c->h.tcp)) != 0) {
    free(c);
    close(fd);
    release_slot(w);
    return;
  }
  c->w = w;
  c->proc = l->spec->proc;
  c->handles_open = 2;
  c->h.handle.data = c->timer.data = c;
  snprintf(c->peer, sizeof(c->peer), "%s", peer);
  const int opened = l->spec->is_unix ? uv_pipe_open(&c->h.pipe, fd) : uv_tcp_open(&c->h.tcp, fd);
  if (opened != 0) close(fd); /* not the handle's */
  /* Unix sockets stay cleartext: only processes on this host reach them. */
  const bool tls = w->cfg->tls && !l->spec->is_unix;
  if (opened != 0 || new_session(c) != 0 || (tls && !(c->tls = tls_conn_new(w->cfg->tls)))) {
    abort_setup(c);
    return;
  }
  if (!l->spec->is_unix) uv_tcp_nodelay(&c->h.tcp, 1);
  dlist_push_front(&w->connections, &c->link);
  /* Our SETTINGS go out with the first answer to the client's bytes (RFC 9113 allows the
   * server's preface to wait): a client that is not an HTTP/2 client then gets no binary
   * frame ahead of the plain answer peer_refuse_foreign() gives it. */
  if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  conn_deadlines_start(c);
}
