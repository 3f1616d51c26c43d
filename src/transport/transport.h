/* The transport's internal types: worker loops, listeners and HTTP/2 connections.
 *
 * A worker is one thread running one libuv loop. Each connection and all its streams belong to
 * one worker, so nothing here takes a lock except the worker's completion queue, which other
 * threads use to hand back deferred requests. */
#ifndef EXTPROC_TRANSPORT_H
#define EXTPROC_TRANSPORT_H

#include <nghttp2/nghttp2.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "engine/stream.h"
#include "extproc/server.h"

typedef struct worker worker;
typedef struct connection connection;

enum { MAX_LISTENERS = 16 };

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
  extproc_server *srv;
  unsigned index;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_async_t wakeup; /* stop requests and deferred completions */
  listener listeners[MAX_LISTENERS];
  unsigned listener_count;
  connection *connections; /* doubly linked, for shutdown */
  size_t deferred;         /* requests deferred and not yet resumed; loop thread only */
  bool stopping;
  uv_timer_t grace_timer; /* runs while connections drain at shutdown */

  uv_mutex_t lock; /* guards `completed` */
  extproc_request **completed;
  size_t completed_len, completed_cap;

  uint8_t read_buf[64 * 1024]; /* reads are fully processed before the next one */
};

struct extproc_server {
  extproc_server_options opts;
  worker *workers;
  unsigned worker_count;
  listener_spec listeners[MAX_LISTENERS];
  unsigned listener_count;
  bool started;
  atomic_bool stop_requested;
  uv_async_t *_Atomic run_wakeup; /* set while extproc_server_run waits */
  /* extproc_server_stop may come from any thread at any time, even while extproc_server_wait
   * (or extproc_server_run) closes the loops and handles it wakes: a stop counts itself in
   * `stops_in_flight` while it uses them, and does nothing once `loops_closing` is set. */
  atomic_bool loops_closing;
  atomic_int stops_in_flight;
  atomic_uint_fast64_t open_streams;
  atomic_uint_fast64_t total_streams;
};

/* Accepts one connection on `l` and starts serving it. (connection.c) */
void connection_accept(listener *l);

/* Closes every connection of `w` and frees their streams. (connection.c) */
void connections_close_all(worker *w);

/* Sends every connection of `w` a GOAWAY: each closes by itself once its open streams end.
 * (connection.c) */
void connections_drain_all(worker *w);

/* Tells the worker a connection is gone, so a stopping worker can finish. (server.c) */
void worker_connection_gone(worker *w);

/* The poster that hands deferred requests back to `w`'s loop. (server.c) */
stream_poster worker_poster(worker *w);

#endif
