/* One HTTP/2 connection from Envoy and the gRPC streams on it, split by concern:
 *
 *   connection.c   socket I/O and the nghttp2 session (accept, read, coalesced writes, close)
 *   grpc_stream.c  per-stream gRPC handling: routing by path, reassembling messages, handing
 *                  them to the engine or the health service, queueing replies, trailers
 *   flow.c         flow-control budgets: when received bytes go back to the peer's window
 *   connection_timeouts.c  handshake timeout, idle timeout, keepalive PINGs
 *   idle_memory.c  the session's allocator: nghttp2's large blocks on pages given back while
 *                  the connection is idle
 *   tls.c          TLS on TCP listeners when the server has a certificate: the connection's
 *                  bytes pass through OpenSSL between the socket and nghttp2
 *
 * Everything here runs on the connection's worker loop. */
#ifndef EXTPROC_CONNECTION_H
#define EXTPROC_CONNECTION_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/list.h"
#include "transport/grpc_frame.h"
#include "transport/idle_memory.h"
#include "transport/peer.h"
#include "transport/transport.h"

typedef struct connection connection;

typedef enum stream_kind {
  KIND_UNKNOWN,
  KIND_PROCESS,
  KIND_HEALTH_CHECK, /* unary */
  KIND_HEALTH_WATCH  /* server streaming: open until the client or the stop ends it */
} stream_kind;

/* A framed reply waiting for the stream's data provider (malloc'd). */
typedef struct out_chunk {
  queue_link link;
  size_t len, off;
  uint8_t data[];
} out_chunk;

/* One HTTP/2 stream carrying one gRPC call. */
typedef struct h2_stream {
  connection *conn;
  dlist_link link; /* in conn->streams */
  int32_t id;
  stream_kind kind;
  bool post;              /* :method is POST */
  bool grpc_content_type; /* content-type is application/grpc[+proto] */
  grpc_reader reader;
  extproc_request *engine; /* KIND_PROCESS only */
  queue out;               /* out_chunk, in order */
  bool finished;           /* the final status is set; trailers follow the queued output */
  uint32_t status;
  char *message;
  bool discard_input; /* after an error: input is consumed and dropped */
  size_t held_bytes;  /* received but not yet returned to the peer's window */
  /* Health/Watch: the request arrived, and the last status sent (-1 before the first). */
  bool watch_started;
  bool watch_known; /* the service asked for is one we serve */
  int watch_sent;
} h2_stream;

struct connection {
  worker *w;
  dlist_link link; /* in w->connections */
  const extproc_processor *proc;
  stream_handle h;
  uv_timer_t timer; /* handshake, idle and keepalive deadlines (connection.c) */
  int handles_open; /* h and timer: freed when both are closed */
  nghttp2_session *session;
  idle_pages pages; /* the session's large blocks, given back while idle (idle_memory.c) */
  dlist streams;    /* h2_stream */
  uv_write_t write_req;
  uint8_t *pending; /* output the socket did not take at once, being written; else NULL */
  bool closing;
  struct tls_conn *tls; /* NULL on cleartext connections; freed with the connection */
  /* Deadlines, in loop milliseconds (uv_now). */
  bool handshake_done;   /* the peer's preface and SETTINGS arrived */
  bool ping_outstanding; /* a keepalive PING awaits its ACK */
  uint64_t accepted_ms, last_input_ms, idle_since_ms, ping_sent_ms;
  /* Input budgets (see flow.c). */
  size_t partial_bytes;    /* bytes of incomplete messages buffered, over all streams */
  size_t queued_out_bytes; /* reply bytes queued, not yet handed to nghttp2 */
  h2_stream *favoured;     /* over the partial budget: the one stream still fed */
  bool input_held;         /* some stream holds credit for budget reasons */
  bool held_by_budget;     /* ... because of the server-wide max_buffered_bytes */
  /* The peer (peer.c): its address for log lines, and its first bytes, which name what it
   * speaks if it turns out not to be an HTTP/2 client (on TLS: first the raw bytes, to name a
   * client that does not speak TLS; once the handshake is done, the first decrypted ones). */
  char peer[PEER_TEXT_BYTES];
  uint8_t head[PEER_HEAD_BYTES];
  uint8_t head_len;
};

static inline h2_stream *stream_of(const dlist_link *l) { return LIST_ITEM(l, h2_stream, link); }

/* ---- connection.c ---------------------------------------------------------------------- */

/* Writes what nghttp2 has queued, one write call per round. May close the connection. */
void conn_flush(connection *c);

/* Closes the connection now: its streams are released, its handles closed, its
 * max_connections slot given back. Safe to call twice. */
void conn_close(connection *c);

/* Writes `len` bytes (encrypted on TLS) to the socket if it takes them now; best effort, for a
 * last word before closing (peer.c). */
void conn_write_now(connection *c, const uint8_t *data, size_t len);

/* Sends a GOAWAY (last stream id: the last one processed) with `error_code` and `debug` text
 * (may be NULL), and flushes. A connection with no open stream then closes by itself once the
 * GOAWAY is written. */
void conn_goaway(connection *c, uint32_t error_code, const char *debug);

/* ---- connection_timeouts.c --------------------------------------------------------------- */

/* A connection was just accepted: its handshake deadline starts. */
void conn_deadlines_start(connection *c);

/* The peer's preface and first SETTINGS arrived: keepalive and idle deadlines take over. */
void conn_note_handshake(connection *c);

/* The peer acknowledged our keepalive PING. */
void conn_note_ping_ack(connection *c);

/* The connection's last stream is gone: the idle timeout starts. */
void conn_note_idle(connection *c);

/* ---- grpc_stream.c --------------------------------------------------------------------- */

/* A request's HEADERS began: a new stream on `c`. Returns NULL on out-of-memory. */
h2_stream *h2_stream_new(connection *c, int32_t id);

/* One request header of the stream (path, method and content-type matter). */
void h2_stream_on_header(h2_stream *s, const uint8_t *name, size_t namelen, const uint8_t *value,
                         size_t valuelen);

/* The request's HEADERS are complete: answer or open the engine. Returns 0 or an nghttp2
 * error. */
int h2_stream_start(h2_stream *s);

/* DATA for the stream: reassembled into messages and delivered. */
void h2_stream_on_data(h2_stream *s, const uint8_t *data, size_t len);

/* The peer ended its side of the stream. */
void h2_stream_on_remote_end(h2_stream *s);

/* The stream is closed (or its connection is): frees it and closes its engine stream. */
void h2_stream_release(h2_stream *s);

/* Queues one gRPC message on the stream's response and wakes its data provider (dropped
 * quietly once the stream is finished). Returns 0 or EXTPROC_ENOMEM. */
int h2_stream_send(h2_stream *s, const ProtobufCMessage *msg);

/* Sets the stream's final gRPC status (once); trailers follow the queued messages. `message`
 * may be NULL. */
void h2_stream_finish(h2_stream *s, uint32_t status, const char *message);

/* ---- health.c -------------------------------------------------------------------------- */

/* One whole request message of a Health/Check or Health/Watch stream. */
void health_on_message(h2_stream *s, const uint8_t *msg, size_t len);

/* The client half-closed a health stream: a Check (or Watch) without its request is an error;
 * a Watch that has its request stays open. */
void health_on_remote_end(h2_stream *s);

/* ---- flow.c ---------------------------------------------------------------------------- */

/* Accounts `len` received bytes of `s` (its reader held `buffered_before` bytes before this
 * DATA was fed) and gives them back to the peer's window, or holds them. */
void flow_on_data(h2_stream *s, size_t len, size_t buffered_before);

/* Returns the bytes `s` held back to the peer's window (a deferred phase was resumed). */
void flow_give_back(h2_stream *s);

/* A stream is going away: its budgets are returned. Called once it is unlinked. */
void flow_on_release(h2_stream *s);

/* Gives back what streams held once the reason is gone; cheap unless something is held. */
void flow_release_held(connection *c);

#endif
