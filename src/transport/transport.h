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

typedef struct worker worker;

enum { MAX_LISTENERS = 16 };

/* The limits every connection applies; copied from the server's options, read-only once the
 * workers run. */
typedef struct transport_config {
  size_t max_message_bytes;        /* largest gRPC message accepted */
  uint32_t max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
  uint32_t initial_window_bytes;   /* SETTINGS_INITIAL_WINDOW_SIZE */
  uint32_t shutdown_grace_ms;      /* how long draining connections may go on */
  uint32_t drain_delay_ms;         /* at stop: health NOT_SERVING, still serving, this long */
  struct task_pool *pool;          /* runs blocking callbacks; NULL if none is served */
  engine_stats *engine_stats;      /* the engine's counters, shared by all workers */
} transport_config;

/* Counters and gauges shared by all workers (atomics: any thread reads them). Each is named by
 * the Prometheus metric a metrics endpoint would export it as:
 *   open_streams          extproc_open_streams (gauge): gRPC streams open now
 *   total_streams         extproc_streams_total: gRPC streams served (Process and health)
 *   draining              extproc_draining (gauge): 1 from the stop request on; health then
 *                         answers NOT_SERVING. The one value here that is also state: set by
 *                         the server, read by the health service on every loop.
 *   health_checks         extproc_health_checks_total: grpc.health.v1.Health/Check answered
 *   health_watches        extproc_health_watches_total: Health/Watch streams started
 *   streams_cut           extproc_shutdown_streams_cut_total: streams still open when the
 *                         shutdown grace period ran out (or at an immediate stop), closed by us
 *   deferred_abandoned    extproc_deferred_abandoned_total: deferred requests not yet resumed
 *                         when their loop stopped; each is freed by its late resume */
typedef struct transport_stats {
  atomic_uint_fast64_t open_streams;
  atomic_uint_fast64_t total_streams;
  atomic_uint_fast64_t draining;
  atomic_uint_fast64_t health_checks;
  atomic_uint_fast64_t health_watches;
  atomic_uint_fast64_t streams_cut;
  atomic_uint_fast64_t deferred_abandoned;
} transport_stats;

/* One address given to extproc_server_listen. TCP listeners have one socket per worker
 * (SO_REUSEPORT); a unix socket has one, served by worker 0. */
typedef struct listener_spec {
  const extproc_processor *proc; /* NULL: a health-only listener */
  bool is_unix;
  int port;
  int *fds;        /* per worker; -1 where that worker does not serve this listener */
  char *unix_path; /* the socket file we created, removed when the server is freed */
} listener_spec;

/* A TCP or unix-socket handle, used through whichever view a libuv call needs. */
typedef union stream_handle {
  uv_tcp_t tcp;
  uv_pipe_t pipe;
  uv_stream_t stream;
  uv_handle_t handle;
} stream_handle;

typedef struct listener {
  stream_handle h;
  worker *w;
  const listener_spec *spec;
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
  atomic_bool stop_now;   /* no drain delay, no grace */
  uv_timer_t grace_timer; /* the drain delay, then the grace period */

  uv_mutex_t lock; /* guards `completed` */
  extproc_request **completed;
  size_t completed_len, completed_cap;

  uint8_t read_buf[64 * 1024]; /* reads are fully processed before the next one */
};

/* Accepts one connection on `l` and starts serving it. (connection.c) */
void connection_accept(listener *l);

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

/* A connection of `w` is gone, so a stopping worker may finish. (worker.c) */
void worker_connection_gone(worker *w);

/* The poster that hands deferred requests back to `w`'s loop, with its deadline timers and the
 * blocking pool. (worker.c) */
stream_poster worker_poster(worker *w);

/* The poster's deadline timers: one-shot uv_timers on `data`'s (a worker's) loop. (timers.c) */
void *worker_timer_start(void *data, extproc_request *req, uint32_t ms);
void worker_timer_stop(void *data, void *timer);

#endif
