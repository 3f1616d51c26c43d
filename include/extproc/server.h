/**
 * @file
 * libextproc server: serves processors to Envoy over gRPC (HTTP/2 cleartext, TCP or unix
 * socket) as `envoy.service.ext_proc.v3.ExternalProcessor/Process`, plus
 * `grpc.health.v1.Health/Check`.
 *
 * Lifecycle: extproc_server_new -> extproc_server_listen (one or more) -> extproc_server_start
 * (or extproc_server_run, which blocks) -> extproc_server_stop -> extproc_server_wait ->
 * extproc_server_free.
 *
 * Threading: the server runs `workers` event loops, one thread each. A connection and all its
 * streams live on one loop; on TCP each loop accepts on its own SO_REUSEPORT socket, so the
 * kernel spreads Envoy's connections over the loops. A unix-socket listener is served by the
 * first loop.
 */
#ifndef EXTPROC_SERVER_H
#define EXTPROC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "extproc/extproc.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Server settings. Fill with extproc_server_options_init() and change what you need; a field
 * left 0 takes its default (except shutdown_grace_ms, where 0 means no grace). `struct_size`,
 * set by extproc_server_options_init(), lets a later minor release add fields at the end
 * without breaking compiled callers (see extproc/version.h). */
typedef struct extproc_server_options {
  size_t struct_size; /**< sizeof(extproc_server_options), as compiled by the caller */
  /** Largest gRPC message accepted, in bytes; larger ones end their stream with
   * RESOURCE_EXHAUSTED and the server goes on. Default 16 MiB (Envoy buffers 1 MiB by default);
   * at most 2 GiB. */
  size_t max_message_bytes;
  /** Number of event-loop threads. Default: one per online CPU. */
  unsigned workers;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection. Default 10000. */
  uint32_t max_concurrent_streams;
  /** HTTP/2 initial per-stream receive window in bytes. Default 1 MiB; at most 2^31-1. */
  uint32_t initial_window_bytes;
  /** On stop, how long open streams may go on, in milliseconds, after each connection is sent a
   * GOAWAY (so Envoy opens no new stream on it); connections still busy then are closed.
   * Default (from extproc_server_options_init) 5000; 0 closes at once. */
  uint32_t shutdown_grace_ms;
  /** Most connections open at once, over all workers. At the limit the server stops accepting
   * (new connections wait in the kernel's listen queue, they are not refused) until one closes;
   * the same happens, for a short while, when accept() finds the process or system out of file
   * descriptors. Each pause logs one warning (rate-limited). Default: the soft RLIMIT_NOFILE at
   * extproc_server_start(), less a reserve for every other descriptor the process opens: 64,
   * plus one eighth of the limit (the processor's own files and clients), plus 4 + the number of
   * listeners per worker (event loop, wakeups, listening sockets); at least 1. */
  unsigned max_connections;
  /** How long a new connection has to send the HTTP/2 connection preface and its SETTINGS, in
   * milliseconds; past it the connection is sent a GOAWAY and closed. Envoy sends both as soon as
   * it connects. Default 10000; EXTPROC_SERVER_TIMEOUT_OFF disables it. */
  uint32_t handshake_timeout_ms;
  /** How long a connection may have no open stream, in milliseconds, before it is sent a GOAWAY
   * (NO_ERROR) and closed. Envoy keeps its ext_proc connections open between requests and closes
   * idle upstream connections itself after its cluster's `idle_timeout` (1 hour by default), so
   * the default is longer: 7200000 (2 hours); EXTPROC_SERVER_TIMEOUT_OFF disables it. */
  uint32_t idle_timeout_ms;
  /** After this long without any input on a connection, in milliseconds, the server sends an
   * HTTP/2 PING (Envoy answers PINGs at once, and they do not count as activity for its idle
   * timeout). Default 60000; EXTPROC_SERVER_TIMEOUT_OFF disables keepalive PINGs. */
  uint32_t keepalive_interval_ms;
  /** How long the PING's acknowledgement may take, in milliseconds, before the peer is taken for
   * gone and the connection closed (with a GOAWAY, in case it is still reading). Default 20000;
   * EXTPROC_SERVER_TIMEOUT_OFF waits forever. */
  uint32_t keepalive_timeout_ms;
  /** Bytes of incomplete gRPC messages buffered at once, over all connections and workers.
   * Beyond it no connection is given HTTP/2 flow-control credit for incomplete messages (nothing
   * is dropped: messages that fit in the windows already granted still complete), until enough
   * messages complete or streams end. Besides this, each connection buffers at most 2 x
   * max_message_bytes, and a peer may always fill the windows it was granted (1 MiB per stream,
   * 16 MiB per connection). Default 256 MiB, or max_message_bytes if that is larger; a value
   * set below max_message_bytes is refused. */
  size_t max_buffered_bytes;
} extproc_server_options;

/** A timeout field of extproc_server_options set to this is disabled. */
#define EXTPROC_SERVER_TIMEOUT_OFF UINT32_MAX

/** Fills `opts` with the defaults above and sets its struct_size. NULL is ignored. */
EXTPROC_API void extproc_server_options_init(extproc_server_options *opts);

/** A server: its listeners, worker threads and the processors it serves. Opaque. */
typedef struct extproc_server extproc_server;

/** Creates a server. `opts` may be NULL for the defaults; it is copied. A server runs once:
 * start (or run) it, stop, wait, free. Stores the server in `*out` and returns 0; otherwise
 * stores NULL and returns EXTPROC_EINVAL (out NULL, struct_size not set or from a newer version
 * using fields this library lacks, max_message_bytes above 2 GiB, initial_window_bytes above
 * 2^31-1, max_buffered_bytes below max_message_bytes) or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_server_new(extproc_server **out, const extproc_server_options *opts);

/** Serves `proc` (not owned; must outlive the server) on `address`:
 *   "HOST:PORT"     an IPv4 address or host name, e.g. "0.0.0.0:50051", "127.0.0.1:0"
 *   "[IPV6]:PORT"   e.g. "[::1]:50051", "[::]:0"
 *   "unix:PATH"     a unix socket; a stale socket file at PATH is replaced, but one a live
 *                   server still listens on, or a file that is not a socket, is an error; the
 *                   socket file is removed by extproc_server_free
 * Port 0 picks a free port (see extproc_server_port). Binds at once, so the port is known on
 * return; a port another process holds is an error (the workers share it among themselves only).
 * Returns the listener's index (>= 0), or EXTPROC_EINVAL for a malformed address, EXTPROC_EIO if
 * binding fails (errno-style detail in the log), EXTPROC_ESTATE after start. Call from the thread
 * that created the server. */
EXTPROC_API int extproc_server_listen(extproc_server *srv, const char *address,
                                      const extproc_processor *proc);

/** The TCP port listener `index` is bound to, or 0 for a unix socket or a bad index.
 * Thread-safe once the listener exists. */
EXTPROC_API int extproc_server_port(const extproc_server *srv, int index);

/** Starts the worker threads and returns. Sets SIGPIPE to be ignored, process-wide, so a peer
 * that disconnects mid-write cannot kill the process. Returns 0, EXTPROC_ESTATE if already started
 * or no listener was added, or EXTPROC_EIO if a thread could not be created. */
EXTPROC_API int extproc_server_start(extproc_server *srv);

/** Asks the server to stop: listeners close at once; each connection gets a GOAWAY and is closed
 * when its streams are done or when shutdown_grace_ms runs out, whichever comes first (streams
 * still open then are ended; deferred requests are freed once resumed). Thread-safe and
 * async-signal-safe, also while extproc_server_wait runs (a stop that comes once the loops are
 * closing does nothing); returns at once. */
EXTPROC_API void extproc_server_stop(extproc_server *srv);

/** Waits until every worker thread has finished after extproc_server_stop(). */
EXTPROC_API void extproc_server_wait(extproc_server *srv);

/** Starts the server and blocks until SIGINT or SIGTERM or extproc_server_stop(); then waits for
 * the workers. The signals are handled (through libuv) only while it runs; afterwards their
 * disposition is the default one again. Returns 0 or the error of start. */
EXTPROC_API int extproc_server_run(extproc_server *srv);

/** Number of gRPC streams currently open, over all loops. Thread-safe. For tests and metrics. */
EXTPROC_API uint64_t extproc_server_open_streams(const extproc_server *srv);

/** Number of gRPC streams served since start (Process and health), over all loops.
 * Thread-safe. */
EXTPROC_API uint64_t extproc_server_total_streams(const extproc_server *srv);

/** Frees a stopped (or never started) server. NULL is ignored. */
EXTPROC_API void extproc_server_free(extproc_server *srv);

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_SERVER_H */
