/* Server lifecycle: worker threads, their loops, stopping, and the queue that brings deferred
 * requests back to their loop. */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/arena.h"
#include "base/log.h"
#include "transport/listener.h"
#include "transport/transport.h"

void extproc_server_options_init(extproc_server_options *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->max_message_bytes = 16u << 20;
  opts->workers = 0;
  opts->max_concurrent_streams = 10000;
  opts->initial_window_bytes = 1u << 20;
  opts->shutdown_grace_ms = 5000;
}

extproc_server *extproc_server_create(const extproc_server_options *opts) {
  extproc_server_options o;
  if (opts)
    o = *opts;
  else
    extproc_server_options_init(&o);
  /* Zero fields take their defaults, so `extproc_server_options o = {0}` works too. */
  extproc_server_options defaults;
  extproc_server_options_init(&defaults);
  if (o.max_message_bytes == 0) o.max_message_bytes = defaults.max_message_bytes;
  if (o.initial_window_bytes == 0) o.initial_window_bytes = defaults.initial_window_bytes;
  if (o.max_concurrent_streams == 0) o.max_concurrent_streams = defaults.max_concurrent_streams;
  if (o.max_message_bytes > (1u << 31) || o.initial_window_bytes > 0x7fffffff) return NULL;
  if (o.workers == 0) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    o.workers = n > 0 ? (unsigned)n : 1;
  }
  extproc_server *srv = calloc(1, sizeof(*srv));
  if (!srv) return NULL;
  srv->opts = o;
  srv->worker_count = o.workers;
  srv->workers = calloc(o.workers, sizeof(worker));
  if (!srv->workers) {
    free(srv);
    return NULL;
  }
  for (unsigned i = 0; i < o.workers; i++) {
    srv->workers[i].srv = srv;
    srv->workers[i].index = i;
  }
  return srv;
}

int extproc_server_listen(extproc_server *srv, const char *address, const extproc_processor *proc) {
  if (!srv || !address || !proc) return EXTPROC_EINVAL;
  if (srv->started || srv->listener_count == MAX_LISTENERS) return EXTPROC_ESTATE;
  listener_spec *spec = &srv->listeners[srv->listener_count];
  memset(spec, 0, sizeof(*spec));
  spec->proc = proc;
  const int rv = listener_open(address, spec, srv->worker_count);
  if (rv != 0) return rv;
  return (int)srv->listener_count++;
}

int extproc_server_port(const extproc_server *srv, int index) {
  if (!srv || index < 0 || (unsigned)index >= srv->listener_count) return 0;
  return srv->listeners[index].is_unix ? 0 : srv->listeners[index].port;
}

/* ---- Deferred completions ------------------------------------------------------------- */

static void post_completion(void *data, extproc_request *req) {
  worker *w = data;
  uv_mutex_lock(&w->lock);
  if (w->completed_len == w->completed_cap) {
    const size_t cap = w->completed_cap ? w->completed_cap * 2 : 64;
    extproc_request **grown = realloc(w->completed, cap * sizeof(*grown));
    if (!grown) { /* cannot queue: the request would be lost, so wait and retry */
      uv_mutex_unlock(&w->lock);
      uv_sleep(1);
      post_completion(data, req);
      return;
    }
    w->completed = grown;
    w->completed_cap = cap;
  }
  w->completed[w->completed_len++] = req;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->wakeup);
}

stream_poster worker_poster(worker *w) {
  return (stream_poster){.post = post_completion, .data = w, .deferred = &w->deferred};
}

static void run_completions(worker *w) {
  for (;;) {
    uv_mutex_lock(&w->lock);
    const size_t n = w->completed_len;
    extproc_request **batch = w->completed;
    w->completed = NULL;
    w->completed_len = w->completed_cap = 0;
    uv_mutex_unlock(&w->lock);
    if (n == 0) {
      free(batch);
      return;
    }
    for (size_t i = 0; i < n; i++)
      stream_resume_on_loop(batch[i]);
    free(batch);
  }
}

/* ---- Worker loops --------------------------------------------------------------------- */

static void ignore_close(uv_handle_t *h) { (void)h; }

/* A stopping worker's loop ends once its connections are gone and no deferred request can
 * still post back to it. */
static void worker_maybe_finish(worker *w) {
  if (!w->stopping || w->connections) return;
  if (!uv_is_closing((uv_handle_t *)&w->grace_timer))
    uv_close((uv_handle_t *)&w->grace_timer, ignore_close);
  if (w->deferred == 0 && !uv_is_closing((uv_handle_t *)&w->wakeup))
    uv_close((uv_handle_t *)&w->wakeup, ignore_close);
}

void worker_connection_gone(worker *w) { worker_maybe_finish(w); }

static void on_grace_expired(uv_timer_t *timer) {
  worker *w = timer->data;
  if (w->connections)
    log_line(EXTPROC_LOG_WARN, "shutdown grace period over: closing connections with open streams");
  connections_close_all(w);
}

static void begin_stop(worker *w) {
  w->stopping = true;
  for (unsigned i = 0; i < w->listener_count; i++)
    uv_close(&w->listeners[i].h.handle, ignore_close);
  w->listener_count = 0;
  connections_drain_all(w);
  uv_timer_start(&w->grace_timer, on_grace_expired, w->srv->opts.shutdown_grace_ms, 0);
  worker_maybe_finish(w);
}

static void on_wakeup(uv_async_t *async) {
  worker *w = async->data;
  run_completions(w);
  if (!w->stopping && atomic_load(&w->srv->stop_requested)) begin_stop(w);
  worker_maybe_finish(w);
}

static void worker_main(void *arg) {
  worker *w = arg;
  uv_run(&w->loop, UV_RUN_DEFAULT);
  arena_cache_release();
}

static int worker_init(worker *w) {
  int rv = uv_loop_init(&w->loop);
  if (rv != 0) return rv;
  if ((rv = uv_mutex_init(&w->lock)) != 0) return rv;
  if ((rv = uv_async_init(&w->loop, &w->wakeup, on_wakeup)) != 0) return rv;
  w->wakeup.data = w;
  if ((rv = uv_timer_init(&w->loop, &w->grace_timer)) != 0) return rv;
  w->grace_timer.data = w;
  extproc_server *srv = w->srv;
  for (unsigned i = 0; i < srv->listener_count; i++) {
    if (srv->listeners[i].fds[w->index] < 0) continue;
    rv = listener_start(w, &srv->listeners[i], &w->listeners[w->listener_count]);
    if (rv != 0) {
      log_line(EXTPROC_LOG_ERROR, "listen: %s", uv_strerror(rv));
      return rv;
    }
    w->listener_count++;
  }
  return 0;
}

int extproc_server_start(extproc_server *srv) {
  if (!srv || srv->started || srv->listener_count == 0) return EXTPROC_ESTATE;
  srv->started = true;
  /* A peer that closes while we write must be an error return, not a process kill. */
  signal(SIGPIPE, SIG_IGN);
  for (unsigned i = 0; i < srv->worker_count; i++)
    if (worker_init(&srv->workers[i]) != 0) return EXTPROC_EIO;
  /* Worker threads leave SIGINT/SIGTERM to the thread that runs the server. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int rv = 0;
  for (unsigned i = 0; i < srv->worker_count && rv == 0; i++)
    if (uv_thread_create(&srv->workers[i].thread, worker_main, &srv->workers[i]) != 0) {
      srv->worker_count = i; /* only these run and will be waited for */
      rv = EXTPROC_EIO;
    }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rv != 0) extproc_server_stop(srv);
  return rv;
}

void extproc_server_stop(extproc_server *srv) {
  if (!srv) return;
  atomic_store(&srv->stop_requested, true);
  /* Announced before looking: extproc_server_wait either sees this call and lets it finish, or
   * has already set loops_closing, which this call then sees. */
  atomic_fetch_add(&srv->stops_in_flight, 1);
  if (!atomic_load(&srv->loops_closing) && srv->started) {
    for (unsigned i = 0; i < srv->worker_count; i++)
      uv_async_send(&srv->workers[i].wakeup);
    uv_async_t *run = srv->run_wakeup;
    if (run) uv_async_send(run);
  }
  atomic_fetch_sub(&srv->stops_in_flight, 1);
}

/* Waits for extproc_server_stop calls still using the loops or handles they found. */
static void wait_stops_in_flight(extproc_server *srv) {
  while (atomic_load(&srv->stops_in_flight) != 0)
    sched_yield();
}

void extproc_server_wait(extproc_server *srv) {
  if (!srv || !srv->started) return;
  for (unsigned i = 0; i < srv->worker_count; i++)
    uv_thread_join(&srv->workers[i].thread);
  /* No stop may wake a loop from here on: they are about to close. */
  atomic_store(&srv->loops_closing, true);
  wait_stops_in_flight(srv);
  for (unsigned i = 0; i < srv->worker_count; i++) {
    worker *w = &srv->workers[i];
    uv_run(&w->loop, UV_RUN_DEFAULT); /* let the last close callbacks run */
    uv_loop_close(&w->loop);
    arena_cache_release(); /* what those callbacks freed on this thread */
    uv_mutex_destroy(&w->lock);
    free(w->completed);
    w->completed = NULL;
  }
  srv->started = false;
  srv->worker_count = 0; /* waited for; free() must not join them again */
}

/* ---- Blocking run with signal handling ------------------------------------------------- */

static void on_signal(uv_signal_t *sig, int signum) {
  log_line(EXTPROC_LOG_INFO, "received signal %d, stopping", signum);
  extproc_server_stop(sig->data);
}

static void on_run_wakeup(uv_async_t *async) {
  extproc_server *srv = async->data;
  if (atomic_load(&srv->stop_requested)) uv_stop(async->loop);
}

int extproc_server_run(extproc_server *srv) {
  if (!srv) return EXTPROC_EINVAL;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  uv_async_t wakeup;
  if (uv_loop_init(&loop) != 0) return EXTPROC_EIO;
  uv_async_init(&loop, &wakeup, on_run_wakeup);
  wakeup.data = srv;
  uv_signal_init(&loop, &sigint);
  uv_signal_init(&loop, &sigterm);
  sigint.data = sigterm.data = srv;
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  srv->run_wakeup = &wakeup;
  int rv = extproc_server_start(srv);
  if (rv == 0 && !atomic_load(&srv->stop_requested)) uv_run(&loop, UV_RUN_DEFAULT);
  srv->run_wakeup = NULL;
  wait_stops_in_flight(srv); /* none still holds `wakeup`, closed below */
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  uv_close((uv_handle_t *)&sigint, ignore_close);
  uv_close((uv_handle_t *)&sigterm, ignore_close);
  uv_close((uv_handle_t *)&wakeup, ignore_close);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return rv;
}

uint64_t extproc_server_open_streams(const extproc_server *srv) {
  return srv ? atomic_load(&((extproc_server *)srv)->open_streams) : 0;
}

uint64_t extproc_server_total_streams(const extproc_server *srv) {
  return srv ? atomic_load(&((extproc_server *)srv)->total_streams) : 0;
}

void extproc_server_free(extproc_server *srv) {
  if (!srv) return;
  if (srv->started) {
    extproc_server_stop(srv);
    extproc_server_wait(srv);
  }
  for (unsigned i = 0; i < srv->listener_count; i++)
    listener_spec_free(&srv->listeners[i], srv->workers ? srv->opts.workers : 0);
  free(srv->workers);
  free(srv);
}
