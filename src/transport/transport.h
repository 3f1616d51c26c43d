/* The transport's types: worker loops and their completion queues, listeners, and what every
 * connection reads from its worker (limits and counters).
 *
 * A worker is one thread running one libuv loop. Each connection and all its streams belong to
 * one worker, so nothing here takes a lock except the worker's completion queue, which other
 * threads use to hand back deferred requests. The server layer above owns the workers and
 * drives them through worker.h; the transport never calls up into it. */
#ifndef EXTPROC_TRANSPORT_H
#define EXTPROC_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/list.h"
#include "engine/stream.h"
#include "transport/grpc_frame.h"

typedef struct worker worker;

enum { MAX_LISTENERS = 16 };

/* The limits every connection applies; copied from the server's options, read-only once the
 * workers run. A timeout of TIMEOUT_OFF is disabled. */
typedef struct transport_config {
  size_t max_message_bytes;        /* largest gRPC message accepted */
  uint32_t max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
  uint32_t initial_window_bytes;   /* SETTINGS_INITIAL_WINDOW_SIZE */
  uint32_t shutdown_grace_ms;      /* how long draining connections may go on */
  uint32_t drain_delay_ms;         /* at stop: health NOT_SERVING, still serving, this long */
  struct task_pool *pool;          /* runs blocking callbacks; NULL if none is served */
  engine_stats *engine_stats;      /* the engine's counters, shared by all workers */
  uint64_t max_connections;        /* open at once, over all workers */
  uint32_t handshake_timeout_ms;   /* preface + SETTINGS must arrive within this */
  uint32_t idle_timeout_ms;        /* no open stream for this long: GOAWAY and close */
  uint32_t keepalive_interval_ms;  /* no input for this long: PING */
  uint32_t keepalive_timeout_ms;   /* PING not acknowledged within this: close */
  size_t max_buffered_bytes;       /* incomplete messages, over all connections */
  uint64_t max_open_streams;       /* open at once, over all connections and workers */
  struct tls_store *tls;           /* TCP listeners speak TLS with its context; NULL: cleartext */
} transport_config;

#define TIMEOUT_OFF UINT32_MAX

/* The limits whose hits are counted and logged (rate-limited, see limits.c). */
typedef enum transport_limit {
  LIMIT_MAX_CONNECTIONS,
  LIMIT_FILE_DESCRIPTORS,
  LIMIT_HANDSHAKE_TIMEOUT,
  LIMIT_IDLE_TIMEOUT,
  LIMIT_KEEPALIVE_TIMEOUT,
  LIMIT_MESSAGE_SIZE,
  LIMIT_BUFFERED_BYTES,
  LIMIT_OPEN_STREAMS,
  LIMIT_COUNT
} transport_limit;

/* Counters shared by all workers (atomics: any thread reads them). Named as the Prometheus
 * metrics a later change exports them as, with an `extproc_` prefix: a `_total` suffix is a
 * counter (only grows), anything else a gauge (the current value).
 *
 *   open_streams                    gRPC streams open now
 *   total_streams                   gRPC streams opened since start (Process and health)
 *   connections_open                connections open now (what max_connections bounds)
 *   connections_accepted_total      connections accepted
 *   accept_paused_max_connections_total
 *                                   times accepting paused because max_connections were open
 *   accept_paused_no_fds_total      times accepting paused because accept() failed for want of
 *                                   file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
 *   handshake_timeouts_total        connections closed without preface + SETTINGS in time
 *   idle_timeouts_total             connections closed after idle_timeout_ms without a stream
 *   keepalive_timeouts_total        connections closed for an unanswered keepalive PING
 *   messages_too_large_total        streams ended with RESOURCE_EXHAUSTED: a message above
 *                                   max_message_bytes
 *   buffered_bytes                  bytes of incomplete messages buffered now, all connections
 *   buffered_limit_holds_total      times a connection's input was held back because
 *                                   buffered_bytes was over max_buffered_bytes
 *   draining                        1 from the stop request on; health then answers
 *                                   NOT_SERVING. The one value here that is also state: set by
 *                                   the server, read by the health service on every loop.
 *   health_checks_total             grpc.health.v1.Health/Check answered
 *   health_watches_total            Health/Watch streams started
 *   shutdown_streams_cut_total      streams still open when the shutdown grace period ran out
 *                                   (or at an immediate stop), closed by us
 *   deferred_abandoned_total        deferred requests not yet resumed when their loop stopped;
 *                                   each is freed by its late resume
 *   streams_refused_total           streams refused (RST_STREAM REFUSED_STREAM) because
 *                                   max_open_streams were open
 *   bytes_received_total            bytes read from peers (HTTP/2 framing included)
 *   bytes_sent_total                bytes handed to the sockets for peers (TLS records
 *                                   included, on TLS listeners)
 *   tls_handshake_failures_total    TLS connections closed because their handshake failed
 *                                   (no common version or cipher, no h2 in ALPN, a client
 *                                   certificate missing or refused, not TLS at all)
 *   tls_reloads_ok_total            certificate reloads that took effect
 *   tls_reloads_failed_total        certificate reloads refused (the previous context stays)
 */
typedef struct transport_stats {
  atomic_uint_fast64_t open_streams;
  atomic_uint_fast64_t total_streams;
  atomic_uint_fast64_t connections_open;
  atomic_uint_fast64_t connections_accepted_total;
  atomic_uint_fast64_t accept_paused_max_connections_total;
  atomic_uint_fast64_t accept_paused_no_fds_total;
  atomic_uint_fast64_t handshake_timeouts_total;
  atomic_uint_fast64_t idle_timeouts_total;
  atomic_uint_fast64_t keepalive_timeouts_total;
  atomic_uint_fast64_t messages_too_large_total;
  atomic_uint_fast64_t buffered_bytes;
  atomic_uint_fast64_t buffered_limit_holds_total;
  atomic_uint_fast64_t draining;
  atomic_uint_fast64_t health_checks;
  atomic_uint_fast64_t health_watches;
  atomic_uint_fast64_t streams_cut;
  atomic_uint_fast64_t deferred_abandoned;
  atomic_uint_fast64_t streams_refused_total;
  atomic_uint_fast64_t bytes_received_total;
  atomic_uint_fast64_t bytes_sent_total;
  atomic_uint_fast64_t tls_handshake_failures_total;
  atomic_uint_fast64_t tls_reloads_ok_total;
  atomic_uint_fast64_t tls_reloads_failed_total;
  /* Not a metric: when each limit's warning may next be logged, and how many were suppressed
   * since the last one (limits.c). */
  struct {
    atomic_uint_fast64_t next_ms;
    atomic_uint_fast64_t suppressed;
  } log_gate[LIMIT_COUNT];
} transport_stats;

/* One address given to extproc_server_listen. TCP listeners have one socket per worker
 * (SO_REUSEPORT); a unix socket has one, served by worker 0. */
typedef struct listener_spec {
  const extproc_processor *proc; /* NULL: a health-only listener */
  bool is_unix;
  int port;
  int *fds;        /* per worker; -1 where that worker does not serve this listener */
  char *unix_path; /* the socket file we created, removed when the server is freed */
  /* Which file that is (device and inode): a successor may have replaced it by then. */
  unsigned long long unix_dev, unix_ino;
} listener_spec;

/* A TCP or unix-socket handle, used through whichever view a libuv call needs. */
typedef union stream_handle {
  uv_tcp_t tcp;
  uv_pipe_t pipe;
  uv_stream_t stream;
  uv_handle_t handle;
} stream_handle;

/* Why a listener does not accept right now. */
typedef enum accept_pause { ACCEPTING, PAUSED_MAX_CONNECTIONS, PAUSED_NO_FDS } accept_pause;

/* A listening socket, watched with a uv_poll_t rather than uv_listen (see listener.c): we call
 * accept() ourselves, so we can stop and resume accepting. */
typedef struct listener {
  uv_poll_t poll;
  int fd; /* owned; closed with the poll handle */
  worker *w;
  const listener_spec *spec;
  accept_pause paused; /* the reason it was last paused, until an accept succeeds */
  bool polling;        /* the poll handle is started */
} listener;

struct worker {
  const transport_config *cfg;
  transport_stats *stats;
  unsigned index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wakeup; /* stop requests and deferred completions */
  listener listeners[MAX_LISTENERS];
  unsigned listener_count;
  dlist connections;   /* for shutdown */
  size_t deferred;     /* requests deferred and not yet resumed; loop thread only */
  dlist deferred_list; /* those requests (engine/stream.h), abandoned if the grace runs out */
  bool stopping;       /* listeners closed, GOAWAY sent: the loop ends once nothing is left */
  bool draining;       /* the stop has begun: health said NOT_SERVING, still serving */
  bool grace_over;     /* connections closed, deferred requests abandoned */
  atomic_bool stop_requested;
  atomic_bool stop_now;    /* no drain delay, no grace */
  uv_timer_t grace_timer;  /* the drain delay, then the grace period */
  uv_timer_t accept_timer; /* resumes paused listeners after a short backoff */
  uv_timer_t budget_timer; /* retries input held back by the server-wide buffer budget */
  uv_timer_t trim_timer;   /* gives freed memory back to the system after a burst */
  uv_timer_t idle_timer;   /* gives idle connections' session pages back (idle_memory.c) */
  size_t freed_since_trim; /* large buffers freed since the last trim, bytes */
  grpc_spare spare;        /* one large message buffer kept for the next large message */

  /* Output of one flush round is built here and written at once; only what the socket does not
   * take is copied into a buffer of the connection's own, so idle connections hold none. */
  uint8_t *out_buf;
  size_t out_cap;
  /* On TLS connections, the round's records: out_buf's bytes encrypted. */
  uint8_t *tls_buf;
  size_t tls_cap;

  uv_mutex_t lock; /* guards `completed` */
  extproc_request **completed;
  size_t completed_len, completed_cap;

  uint8_t read_buf[64 * 1024]; /* reads are fully processed before the next one */
};

/* Starts serving `fd`, a connection just accepted on `l` from `peer` ("ip:port" or "unix").
 * Takes the descriptor (closed on failure) and the slot counted in stats->connections_open
 * (given back on failure). (connection.c) */
void connection_accept(listener *l, int fd, const char *peer);

/* Closes every connection of `w` and frees their streams, counting those still open as cut
 * (stats->streams_cut): it is only used when a stop gives up waiting. (connection.c) */
void connections_close_all(worker *w);

/* Sends every connection of `w` a GOAWAY: each closes by itself once its open streams end.
 * (connection.c) */
void connections_drain_all(worker *w);

/* The health status changed (the server began to drain): every Health/Watch stream of `w` is
 * sent the new one. (health.c) */
void health_notify_watchers(worker *w);

/* The worker is closing its connections: Health/Watch streams end (UNAVAILABLE), so they do
 * not hold their connection open through the grace period. (health.c) */
void health_end_watches(worker *w);

/* A connection of `w` is gone: a paused listener may accept again, a stopping worker may
 * finish. (worker.c) */
void worker_connection_gone(worker *w);

/* Resumes `w`'s listeners after `delay_ms` (0: on the next loop iteration). (worker.c) */
void worker_resume_accept_later(worker *w, uint64_t delay_ms);

/* Retries held input of `w`'s connections shortly (the server-wide buffer budget was
 * exceeded). (worker.c) */
void worker_retry_budget_later(worker *w);

/* `bytes` of large buffers were freed on `w`: once a burst is over, the memory is given back to
 * the system (rate-limited). (worker.c) */
void worker_note_freed(worker *w, size_t bytes);

/* A reader left a buffer in w->spare: it is freed if it goes unused until the next trim or the
 * one after. (worker.c) */
void worker_note_spare(worker *w);

/* A connection of `w` went idle: its session's pages are given back if it stays so (a sweep of
 * the worker's connections, at most once a second while one is waiting). (worker.c) */
void worker_release_idle_later(worker *w);

/* Gives back the session pages of `w`'s connections idle long enough. Returns true if a
 * connection is idle but not yet long enough: sweep again later. (idle_memory.c) */
bool connections_release_idle(worker *w);

/* Connections of `w` whose input waits for the server-wide budget: flow credit is retried.
 * (flow.c) */
void connections_retry_budget(worker *w);

/* Counts a hit of `limit` and logs `fmt` (with the peer's address, where there is one) at
 * warning level (idle closes: info), at most once per LIMIT_LOG_INTERVAL_MS for each limit over all
 * workers; the next line says how many were left out. (limits.c) */
void limit_hit(transport_stats *stats, transport_limit limit, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The poster that hands deferred requests back to `w`'s loop, with its deadline timers and the
 * blocking pool. (worker.c) */
stream_poster worker_poster(worker *w);

/* The poster's deadline timers: one-shot uv_timers on `data`'s (a worker's) loop. (timers.c) */
void *worker_timer_start(void *data, extproc_request *req, uint32_t ms);
void worker_timer_stop(void *data, void *timer);

#endif
