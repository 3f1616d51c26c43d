/* A small blocking HTTP/2 gRPC client for tests (see h2_client.h). */
#include "h2_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "base/list.h"
#include "grpc/health/v1/health.pb-c.h"
#include "transport/grpc_frame.h"

enum { READ_CHUNK = 64 * 1024 };

/* Bytes queued on a stream's request body, sent in DATA frames of at most frame_bytes. */
typedef struct out_seg {
  queue_link link;
  size_t len, off;
  size_t frame_bytes; /* 0: no limit */
  uint8_t data[];
} out_seg;

typedef struct stream_rec {
  h2_client_stream pub;
  h2_client *client;
  queue out;          /* out_seg, in order */
  bool half_close;    /* END_STREAM once out is drained */
  grpc_reader reader; /* reassembles the server's gRPC messages */
  size_t message_cap;
} stream_rec;

struct h2_client {
  int fd;
  SSL_CTX *ssl_ctx; /* TLS mode only (h2_client_connect_tls) */
  SSL *ssl;
  nghttp2_session *session;
  int timeout_ms;
  size_t max_message; /* h2_client_set_max_message(); SIZE_MAX by default */
  bool settings_received;
  bool goaway;
  uint32_t goaway_error;
  bool disconnected;
  uint64_t pings_received;
  uint64_t data_frames_sent;
  uint64_t data_bytes_sent;
  /* Serialized output not yet written. */
  uint8_t *wbuf;
  size_t wlen, woff, wcap;
  /* Stream records by (id - 1) / 2: client stream ids are odd. */
  stream_rec **streams;
  size_t streams_cap;
  size_t live;
};

/* ---- Helpers --------------------------------------------------------------------------- */

static bool quiet;                   /* h2_client_set_quiet() */
static _Thread_local char last[512]; /* h2_client_last_error() */

/* Says why something failed: kept for h2_client_last_error(), and printed unless quiet. */
__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last, sizeof(last), fmt, ap);
  va_end(ap);
  if (!quiet) fprintf(stderr, "h2_client: %s\n", last);
}

void h2_client_set_quiet(bool on) { quiet = on; }

const char *h2_client_last_error(void) { return last; }

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static stream_rec *find(const h2_client *c, int32_t id) {
  if (id <= 0 || (id & 1) == 0) return NULL;
  const size_t i = (size_t)(id - 1) / 2;
  return i < c->streams_cap ? c->streams[i] : NULL;
}

static bool put(h2_client *c, stream_rec *r) {
  const size_t i = (size_t)(r->pub.id - 1) / 2;
  if (i >= c->streams_cap) {
    size_t cap = c->streams_cap ? c->streams_cap : 64;
    while (cap <= i)
      cap *= 2;
    stream_rec **grown = realloc(c->streams, cap * sizeof(*grown));
    if (!grown) return false;
    memset(grown + c->streams_cap, 0, (cap - c->streams_cap) * sizeof(*grown));
    c->streams = grown;
    c->streams_cap = cap;
  }
  c->streams[i] = r;
  return true;
}

static void free_output(stream_rec *r) {
  queue_link *l;
  while ((l = queue_pop(&r->out)))
    free(LIST_ITEM(l, out_seg, link));
}

static void free_rec(stream_rec *r) {
  free_output(r);
  for (size_t i = 0; i < r->pub.message_count; i++)
    free(r->pub.messages[i].data);
  free(r->pub.messages);
  free(r->pub.content_type);
  free(r->pub.grpc_message);
  grpc_reader_free(&r->reader);
  free(r);
}

static char *dup_bytes(const uint8_t *p, size_t len) {
  char *s = malloc(len + 1);
  if (!s) return NULL;
  memcpy(s, p, len);
  s[len] = '\0';
  return s;
}

static int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* grpc-message is percent-encoded. */
static char *percent_decode(const uint8_t *p, size_t len) {
  char *s = malloc(len + 1);
  if (!s) return NULL;
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] == '%' && i + 2 < len && hex_value((char)p[i + 1]) >= 0 &&
        hex_value((char)p[i + 2]) >= 0) {
      s[n++] = (char)(hex_value((char)p[i + 1]) * 16 + hex_value((char)p[i + 2]));
      i += 2;
    } else {
      s[n++] = (char)p[i];
    }
  }
  s[n] = '\0';
  return s;
}

static bool name_is(const uint8_t *name, size_t len, const char *want) {
  return len == strlen(want) && memcmp(name, want, len) == 0;
}

/* ---- Received gRPC messages ------------------------------------------------------------ */

static bool store_message(stream_rec *r, const uint8_t *data, size_t len) {
  h2_client_stream *s = &r->pub;
  if (s->message_count == r->message_cap) {
    const size_t cap = r->message_cap ? r->message_cap * 2 : 4;
    h2_client_msg *grown = realloc(s->messages, cap * sizeof(*grown));
    if (!grown) return false;
    s->messages = grown;
    r->message_cap = cap;
  }
  uint8_t *copy = malloc(len ? len : 1);
  if (!copy) return false;
  if (len) memcpy(copy, data, len);
  s->messages[s->message_count++] = (h2_client_msg){.data = copy, .len = len};
  return true;
}

/* Cuts the response body into gRPC messages, however the server split it into frames. After a
 * framing error the rest of the body is ignored. Returns false on out-of-memory. */
static bool feed_response(stream_rec *r, const uint8_t *data, size_t len) {
  while (len > 0 && !r->pub.framing_error) {
    const uint8_t *msg;
    size_t msg_len;
    switch (grpc_reader_feed(&r->reader, &data, &len, &msg, &msg_len)) {
    case GRPC_READ_NEED_MORE: return true;
    case GRPC_READ_MESSAGE:
      if (!store_message(r, msg, msg_len)) return false;
      break;
    case GRPC_READ_NO_MEMORY: return false;
    default: r->pub.framing_error = true; break; /* compressed, or over the client's limit */
    }
  }
  return true;
}

/* ---- nghttp2 callbacks ----------------------------------------------------------------- */

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)session, (void)flags;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  stream_rec *r = find(user_data, frame->hd.stream_id);
  if (!r) return 0;
  h2_client_stream *s = &r->pub;
  if (name_is(name, namelen, ":status")) {
    char digits[8] = {0};
    memcpy(digits, value, valuelen < sizeof(digits) - 1 ? valuelen : sizeof(digits) - 1);
    s->http_status = atoi(digits);
  } else if (name_is(name, namelen, "content-type") &&
             frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    free(s->content_type);
    s->content_type = dup_bytes(value, valuelen);
  } else if (name_is(name, namelen, "grpc-status")) {
    /* A status is a small decimal number; anything else counts as malformed. */
    int status = valuelen ? 0 : -2;
    for (size_t i = 0; i < valuelen && status >= 0; i++)
      status =
          value[i] >= '0' && value[i] <= '9' && status < 100000 ? status * 10 + value[i] - '0' : -2;
    s->grpc_status = status;
  } else if (name_is(name, namelen, "grpc-message")) {
    free(s->grpc_message);
    s->grpc_message = percent_decode(value, valuelen);
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)session;
  h2_client *c = user_data;
  switch (frame->hd.type) {
  case NGHTTP2_SETTINGS:
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c->settings_received = true;
    return 0;
  case NGHTTP2_PING:
    if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) c->pings_received++;
    return 0;
  case NGHTTP2_GOAWAY:
    c->goaway = true;
    c->goaway_error = frame->goaway.error_code;
    return 0;
  case NGHTTP2_RST_STREAM: {
    stream_rec *r = find(c, frame->hd.stream_id);
    if (r) {
      r->pub.reset_received = true;
      r->pub.reset_error = frame->rst_stream.error_code;
    }
    return 0;
  }
  case NGHTTP2_HEADERS: {
    stream_rec *r = find(c, frame->hd.stream_id);
    if (!r) return 0;
    if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      r->pub.headers_received = true;
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        r->pub.trailers_only = r->pub.trailers_received = true;
    } else if (frame->headers.cat == NGHTTP2_HCAT_HEADERS) {
      r->pub.trailers_received = true;
    }
    return 0;
  }
  default: return 0;
  }
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data) {
  (void)session, (void)flags;
  stream_rec *r = find(user_data, stream_id);
  if (!r || r->pub.framing_error) return 0;
  return feed_response(r, data, len) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)session;
  h2_client *c = user_data;
  stream_rec *r = find(c, stream_id);
  if (!r || r->pub.closed) return 0;
  r->pub.closed = true;
  r->pub.close_error = error_code;
  free_output(r);
  c->live--;
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  (void)session;
  h2_client *c = user_data;
  if (frame->hd.type != NGHTTP2_DATA) return 0;
  c->data_frames_sent++;
  c->data_bytes_sent += frame->hd.length; /* the client never pads */
  stream_rec *r = find(c, frame->hd.stream_id);
  if (r) r->pub.data_bytes_sent += frame->hd.length;
  return 0;
}

/* The request body: drains the stream's queued segments, honouring each one's frame size. */
static ssize_t read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *source, void *user_data) {
  (void)session, (void)stream_id, (void)user_data;
  stream_rec *r = source->ptr;
  size_t n = 0;
  while (!queue_empty(&r->out) && n < length) {
    out_seg *seg = LIST_ITEM(r->out.head, out_seg, link);
    const size_t frame_bytes = seg->frame_bytes;
    if (frame_bytes && n > 0) break; /* a limited segment starts its own frame */
    size_t take = seg->len - seg->off;
    size_t room = length - n;
    if (frame_bytes && room > frame_bytes) room = frame_bytes;
    if (take > room) take = room;
    memcpy(buf + n, seg->data + seg->off, take);
    n += take;
    seg->off += take;
    if (seg->off == seg->len) {
      queue_pop(&r->out);
      free(seg);
    }
    if (frame_bytes) break; /* one limited frame per call */
  }
  if (queue_empty(&r->out) && r->half_close) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
  }
  return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

/* ---- Socket I/O ------------------------------------------------------------------------ */

static void fail_connection(h2_client *c, const char *why) {
  if (!c->disconnected) say("connection ended: %s", why);
  c->disconnected = true;
}

/* Moves every frame nghttp2 has ready into the write buffer. */
static int serialize(h2_client *c) {
  if (c->disconnected) return -1;
  if (c->woff > 0) { /* keep the buffer from creeping forward under steady traffic */
    memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
    c->wlen -= c->woff;
    c->woff = 0;
  }
  for (;;) {
    const uint8_t *data;
    const ssize_t n = nghttp2_session_mem_send(c->session, &data);
    if (n < 0) {
      fail_connection(c, nghttp2_strerror((int)n));
      return -1;
    }
    if (n == 0) return 0;
    if (c->wlen + (size_t)n > c->wcap) {
      size_t cap = c->wcap ? c->wcap : 65536;
      while (cap < c->wlen + (size_t)n)
        cap *= 2;
      uint8_t *grown = realloc(c->wbuf, cap);
      if (!grown) {
        fail_connection(c, "out of memory");
        return -1;
      }
      c->wbuf = grown;
      c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, data, (size_t)n);
    c->wlen += (size_t)n;
  }
}

/* The reason of OpenSSL's last error, for messages; clears the thread's queue. */
static const char *ssl_reason(void) {
  const unsigned long e = ERR_peek_last_error();
  const char *reason = e ? ERR_reason_error_string(e) : NULL;
  ERR_clear_error();
  return reason ? reason : "no OpenSSL error queued";
}

/* SSL_write or SSL_read's outcome as send/recv would say it: bytes, or -1 with errno EAGAIN
 * (the record layer needs the socket), or -1 with errno EIO (TLS failed; why on stderr), or 0
 * (the server ended the session). */
static ssize_t ssl_outcome(h2_client *c, int n) {
  if (n > 0) return n;
  switch (SSL_get_error(c->ssl, n)) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE: errno = EAGAIN; return -1;
  case SSL_ERROR_ZERO_RETURN: return 0;
  case SSL_ERROR_SYSCALL:
    if (errno == 0) return 0; /* EOF without close_notify */
    return -1;
  default:
    say("TLS: %s", ssl_reason());
    errno = EIO;
    return -1;
  }
}

static ssize_t send_bytes(h2_client *c, const uint8_t *data, size_t len) {
  if (!c->ssl) return send(c->fd, data, len, MSG_NOSIGNAL);
  errno = 0;
  const ssize_t n = ssl_outcome(c, SSL_write(c->ssl, data, len > INT32_MAX ? INT32_MAX : (int)len));
  if (n == 0) errno = EPIPE; /* the session ended: nothing more can be written */
  return n == 0 ? -1 : n;
}

static ssize_t recv_bytes(h2_client *c, uint8_t *buf, size_t cap) {
  if (!c->ssl) return recv(c->fd, buf, cap, 0);
  errno = 0;
  return ssl_outcome(c, SSL_read(c->ssl, buf, (int)cap));
}

/* Writes what the socket takes without blocking. */
static int write_some(h2_client *c) {
  while (c->woff < c->wlen) {
    const ssize_t n = send_bytes(c, c->wbuf + c->woff, c->wlen - c->woff);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      fail_connection(c, strerror(errno));
      return -1;
    }
    c->woff += (size_t)n;
  }
  c->wlen = c->woff = 0;
  return 0;
}

static int push_output(h2_client *c) {
  if (serialize(c) != 0) return -1;
  return write_some(c);
}

static int read_some(h2_client *c) {
  uint8_t buf[READ_CHUNK];
  const ssize_t n = recv_bytes(c, buf, sizeof(buf));
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    fail_connection(c, strerror(errno));
    return -1;
  }
  if (n == 0) {
    fail_connection(c, "EOF from server");
    return -1;
  }
  const ssize_t rv = nghttp2_session_mem_recv(c->session, buf, (size_t)n);
  if (rv < 0) {
    fail_connection(c, nghttp2_strerror((int)rv));
    return -1;
  }
  return 0;
}

int h2_client_poll(h2_client *c, int timeout_ms) {
  if (c->disconnected || push_output(c) != 0) return -1;
  struct pollfd p = {.fd = c->fd, .events = POLLIN};
  if (c->woff < c->wlen) p.events |= POLLOUT;
  /* OpenSSL may hold decrypted bytes the socket no longer shows. */
  if (c->ssl && SSL_has_pending(c->ssl)) timeout_ms = 0;
  int rv = poll(&p, 1, timeout_ms);
  if (rv == 0 && c->ssl && SSL_has_pending(c->ssl)) {
    rv = 1;
    p.revents = POLLIN;
  }
  if (rv < 0) return errno == EINTR ? 0 : -1;
  if (rv == 0) return 0;
  if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
    if (read_some(c) != 0) return -1;
  }
  if (push_output(c) != 0) return -1;
  return 1;
}

typedef bool (*done_fn)(const h2_client *c, int32_t id, size_t arg);

/* Runs I/O until `done` holds, the connection ends, or the timeout. */
static int wait_until(h2_client *c, done_fn done, int32_t id, size_t arg, const char *what) {
  const int64_t deadline = now_ms() + c->timeout_ms;
  for (;;) {
    if (!c->disconnected) push_output(c); /* on failure `done` may still hold */
    if (done(c, id, arg)) return 0;
    if (c->disconnected) {
      say("connection ended while waiting for %s (stream %d)", what, id);
      return -1;
    }
    const int64_t left = deadline - now_ms();
    if (left <= 0) {
      say("timed out after %d ms waiting for %s (stream %d)", c->timeout_ms, what, id);
      return -1;
    }
    h2_client_poll(c, (int)left);
  }
}

static bool output_drained(const h2_client *c, int32_t id, size_t arg) {
  (void)id, (void)arg;
  return c->woff == c->wlen;
}

static bool settings_in(const h2_client *c, int32_t id, size_t arg) {
  (void)id, (void)arg;
  return c->settings_received;
}

static bool has_messages(const h2_client *c, int32_t id, size_t count) {
  const stream_rec *r = find(c, id);
  return !r || r->pub.message_count >= count || r->pub.closed;
}

static bool has_headers(const h2_client *c, int32_t id, size_t arg) {
  (void)arg;
  const stream_rec *r = find(c, id);
  return !r || r->pub.headers_received || r->pub.reset_received || r->pub.closed;
}

static bool has_trailers(const h2_client *c, int32_t id, size_t arg) {
  (void)arg;
  const stream_rec *r = find(c, id);
  return !r || r->pub.trailers_received || r->pub.reset_received || r->pub.closed;
}

static bool is_closed(const h2_client *c, int32_t id, size_t arg) {
  (void)arg;
  const stream_rec *r = find(c, id);
  return !r || r->pub.closed;
}

static bool is_disconnected(const h2_client *c, int32_t id, size_t arg) {
  (void)id, (void)arg;
  return c->disconnected;
}

int h2_client_flush(h2_client *c) { return wait_until(c, output_drained, 0, 0, "output to drain"); }

int h2_client_wait_messages(h2_client *c, int32_t id, size_t count) {
  if (!find(c, id)) return -1;
  if (wait_until(c, has_messages, id, count, "messages") != 0) return -1;
  const stream_rec *r = find(c, id);
  if (r->pub.message_count < count) {
    say("stream %d closed with %zu of %zu messages", id, r->pub.message_count, count);
    return -1;
  }
  return 0;
}

int h2_client_wait_headers(h2_client *c, int32_t id) {
  if (!find(c, id)) return -1;
  return wait_until(c, has_headers, id, 0, "response headers");
}

int h2_client_wait_trailers(h2_client *c, int32_t id) {
  if (!find(c, id)) return -1;
  return wait_until(c, has_trailers, id, 0, "trailers");
}

int h2_client_wait_closed(h2_client *c, int32_t id) {
  if (!find(c, id)) return -1;
  return wait_until(c, is_closed, id, 0, "stream close");
}

int h2_client_wait_disconnect(h2_client *c) {
  return wait_until(c, is_disconnected, 0, 0, "disconnect");
}

int h2_client_wait_quiet(h2_client *c, int quiet_ms) {
  const int64_t deadline = now_ms() + c->timeout_ms;
  for (;;) {
    const int rv = h2_client_poll(c, quiet_ms);
    if (rv < 0) {
      say("connection ended while waiting for quiet");
      return -1;
    }
    if (rv == 0) return 0;
    if (now_ms() > deadline) {
      say("data still moving after %d ms", c->timeout_ms);
      return -1;
    }
  }
}

/* ---- Connection ------------------------------------------------------------------------ */

/* connect() without blocking for longer than the timeout; leaves the socket non-blocking. */
static int connect_bounded(int fd, const struct sockaddr *sa, socklen_t len, const char *what) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    say("connect %s: fcntl: %s", what, strerror(errno));
    return -1;
  }
  if (connect(fd, sa, len) == 0) return 0;
  if (errno != EINPROGRESS) {
    say("connect %s: %s", what, strerror(errno));
    return -1;
  }
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int rv;
  do
    rv = poll(&p, 1, H2_CLIENT_TIMEOUT_MS);
  while (rv < 0 && errno == EINTR);
  int err = 0;
  socklen_t err_len = sizeof(err);
  if (rv == 0)
    err = ETIMEDOUT;
  else if (rv < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len) != 0)
    err = errno;
  if (err == 0) return 0;
  say("connect %s: %s", what, strerror(err));
  return -1;
}

static h2_client *client_start(int fd, bool ignore_pings, SSL_CTX *ssl_ctx, SSL *ssl) {
  h2_client *c = calloc(1, sizeof(*c));
  if (!c) {
    SSL_free(ssl);
    SSL_CTX_free(ssl_ctx);
    close(fd);
    return NULL;
  }
  c->fd = fd;
  c->ssl_ctx = ssl_ctx;
  c->ssl = ssl;
  c->timeout_ms = H2_CLIENT_TIMEOUT_MS;
  c->max_message = SIZE_MAX;

  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb) != 0) goto fail;
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cb);
    goto fail;
  }
  /* Closed streams are only bookkeeping here; do not keep thousands of them. */
  nghttp2_option_set_no_closed_streams(opt, 1);
  if (ignore_pings) nghttp2_option_set_no_auto_ping_ack(opt, 1);
  const int rv = nghttp2_session_client_new2(&c->session, cb, c, opt);
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  if (rv != 0) goto fail;
  const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                             {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
  if (nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings, 2) != 0) goto fail;
  if (nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 16 << 20) != 0)
    goto fail;
  if (wait_until(c, settings_in, 0, 0, "the server's SETTINGS") != 0) goto fail;
  return c;
fail:
  h2_client_free(c);
  return NULL;
}

static h2_client *connect_tcp(const char *host, int port, bool ignore_pings);

h2_client *h2_client_connect_tcp(const char *host, int port) {
  return connect_tcp(host, port, false);
}

h2_client *h2_client_connect_tcp_ignoring_pings(const char *host, int port) {
  return connect_tcp(host, port, true);
}

static int tcp_socket(const char *host, int port);

static h2_client *connect_tcp(const char *host, int port, bool ignore_pings) {
  const int fd = tcp_socket(host, port);
  if (fd < 0) return NULL;
  return client_start(fd, ignore_pings, NULL, NULL);
}

/* A connected TCP socket (non-blocking, TCP_NODELAY), or -1. */
static int tcp_socket(const char *host, int port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  char service[8];
  snprintf(service, sizeof(service), "%d", port);
  const int gai = getaddrinfo(host, service, &hints, &ai);
  if (gai != 0) {
    say("%s: %s", host, gai_strerror(gai));
    return -1;
  }
  char what[300];
  snprintf(what, sizeof(what), "%s port %d", host, port);
  const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect_bounded(fd, ai->ai_addr, ai->ai_addrlen, what) != 0) {
    if (fd < 0) say("socket: %s", strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return -1;
  }
  freeaddrinfo(ai);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/* ---- TLS --------------------------------------------------------------------------------- */

static SSL_CTX *client_context(const h2_client_tls *o) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return NULL;
  bool ok = true;
  if (o->max_version && o->max_version < TLS1_2_VERSION) {
    /* OpenSSL 3 sends TLS 1.0 and 1.1 hellos only at security level 0. */
    SSL_CTX_set_security_level(ctx, 0);
    ok = SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0") == 1;
  }
  if (o->min_version) ok = ok && SSL_CTX_set_min_proto_version(ctx, o->min_version) == 1;
  if (o->max_version) ok = ok && SSL_CTX_set_max_proto_version(ctx, o->max_version) == 1;
  if (o->ca_file) {
    ok = ok && SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) == 1;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  if (o->cert_file)
    ok = ok && SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) == 1 &&
         SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) == 1;
  static const unsigned char h2[] = {2, 'h', '2'};
  const unsigned char *alpn = o->alpn ? (const unsigned char *)o->alpn : h2;
  const size_t alpn_len = o->alpn ? strlen(o->alpn) : sizeof(h2);
  if (alpn_len) ok = ok && SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned)alpn_len) == 0;
  if (!ok) {
    say("TLS setup: %s", ssl_reason());
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

/* Runs the handshake on the non-blocking socket, bounded by the client's timeout. */
static bool handshake(SSL *ssl, int fd) {
  const int64_t deadline = now_ms() + H2_CLIENT_TIMEOUT_MS;
  for (;;) {
    const int rv = SSL_connect(ssl);
    if (rv == 1) return true;
    const int err = SSL_get_error(ssl, rv);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      say("TLS handshake: %s", ssl_reason());
      return false;
    }
    const int64_t left = deadline - now_ms();
    struct pollfd p = {.fd = fd, .events = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
    if (left <= 0 || poll(&p, 1, (int)left) == 0) {
      say("TLS handshake: timed out");
      return false;
    }
  }
}

h2_client *h2_client_connect_tls(const char *host, int port, const h2_client_tls *opts) {
  SSL_CTX *ctx = client_context(opts);
  if (!ctx) return NULL;
  const int fd = tcp_socket(host, port);
  SSL *ssl = fd >= 0 ? SSL_new(ctx) : NULL;
  if (!ssl || SSL_set_fd(ssl, fd) != 1 ||
      (opts->sni &&
       (SSL_set_tlsext_host_name(ssl, opts->sni) != 1 || SSL_set1_host(ssl, opts->sni) != 1)) ||
      !handshake(ssl, fd)) {
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0) close(fd);
    return NULL;
  }
  return client_start(fd, false, ctx, ssl);
}

void *h2_client_tls_session(const h2_client *c) { return c->ssl; }

h2_client *h2_client_connect_unix(const char *path) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof(sun.sun_path)) return NULL;
  strcpy(sun.sun_path, path);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect_bounded(fd, (const struct sockaddr *)&sun, sizeof(sun), path) != 0) {
    if (fd < 0) say("socket: %s", strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  return client_start(fd, false, NULL, NULL);
}

void h2_client_set_max_message(h2_client *c, size_t bytes) { c->max_message = bytes; }

void h2_client_set_timeout(h2_client *c, int timeout_ms) {
  if (timeout_ms > 0) c->timeout_ms = timeout_ms;
}

int h2_client_set_initial_window(h2_client *c, uint32_t bytes) {
  if (c->disconnected) return -1;
  const nghttp2_settings_entry entry = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, bytes};
  const int rv = nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, &entry, 1);
  if (rv != 0) {
    say("submit_settings: %s", nghttp2_strerror(rv));
    return -1;
  }
  return push_output(c);
}

void h2_client_close_socket(h2_client *c, bool tcp_reset) {
  if (c->fd < 0) return;
  if (tcp_reset) {
    const struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  close(c->fd);
  c->fd = -1;
  c->disconnected = true;
}

void h2_client_free(h2_client *c) {
  if (!c) return;
  SSL_free(c->ssl);
  SSL_CTX_free(c->ssl_ctx);
  if (c->fd >= 0) close(c->fd);
  nghttp2_session_del(c->session); /* does not call on_stream_close */
  for (size_t i = 0; i < c->streams_cap; i++)
    if (c->streams[i]) free_rec(c->streams[i]);
  free(c->streams);
  free(c->wbuf);
  free(c);
}

/* ---- Streams --------------------------------------------------------------------------- */

#define NV(name, value)                                                                            \
  { (uint8_t *)(name), (uint8_t *)(value), sizeof(name) - 1, strlen(value), NGHTTP2_NV_FLAG_NONE }

int32_t h2_client_open_stream(h2_client *c, const char *path) {
  return h2_client_open_stream_as(c, path, "POST", "application/grpc");
}

int32_t h2_client_open_stream_as(h2_client *c, const char *path, const char *method,
                                 const char *content_type) {
  if (c->disconnected) return -1;
  stream_rec *r = calloc(1, sizeof(*r));
  if (!r) return -1;
  r->client = c;
  r->pub.grpc_status = -1;
  grpc_reader_init(&r->reader, c->max_message, NULL); /* SIZE_MAX unless limited */
  const nghttp2_nv nva[] = {
      NV(":method", method),         NV(":scheme", "http"),
      NV(":authority", "localhost"), NV(":path", path),
      NV("te", "trailers"),          NV("content-type", content_type ? content_type : "")};
  const size_t nv_count = sizeof(nva) / sizeof(nva[0]) - (content_type ? 0 : 1);
  const nghttp2_data_provider prd = {.source.ptr = r, .read_callback = read_body};
  const int32_t id = nghttp2_submit_request(c->session, NULL, nva, nv_count, &prd, r);
  if (id < 0) {
    say("submit_request: %s", nghttp2_strerror(id));
    free(r);
    return -1;
  }
  r->pub.id = id;
  if (!put(c, r)) {
    /* nghttp2 refers to r now: keep the connection consistent by failing it. */
    fail_connection(c, "out of memory");
    return -1;
  }
  c->live++;
  if (push_output(c) != 0) return -1;
  return id;
}

static stream_rec *open_rec(h2_client *c, int32_t id, const char *op) {
  stream_rec *r = find(c, id);
  if (!r) {
    say("%s: unknown stream %d", op, id);
    return NULL;
  }
  if (r->pub.closed || r->half_close) {
    say("%s: stream %d is %s", op, id, r->pub.closed ? "closed" : "half-closed");
    return NULL;
  }
  return r;
}

int h2_client_send_raw(h2_client *c, int32_t id, const void *data, size_t len, size_t frame_bytes) {
  stream_rec *r = open_rec(c, id, "send");
  if (!r || c->disconnected) return -1;
  out_seg *seg = malloc(sizeof(*seg) + len);
  if (!seg) return -1;
  seg->len = len;
  seg->off = 0;
  seg->frame_bytes = frame_bytes;
  if (len) memcpy(seg->data, data, len);
  queue_push(&r->out, &seg->link);
  nghttp2_session_resume_data(c->session, id); /* fails harmlessly if not deferred */
  return push_output(c);
}

int h2_client_send_message(h2_client *c, int32_t id, const void *msg, size_t len,
                           size_t frame_bytes) {
  if (len > UINT32_MAX) return -1;
  uint8_t *framed = malloc(GRPC_PREFIX_BYTES + len);
  if (!framed) return -1;
  grpc_write_prefix(framed, (uint32_t)len);
  if (len) memcpy(framed + GRPC_PREFIX_BYTES, msg, len);
  const int rv = h2_client_send_raw(c, id, framed, GRPC_PREFIX_BYTES + len, frame_bytes);
  free(framed);
  return rv;
}

int h2_client_send_pb(h2_client *c, int32_t id, const ProtobufCMessage *msg, size_t frame_bytes) {
  const size_t len = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) return -1;
  protobuf_c_message_pack(msg, buf);
  const int rv = h2_client_send_message(c, id, buf, len, frame_bytes);
  free(buf);
  return rv;
}

int h2_client_half_close(h2_client *c, int32_t id) {
  stream_rec *r = open_rec(c, id, "half-close");
  if (!r || c->disconnected) return -1;
  r->half_close = true;
  nghttp2_session_resume_data(c->session, id);
  return push_output(c);
}

int h2_client_reset(h2_client *c, int32_t id, uint32_t error_code) {
  stream_rec *r = find(c, id);
  if (!r || r->pub.closed || c->disconnected) {
    say("reset: stream %d is %s", id,
        !r              ? "unknown"
        : r->pub.closed ? "closed"
                        : "on a dead connection");
    return -1;
  }
  const int rv = nghttp2_submit_rst_stream(c->session, NGHTTP2_FLAG_NONE, id, error_code);
  if (rv != 0) {
    say("submit_rst_stream: %s", nghttp2_strerror(rv));
    return -1;
  }
  return push_output(c);
}

const h2_client_stream *h2_client_get_stream(const h2_client *c, int32_t id) {
  const stream_rec *r = find(c, id);
  return r ? &r->pub : NULL;
}

int h2_client_forget_stream(h2_client *c, int32_t id) {
  stream_rec *r = find(c, id);
  if (!r || !r->pub.closed) return -1;
  c->streams[(size_t)(id - 1) / 2] = NULL;
  free_rec(r);
  return 0;
}

size_t h2_client_live_streams(const h2_client *c) { return c->live; }

uint32_t h2_client_max_concurrent_streams(const h2_client *c) {
  return nghttp2_session_get_remote_settings(c->session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

size_t h2_client_pending_output(const h2_client *c) { return c->wlen - c->woff; }

size_t h2_client_unsent_bytes(const h2_client *c, int32_t id) {
  const stream_rec *r = find(c, id);
  size_t n = 0;
  for (const queue_link *l = r ? r->out.head : NULL; l; l = l->next) {
    const out_seg *seg = LIST_ITEM(l, out_seg, link);
    n += seg->len - seg->off;
  }
  return n;
}

int64_t h2_client_send_window(const h2_client *c, int32_t id) {
  const stream_rec *r = find(c, id);
  if (!r || r->pub.closed) return -1;
  const int32_t stream = nghttp2_session_get_stream_remote_window_size(c->session, id);
  const int32_t conn = nghttp2_session_get_remote_window_size(c->session);
  if (stream < 0 || conn < 0) return -1;
  return stream < conn ? stream : conn;
}

bool h2_client_goaway_received(const h2_client *c, uint32_t *error_code) {
  if (error_code) *error_code = c->goaway_error;
  return c->goaway;
}

bool h2_client_disconnected(const h2_client *c) { return c->disconnected; }

uint64_t h2_client_pings_received(const h2_client *c) { return c->pings_received; }

uint64_t h2_client_data_frames_sent(const h2_client *c) { return c->data_frames_sent; }

uint64_t h2_client_data_bytes_sent(const h2_client *c) { return c->data_bytes_sent; }

int h2_client_health_check(h2_client *c) {
  const int32_t id = h2_client_open_stream(c, "/grpc.health.v1.Health/Check");
  if (id < 0) return -1;
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  if (h2_client_send_pb(c, id, &req.base, 0) != 0 || h2_client_half_close(c, id) != 0 ||
      h2_client_wait_closed(c, id) != 0)
    return -1;
  const h2_client_stream *s = h2_client_get_stream(c, id);
  int rv = -1;
  if (s->grpc_status == 0 && s->message_count == 1) {
    Grpc__Health__V1__HealthCheckResponse *resp = grpc__health__v1__health_check_response__unpack(
        NULL, s->messages[0].len, s->messages[0].data);
    if (resp && resp->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
      rv = 0;
    grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
  }
  if (rv != 0) say("health check: grpc-status %d, %zu messages", s->grpc_status, s->message_count);
  h2_client_forget_stream(c, id);
  return rv;
}
