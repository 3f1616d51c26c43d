/**
 * @file
 * libextproc server: serves processors to Envoy over gRPC (HTTP/2, over TCP, TLS or a unix
 * socket) as `envoy.service.ext_proc.v3.ExternalProcessor/Process`, plus
 * `grpc.health.v1.Health/Check` and `grpc.health.v1.Health/Watch`.
 *
 * Lifecycle: extproc_server_new -> extproc_server_listen (one or more) -> extproc_server_start
 * (or extproc_server_run, which blocks) -> extproc_server_stop -> extproc_server_wait ->
 * extproc_server_free.
 *
 * Stopping drains, in stages, so that Envoy moves traffic elsewhere without a failed request:
 *  1. health turns NOT_SERVING at once (Check answers it, every Watch is sent it) while
 *     everything else goes on for `drain_delay_ms`: new connections and streams are served, and
 *     Envoy's active health checker takes this host out of rotation meanwhile;
 *  2. the listeners close and every connection gets a GOAWAY (Envoy opens no new stream on it);
 *     open streams have `shutdown_grace_ms` to finish (connections close as their streams end);
 *  3. then connections still open are closed, and deferred requests not yet resumed are
 *     abandoned: each is logged ("abandoned at shutdown"), and its late extproc_request_resume()
 *     frees it on the resuming thread and returns 0. The worker threads end within the grace
 *     period whatever the callbacks do.
 * extproc_server_stop_now() runs all three at once; so does a second SIGINT or SIGTERM under
 * extproc_server_run.
 *
 * Health: the known services are "" (the server as a whole) and
 * `envoy.service.ext_proc.v3.ExternalProcessor`. Check answers SERVING or NOT_SERVING, or
 * NOT_FOUND for any other name; Watch sends the status at once and again on every change, and
 * SERVICE_UNKNOWN (keeping the stream open) for any other name, as the gRPC health protocol
 * says. A Watch ends with UNAVAILABLE at stage 2. Every listener serves health; `health_listen`
 * adds an address that serves only health.
 *
 * TLS: with `tls_cert_file` and `tls_key_file` set, every TCP listener (the health-only one
 * too) speaks TLS 1.2 or 1.3 and HTTP/2 only: the server selects ALPN `h2` and refuses, in the
 * handshake, a client that offers ALPN without `h2` (a client that offers no ALPN is served if
 * it then speaks HTTP/2, as gRPC clients with prior knowledge do). With `tls_client_ca_file`
 * also set the TLS is mutual: a client without a certificate signed by one of those CAs is
 * refused in the handshake. Unix sockets stay cleartext. Each refused handshake logs one
 * warning (the reason; a client that does not speak TLS at all is named as such) and is counted
 * (`extproc_tls_handshake_failures_total`). Envoy connects over TLS when its ext_proc cluster has
 * a `transport_socket` with an `UpstreamTlsContext` (ALPN `h2`, the CA to validate the server's
 * certificate, SNI, and for mutual TLS a client certificate) besides `http2_protocol_options`.
 * The files are read again, without a restart, by extproc_server_reload_tls(), on SIGHUP under
 * extproc_server_run(), and when one of them changes (checked every 2 seconds): new connections
 * get the new certificate, open ones keep theirs, and new files that do not load are logged and
 * ignored (the previous certificate stays).
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
   * GOAWAY (so Envoy opens no new stream on it); connections still busy then are closed and
   * deferred requests not yet resumed are abandoned (see the stages above). Default (from
   * extproc_server_options_init) 5000; 0 closes at once. */
  uint32_t shutdown_grace_ms;
  /** On stop, how long the server keeps serving, in milliseconds, with health already
   * NOT_SERVING, before it closes its listeners and sends GOAWAY. Make it longer than Envoy
   * needs to take the host out of rotation: Envoy's gRPC active health check ejects a host at
   * the first NOT_SERVING answer, so within one health check `interval` (plus
   * `interval_jitter` and the check's round trip); its `unhealthy_threshold` counts only
   * network failures (a check that times out, a refused connection), so allow
   * unhealthy_threshold x interval if checks may time out under load. While the cluster has
   * had no traffic, `no_traffic_interval` (default 60 s) replaces `interval`. Default (from
   * extproc_server_options_init) 3000, which suits the demo's Envoy (deploy/envoy.yaml:
   * interval 1 s, unhealthy_threshold 2). 0 skips the drain (and a zeroed struct gets 0, as
   * for shutdown_grace_ms). */
  uint32_t drain_delay_ms;
  /** An extra address that serves only `grpc.health.v1.Health` (Process calls there get
   * UNIMPLEMENTED), in the forms extproc_server_listen() takes, e.g. "127.0.0.1:8081"; NULL
   * (the default) for none. Bound by extproc_server_new() (see extproc_server_health_port());
   * the string is copied there. It counts as one of the 16 listeners a server may have, and it
   * closes with the others at stage 2. */
  const char *health_listen;
  /** Threads of the blocking pool, which runs the callbacks of processors marked blocking
   * (extproc_processor_set_blocking), shared by all listeners. Created at start only if a
   * served processor is blocking. Default 8; at most 1024. */
  unsigned blocking_threads;
  /** Blocking callbacks that may wait for a pool thread before the pool counts as full. A
   * callback beyond that still runs in turn, but its wait is counted (for metrics) and, like
   * every stream waiting for the pool, its stream takes no more input until it is answered:
   * each stream has at most one callback in the pool, so Envoy's concurrent streams bound the
   * queue and HTTP/2 flow control bounds the input behind it. Default 64 per blocking thread. */
  size_t blocking_queue;
  /** Most connections open at once, over all workers. At the limit the server stops accepting
   * (new connections wait in the kernel's listen queue, they are not refused) until one closes;
   * the same happens, for a short while, when accept() finds the process or system out of file
   * descriptors. Each pause logs one warning (rate-limited). Default: the soft RLIMIT_NOFILE at
   * extproc_server_start(), less a reserve for every other descriptor the process opens: 64,
   * plus one eighth of the limit (the processor's own files and clients), plus 4 + the number of
   * listeners per worker (event loop, wakeups, listening sockets); at least 1. */
  unsigned max_connections;
  /** How long a new connection has to send the HTTP/2 connection preface and its SETTINGS, in
   * milliseconds (on TLS listeners the TLS handshake comes first and counts too); past it the
   * connection is sent a GOAWAY and closed. Envoy sends both as soon as
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
   * 16 MiB per connection). 0 (what extproc_server_options_init() sets) means 256 MiB, or
   * max_message_bytes if that is larger; a value set below max_message_bytes is refused. */
  size_t max_buffered_bytes;
  /** PEM file with the server's certificate, then any intermediate CA certificates (a chain, as
   * cert-manager's `tls.crt`). With `tls_key_file`, every TCP listener speaks TLS (see "TLS"
   * above); NULL (the default) serves cleartext HTTP/2. Read by extproc_server_new() and again
   * on every reload; the string is copied. */
  const char *tls_cert_file;
  /** PEM file with the private key of `tls_cert_file` (RSA, EC or Ed25519; unencrypted). Set
   * both or neither. The string is copied. */
  const char *tls_key_file;
  /** PEM file with the CA certificates that sign client certificates. Set (with the two above)
   * for mutual TLS: a client is refused in the handshake unless it presents a certificate that
   * one of these CAs signed (OpenSSL's SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT). NULL
   * (the default) asks clients for no certificate. The string is copied. */
  const char *tls_client_ca_file;
  /** Permission bits of unix socket files (e.g. 0660: owner and group may connect; connecting
   * needs write permission), set before the socket listens. 0 (the default) leaves the mode
   * bind() gives: 0777 less the process's umask. At most 0777. */
  unsigned unix_socket_mode;
  /** Most gRPC streams open at once, over all connections and workers. Each holds a few KiB of
   * request state for as long as the peer keeps it open, and no timeout ends a stream a live
   * peer keeps open, so this bounds what streams can hold in all. Past it a new stream is
   * refused at once with RST_STREAM REFUSED_STREAM (nothing of it was processed; Envoy may
   * retry it), counted as extproc_limit_hits_total{limit="open_streams"} and logged
   * (rate-limited). Default 100000 (a few hundred MiB at most). */
  uint32_t max_open_streams;
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
 * 2^31-1, blocking_threads above 1024, max_buffered_bytes below max_message_bytes, a malformed
 * health_listen, only one of tls_cert_file and tls_key_file, tls_client_ca_file without them,
 * unix_socket_mode above 0777, a TLS file that holds no usable PEM certificate or key, or a key
 * that does not match the certificate), EXTPROC_EIO (health_listen cannot be bound, a TLS file
 * cannot be read) or EXTPROC_ENOMEM. A TLS file refused is named in an error log line with
 * OpenSSL's reason. */
EXTPROC_API int extproc_server_new(extproc_server **out, const extproc_server_options *opts);

/** Serves `proc` (not owned; must outlive the server) on `address`:
 *   "HOST:PORT"     an IPv4 address or host name, e.g. "0.0.0.0:50051", "127.0.0.1:0"
 *   "[IPV6]:PORT"   e.g. "[::1]:50051", "[::]:0"
 *   "unix:PATH"     a unix socket; a stale socket file at PATH is replaced, but one a live
 *                   server still listens on, or a file that is not a socket, is an error; the
 *                   socket file is removed by extproc_server_free, unless another server has
 *                   replaced it meanwhile (a rolling restart)
 * Port 0 picks a free port (see extproc_server_port). Binds at once, so the port is known on
 * return; a port another process holds is an error (the workers share it among themselves only).
 * Returns the listener's index (>= 0), or EXTPROC_EINVAL for a malformed address, EXTPROC_EIO if
 * binding fails (errno-style detail in the log), EXTPROC_ESTATE after start. Call from the thread
 * that created the server. */
EXTPROC_API int extproc_server_listen(extproc_server *srv, const char *address,
                                      const extproc_processor *proc);

/** Serves the server's metrics in the Prometheus text format (version 0.0.4) at
 * `GET /metrics` on `address` ("HOST:PORT" or "[IPV6]:PORT"; port 0 picks one), from a thread of
 * its own (libmicrohttpd), from this call until extproc_server_free(), also while the server
 * drains. The metrics, their names and units are listed in docs/metrics.md. Returns the port
 * (> 0), or EXTPROC_EINVAL for a malformed address, EXTPROC_EIO if binding fails (detail in the
 * log), EXTPROC_ESTATE if the server already has a metrics address, or EXTPROC_ENOMEM. Call
 * from the thread that created the server. */
EXTPROC_API int extproc_server_metrics_listen(extproc_server *srv, const char *address);

/** The TCP port listener `index` is bound to, or 0 for a unix socket or a bad index.
 * Thread-safe once the listener exists. */
EXTPROC_API int extproc_server_port(const extproc_server *srv, int index);

/** The TCP port of the health-only listener (extproc_server_options.health_listen), or 0 when
 * there is none or it is a unix socket. Thread-safe. */
EXTPROC_API int extproc_server_health_port(const extproc_server *srv);

/** Starts the worker threads (and the blocking pool, if a served processor is blocking) and
 * returns. Sets SIGPIPE to be ignored, process-wide, so a peer
 * that disconnects mid-write cannot kill the process. Returns 0, EXTPROC_ESTATE if already started
 * or no listener was added, or EXTPROC_EIO if a thread could not be created. */
EXTPROC_API int extproc_server_start(extproc_server *srv);

/** Asks the server to stop, draining (the stages above): health turns NOT_SERVING before this
 * returns; after drain_delay_ms the listeners close and each connection gets a GOAWAY and is
 * closed when its streams are done or when shutdown_grace_ms runs out, whichever comes first
 * (streams still open then are ended; deferred requests still waiting are abandoned). So the
 * workers end within drain_delay_ms + shutdown_grace_ms. A stop before start applies at start.
 * Thread-safe and async-signal-safe, also while extproc_server_wait runs (a stop that comes once
 * the loops are closing does nothing); returns at once. */
EXTPROC_API void extproc_server_stop(extproc_server *srv);

/** Asks the server to stop at once: as extproc_server_stop() with no drain delay and no grace
 * period. Connections are closed without waiting for their streams (Envoy sees them reset) and
 * deferred requests are abandoned. Also cuts short a draining stop under way. Thread-safe and
 * async-signal-safe, as extproc_server_stop(). */
EXTPROC_API void extproc_server_stop_now(extproc_server *srv);

/** Waits until every worker thread has finished after extproc_server_stop() (at most
 * drain_delay_ms + shutdown_grace_ms plus what a loop needs to close). Deferred requests
 * abandoned at shutdown stay valid for their late extproc_request_resume(), which frees them and
 * returns 0 even after this returns and after extproc_server_free(). Call from one thread. */
EXTPROC_API void extproc_server_wait(extproc_server *srv);

/** Starts the server and blocks until SIGINT or SIGTERM or extproc_server_stop() has stopped it
 * and the workers are done. SIGHUP reloads the TLS files (extproc_server_reload_tls()); without
 * TLS it is logged and ignored. The first signal drains (extproc_server_stop()); a second one, or a
 * signal during a stop begun by extproc_server_stop(), stops at once
 * (extproc_server_stop_now()). SIGHUP's default action would end the process without a drain,
 * so it is never left to it. The signals are
 * handled (through libuv) only while it runs, unblocked in the calling thread meanwhile (its
 * signal mask is restored on return), so one that came earlier while blocked is taken at once.
 * From the moment the workers are done until it returns they are ignored (a late one must not
 * kill a process on its way out), and afterwards their disposition is the default one again.
 * Uses one extra thread to wait for the workers. Returns 0, the error of start, or EXTPROC_EIO
 * if that thread could not be created. */
EXTPROC_API int extproc_server_run(extproc_server *srv);

/** Reads the TLS files again (extproc_server_options.tls_cert_file, tls_key_file,
 * tls_client_ca_file) and, if they load, makes every connection accepted from now on use them;
 * connections already open keep the certificate they were accepted with. If they do not load,
 * nothing changes: the previous certificate stays and one error line says why. Either way one
 * log line and the metric `extproc_tls_reloads_total{result="ok|failed"}` record it. The server
 * also does this on SIGHUP under extproc_server_run(), and by itself when one of the files is
 * replaced or changes (checked every 2 seconds while started). Thread-safe: any thread, at any
 * time between extproc_server_new() and extproc_server_free(); reloads run one at a time.
 * Returns 0; EXTPROC_EINVAL (srv NULL, or a new file holds no usable certificate or key, or
 * the key does not match), EXTPROC_EIO (a file cannot be read), EXTPROC_ENOMEM, or
 * EXTPROC_ESTATE (with a log line) if the server has no TLS. */
EXTPROC_API int extproc_server_reload_tls(extproc_server *srv);

/** Number of gRPC streams currently open, over all loops. Thread-safe. For tests and metrics. */
EXTPROC_API uint64_t extproc_server_open_streams(const extproc_server *srv);

/** Number of gRPC streams served since start (Process and health), over all loops.
 * Thread-safe. */
EXTPROC_API uint64_t extproc_server_total_streams(const extproc_server *srv);

/** Frees a stopped (or never started) server; a running one is stopped first (draining, as
 * extproc_server_stop()) and waited for. NULL is ignored. Deferred requests abandoned at
 * shutdown outlive it (see extproc_server_wait()). */
EXTPROC_API void extproc_server_free(extproc_server *srv);

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_SERVER_H */
