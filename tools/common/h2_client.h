/* A small blocking HTTP/2 gRPC client for tests, on nghttp2.
 *
 * It plays Envoy's side of an ext_proc connection closely enough to test the server: open gRPC
 * streams, send length-prefixed messages (optionally cut into DATA frames of a few bytes, to
 * exercise reassembly), half-close, reset, and read back the replies, the response headers and
 * the trailers. Nothing can hang: every wait is bounded by the client's timeout (10 s unless
 * changed) and fails, with a line on stderr saying what was awaited, when it runs out.
 *
 * Output is serialized into the client's buffer as soon as a call queues it (so a RST_STREAM
 * submitted after a message always follows that message on the wire) and written without
 * blocking; the wait functions and h2_client_poll() move bytes both ways.
 *
 * One thread per client. Functions returning int return 0 on success and -1 on failure
 * (timeout, connection error, unknown stream), after printing why to stderr (unless
 * h2_client_set_quiet) and keeping it for h2_client_last_error(). */
#ifndef EXTPROC_TESTS_H2_CLIENT_H
#define EXTPROC_TESTS_H2_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { H2_CLIENT_TIMEOUT_MS = 10000 };

/* Stops (or restarts) printing failures on stderr, for every client of the process; set it
 * before any client runs. */
void h2_client_set_quiet(bool on);

/* Why the calling thread's last failure happened ("connect 127.0.0.1 port 1: Connection
 * refused"), or "" if none has. Valid until that thread's next failure. */
const char *h2_client_last_error(void);

typedef struct h2_client h2_client;

/* One received gRPC message (without its 5-byte prefix). Owned by the stream record. */
typedef struct h2_client_msg {
  uint8_t *data;
  size_t len;
} h2_client_msg;

/* What the client knows about one stream. Owned by the client; valid until
 * h2_client_forget_stream() or h2_client_free(). Read-only for callers. */
typedef struct h2_client_stream {
  int32_t id;
  bool headers_received;  /* the response HEADERS arrived */
  int http_status;        /* its :status; 0 until then */
  char *content_type;     /* its content-type; NULL if absent */
  bool trailers_received; /* trailers arrived (or a trailers-only response) */
  bool trailers_only;     /* the response was a single HEADERS frame with END_STREAM */
  int grpc_status;        /* grpc-status from the trailers (or trailers-only); -1 if none, -2
                             if not a decimal number */
  char *grpc_message;     /* grpc-message, percent-decoded; NULL if absent */
  h2_client_msg *messages;
  size_t message_count;
  bool framing_error;       /* the server's gRPC framing was malformed (compressed flag, or a
                              message over h2_client_set_max_message); the rest of the body is
                              then ignored */
  bool reset_received;      /* the server sent RST_STREAM */
  uint32_t reset_error;     /* its error code */
  bool closed;              /* nghttp2 closed the stream (both ends done, or a reset) */
  uint32_t close_error;     /* the error code nghttp2 reported at close (0 = NO_ERROR) */
  uint64_t data_bytes_sent; /* request DATA payload put on the wire (flow-controlled) so far */
} h2_client_stream;

/* Connects over TCP to `host` (a numeric IPv4 or IPv6 address, no brackets) and `port`, sends
 * the connection preface and waits (bounded) for the server's SETTINGS. NULL on failure. */
h2_client *h2_client_connect_tcp(const char *host, int port);

/* Like h2_client_connect_tcp, but PINGs from the server are never acknowledged (a peer that
 * has gone away, as the server's keepalive sees it). */
h2_client *h2_client_connect_tcp_ignoring_pings(const char *host, int port);

/* The same over a unix stream socket at `path`. */
h2_client *h2_client_connect_unix(const char *path);

/* TLS settings of h2_client_connect_tls(). Zero fields take the library's defaults. */
typedef struct h2_client_tls {
  const char *ca_file;   /* verifies the server's certificate against it; NULL: no check */
  const char *sni;       /* server name sent (SNI) and checked against the certificate */
  const char *cert_file; /* the client's certificate (PEM) for mutual TLS; NULL: none */
  const char *key_file;  /* its key */
  int min_version;       /* e.g. TLS1_2_VERSION */
  int max_version;       /* e.g. TLS1_1_VERSION (security level 0 is then allowed) */
  const char *alpn;      /* ALPN in wire format ("\x08http/1.1"); NULL: h2; "": none */
} h2_client_tls;

/* h2_client_connect_tcp over TLS: the TLS handshake (bounded by the timeout), then the HTTP/2
 * preface and the server's SETTINGS. NULL on failure (why on stderr), also when the server
 * refuses the client after the client's side of the handshake (TLS 1.3 client certificates). */
h2_client *h2_client_connect_tls(const char *host, int port, const h2_client_tls *opts);

/* The connection's OpenSSL SSL object (to read the peer's certificate, ALPN, version); NULL on
 * a cleartext client. */
void *h2_client_tls_session(const h2_client *c);

/* The largest gRPC message accepted on streams opened from now on (bytes; default: no limit). A
 * larger one sets the stream's framing_error and the rest of its body is ignored. */
void h2_client_set_max_message(h2_client *c, size_t bytes);

/* Changes the bound of every later wait (milliseconds, > 0). */
void h2_client_set_timeout(h2_client *c, int timeout_ms);

/* Sends SETTINGS_INITIAL_WINDOW_SIZE = `bytes` (at most 2^31-1): the window the server may fill
 * on each stream before the client reads it. 0 keeps the server from sending any DATA; a later
 * larger value opens every stream's window by the difference (RFC 9113, 6.9.2). The client
 * otherwise gives window back as it reads, and advertises 1 MiB at connect. */
int h2_client_set_initial_window(h2_client *c, uint32_t bytes);

/* Closes the socket at once, without flushing or saying GOAWAY; with `tcp_reset`, a TCP
 * connection is closed with RST (SO_LINGER 0). Stream records stay readable until
 * h2_client_free(); every later I/O call fails. */
void h2_client_close_socket(h2_client *c, bool tcp_reset);

/* Closes the socket (if still open) and frees everything. NULL is ignored. */
void h2_client_free(h2_client *c);

/* Opens a gRPC stream: HEADERS with POST, `path`, content-type application/grpc and
 * te: trailers, no END_STREAM. Returns the stream id (> 0) or -1. */
int32_t h2_client_open_stream(h2_client *c, const char *path);

/* The same with another :method and content-type (to test refusals); a NULL content_type sends
 * none. */
int32_t h2_client_open_stream_as(h2_client *c, const char *path, const char *method,
                                 const char *content_type);

/* Queues `len` raw bytes on the stream's request body (no gRPC prefix added). With
 * `frame_bytes` > 0 they go in DATA frames of at most that many bytes; 0 lets nghttp2 pack
 * them as it likes. */
int h2_client_send_raw(h2_client *c, int32_t id, const void *data, size_t len, size_t frame_bytes);

/* Queues one gRPC message: the 5-byte prefix (uncompressed) and `len` bytes. Prefix and
 * message share the DATA frame splitting of `frame_bytes`, as in h2_client_send_raw(). */
int h2_client_send_message(h2_client *c, int32_t id, const void *msg, size_t len,
                           size_t frame_bytes);

/* Packs `msg` with protobuf-c and sends it as one gRPC message. */
int h2_client_send_pb(h2_client *c, int32_t id, const ProtobufCMessage *msg, size_t frame_bytes);

/* Ends the request body (END_STREAM after what is queued). */
int h2_client_half_close(h2_client *c, int32_t id);

/* Sends RST_STREAM with `error_code` (e.g. NGHTTP2_CANCEL = 8). Fails if the stream is
 * already closed. */
int h2_client_reset(h2_client *c, int32_t id, uint32_t error_code);

/* Writes until everything queued is in the kernel (bounded). */
int h2_client_flush(h2_client *c);

/* One I/O round: writes what it can, waits up to `timeout_ms` (0: do not wait) for the socket,
 * reads and processes what arrived. Returns 1 if something happened, 0 on timeout, -1 once the
 * connection has failed or the peer closed it. */
int h2_client_poll(h2_client *c, int timeout_ms);

/* Waits until stream `id` has received at least `count` messages. Fails on timeout or if the
 * stream closes with fewer. */
int h2_client_wait_messages(h2_client *c, int32_t id, size_t count);

/* Waits until stream `id` has received its response HEADERS (or was reset, or closed). */
int h2_client_wait_headers(h2_client *c, int32_t id);

/* Waits until stream `id` has received its trailers (or was reset, or closed). */
int h2_client_wait_trailers(h2_client *c, int32_t id);

/* Waits until stream `id` is closed. */
int h2_client_wait_closed(h2_client *c, int32_t id);

/* Waits until the server closes the connection (EOF or error). */
int h2_client_wait_disconnect(h2_client *c);

/* Runs I/O until nothing moves either way for `quiet_ms` (no byte written or read), e.g. until
 * flow control stalls the client. Fails only if the connection ends or the client's timeout runs
 * out while data still moves. */
int h2_client_wait_quiet(h2_client *c, int quiet_ms);

/* One whole grpc.health.v1.Health/Check for the server as a whole (""): 0 if it answered
 * SERVING with status OK, -1 otherwise (why on stderr). The stream's record is forgotten. */
int h2_client_health_check(h2_client *c);

/* The record of stream `id`, or NULL if unknown or forgotten. */
const h2_client_stream *h2_client_get_stream(const h2_client *c, int32_t id);

/* Frees a closed stream's record (for long runs that open many streams). Returns -1 if the
 * stream is unknown or still open. */
int h2_client_forget_stream(h2_client *c, int32_t id);

/* Streams opened and not yet closed, as the client sees them. */
size_t h2_client_live_streams(const h2_client *c);

/* The server's SETTINGS_MAX_CONCURRENT_STREAMS (UINT32_MAX if it sent none). */
uint32_t h2_client_max_concurrent_streams(const h2_client *c);

/* Bytes serialized but not yet written to the socket. */
size_t h2_client_pending_output(const h2_client *c);

/* Request body bytes queued on stream `id` (h2_client_send_*) and not yet put in a DATA frame,
 * e.g. because the server's flow-control window is closed. 0 for an unknown stream. */
size_t h2_client_unsent_bytes(const h2_client *c, int32_t id);

/* How many DATA payload bytes the server's windows let the client send now on stream `id`:
 * the smaller of the stream's and the connection's window. -1 for an unknown or closed stream. */
int64_t h2_client_send_window(const h2_client *c, int32_t id);

/* True if a GOAWAY frame was ever received on this connection; its error code in *error_code
 * (may be NULL). */
bool h2_client_goaway_received(const h2_client *c, uint32_t *error_code);

/* DATA frames sent so far on this connection (to check that a message really was split). */
uint64_t h2_client_data_frames_sent(const h2_client *c);

/* DATA payload bytes sent so far on this connection, over all streams. */
uint64_t h2_client_data_bytes_sent(const h2_client *c);

/* PING frames (not acknowledgements) received from the server so far. */
uint64_t h2_client_pings_received(const h2_client *c);

/* True once the server closed the connection or the connection failed. */
bool h2_client_disconnected(const h2_client *c);

#endif
