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
  struct task_pool *pool;          /* runs blocking callbacks; NULL if none is served */
  engine_stats *engine_stats;      /* the engine's counters, shared by all workers */
} transport_config;

/* Counters shared by all workers (atomics: any thread reads them). */
typedef struct transport_stats {
  atomic_uint_fast64_t open_streams;
  atomic_uint_fast64_t total_streams;
} transport_stats;

/* One address given to extproc_server_listen. TCP listeners have one socket per worker
 * (SO_REUSEPORT); a unix socket has one, served by worker 0. */
typedef struct listener_spec {
  const extproc_processor *proc;
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
  dlist connections; /* for shutdown */
  size_t deferred;   /* requests deferred and not yet resumed; loop thread only */
  bool stopping;
  atomic_bool stop_requested;
  uv_timer_t grace_timer; /* runs while connections drain at shutdown */

  uv_mutex_t lock; /* guards `completed` */
  extproc_request **completed;
  size_t completed_len, completed_cap;

  uint8_t read_buf[64 * 1024]; /* reads are fully processed before the next one */
};

/* Accepts one connection on `l` and starts serving it. (connection.c) */
void connection_accept(listener *l);

/* Closes every connection of `w` and frees their streams. (connection.c) */
void connections_close_all(worker *w);

/* Sends every connection of `w` a GOAWAY: each closes by itself once its open streams end.
 * (connection.c) */
void connections_drain_all(worker *w);

/* A connection of `w` is gone, so a stopping worker may finish. (worker.c) */
void worker_connection_gone(worker *w);

/* The poster that hands deferred requests back to `w`'s loop, with its deadline timers and the
 * blocking pool. (worker.c) */
stream_poster worker_poster(worker *w);

/* The poster's deadline timers: one-shot uv_timers on `data`'s (a worker's) loop. (timers.c) */
void *worker_timer_start(void *data, extproc_request *req, uint32_t ms);
void worker_timer_stop(void *data, void *timer);

#endif
