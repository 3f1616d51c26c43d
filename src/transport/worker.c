/* Worker loops: one thread and one libuv loop each, the queue that brings deferred requests
 * back to their loop, and stopping (health turns NOT_SERVING for the drain delay, then
 * listeners close and connections drain, then the grace period ends what is left). */
#include "transport/worker.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "base/arena.h"
#include "base/log.h"
#include "transport/listener.h"

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
  return (stream_poster){.post = post_completion,
                         .data = w,
                         .deferred = &w->deferred,
                         .deferred_list = &w->deferred_list,
                         .timer_start = worker_timer_start,
                         .timer_stop = worker_timer_stop,
                         .pool = w->cfg->pool,
                         .stats = w->cfg->engine_stats,
                         .loop = &w->loop};
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

static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, ignore_close);
}

/* Stopping goes through three stages, each started by the one before:
 *   draining    health answers NOT_SERVING, everything else goes on for drain_delay_ms, so
 *               Envoy's health checks take the host out of rotation before it stops accepting;
 *   stopping    listeners close and every connection gets a GOAWAY; open streams may go on
 *               for shutdown_grace_ms;
 *   grace over  connections still open are closed and deferred requests still waiting are
 *               abandoned (engine/stream.h), so no callback can keep the process alive.
 * The loop ends once its connections are gone and no deferred request can still post back to
 * it: when all of them came back, or at the end of the grace period. An immediate stop runs
 * every stage at once. */
static void worker_maybe_finish(worker *w) {
  if (!w->stopping || w->connections.head) return;
  if (w->deferred != 0 && !w->grace_over) return; /* they may come back within the grace */
  uv_timer_t *timers[] = {&w->grace_timer, &w->accept_timer, &w->budget_timer, &w->trim_timer,
                          &w->idle_timer};
  for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++)
    if (!uv_is_closing((uv_handle_t *)timers[i])) uv_close((uv_handle_t *)timers[i], ignore_close);
  /* Resumes already on their way (stream_abandon_deferred keeps those) must still land. */
  if (w->deferred == 0 && !uv_is_closing((uv_handle_t *)&w->wakeup))
    uv_close((uv_handle_t *)&w->wakeup, ignore_close);
}

/* ---- Accept pauses, budget retries, memory trimming ------------------------------------ */

/* What a closed connection gives back besides its streams, roughly: nghttp2's session with its
 * frame buffers and header tables. Counted towards the next trim. */
enum { CONNECTION_FOOTPRINT_BYTES = 32 * 1024 };

static void resume_listeners(worker *w) {
  for (unsigned i = 0; i < w->listener_count; i++)
    listener_resume(&w->listeners[i]);
}

static void on_accept_timer(uv_timer_t *timer) { resume_listeners(timer->data); }

void worker_resume_accept_later(worker *w, uint64_t delay_ms) {
  if (w->stopping) return;
  uv_timer_start(&w->accept_timer, on_accept_timer, delay_ms, 0);
}

void worker_connection_gone(worker *w) {
  /* A slot is free: a listener paused at max_connections on this loop takes it at once. */
  for (unsigned i = 0; i < w->listener_count; i++)
    if (w->listeners[i].paused == PAUSED_MAX_CONNECTIONS) listener_resume(&w->listeners[i]);
  worker_note_freed(w, CONNECTION_FOOTPRINT_BYTES);
  worker_maybe_finish(w);
}

/* How often input held back by the server-wide buffer budget is retried: the budget is freed
 * by any worker, and nothing wakes this one when it is. */
enum { BUDGET_RETRY_MS = 50 };

static void on_budget_timer(uv_timer_t *timer) { connections_retry_budget(timer->data); }

void worker_retry_budget_later(worker *w) {
  if (!w->stopping && !uv_is_active((uv_handle_t *)&w->budget_timer))
    uv_timer_start(&w->budget_timer, on_budget_timer, BUDGET_RETRY_MS, 0);
}

/* glibc keeps freed memory in its arenas: large buffers freed in the middle of a heap, and all
 * of it in the per-thread arenas our loops allocate from, stay resident until malloc_trim(0)
 * returns the free pages. A trim walks every arena under its lock, so it runs at most once per
 * TRIM_DELAY_MS per loop, and only after TRIM_AFTER_BYTES of large buffers were freed. */
enum { TRIM_AFTER_BYTES = 1 << 20, TRIM_DELAY_MS = 1000 };

/* One trim at a time, process-wide. When glibc's allocator does not serve malloc (a sanitizer's
 * or a preloaded one does), the first malloc_trim initializes glibc's idle allocator, and that
 * initialization is not safe from two threads at once: both attach to its main arena, and the
 * second thread to exit fails glibc's arena count assertion and aborts. */
static pthread_mutex_t trim_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_trim_timer(uv_timer_t *timer);

/* The spare message buffer goes once a whole trim period passed without a reader taking it. */
static void drop_unused_spare(worker *w) {
  if (w->spare.buf && !w->spare.used) {
    free(w->spare.buf);
    w->spare.buf = NULL;
    w->spare.cap = 0;
  }
  w->spare.used = false;
  if (w->spare.buf && !w->stopping) uv_timer_start(&w->trim_timer, on_trim_timer, TRIM_DELAY_MS, 0);
}

static void on_trim_timer(uv_timer_t *timer) {
  worker *w = timer->data;
  w->freed_since_trim = 0;
  drop_unused_spare(w);
#ifdef __GLIBC__
  pthread_mutex_lock(&trim_lock);
  malloc_trim(0);
  pthread_mutex_unlock(&trim_lock);
#endif
}

void worker_note_spare(worker *w) {
  if (!w->stopping && !uv_is_active((uv_handle_t *)&w->trim_timer))
    uv_timer_start(&w->trim_timer, on_trim_timer, TRIM_DELAY_MS, 0);
}

void worker_note_freed(worker *w, size_t bytes) {
  w->freed_since_trim += bytes;
  if (w->freed_since_trim < TRIM_AFTER_BYTES || w->stopping) return;
  if (!uv_is_active((uv_handle_t *)&w->trim_timer))
    uv_timer_start(&w->trim_timer, on_trim_timer, TRIM_DELAY_MS, 0);
}

/* How often idle connections are looked at while one waits to give its pages back; a connection
 * gives them back after idle_memory.c's RELEASE_AFTER_MS, so at most this much later. */
enum { IDLE_SWEEP_MS = 1000 };

static void on_idle_timer(uv_timer_t *timer) {
  worker *w = timer->data;
  if (connections_release_idle(w) && !w->stopping)
    uv_timer_start(&w->idle_timer, on_idle_timer, IDLE_SWEEP_MS, 0);
}

void worker_release_idle_later(worker *w) {
  if (!w->stopping && !uv_is_active((uv_handle_t *)&w->idle_timer))
    uv_timer_start(&w->idle_timer, on_idle_timer, IDLE_SWEEP_MS, 0);
}

static void end_grace(worker *w) {
  if (w->grace_over) return;
  w->grace_over = true;
  if (w->connections.head)
    log_line(EXTPROC_LOG_WARN, "shutdown grace period over: closing connections with open streams");
  connections_close_all(w);
  const stream_poster poster = worker_poster(w);
  atomic_fetch_add(&w->stats->deferred_abandoned, stream_abandon_deferred(&poster));
}

static void on_grace_expired(uv_timer_t *timer) {
  worker *w = timer->data;
  end_grace(w);
  worker_maybe_finish(w);
}

static void stop_listeners(worker *w) {
  for (unsigned i = 0; i < w->listener_count; i++)
    listener_stop(&w->listeners[i]);
  w->listener_count = 0;
}

static void begin_stop(worker *w) {
  w->stopping = true;
  stop_listeners(w);
  health_end_watches(w);
  connections_drain_all(w);
  uv_timer_start(&w->grace_timer, on_grace_expired, w->cfg->shutdown_grace_ms, 0);
  worker_maybe_finish(w);
}

static void on_drain_over(uv_timer_t *timer) { begin_stop(timer->data); }

static void begin_drain(worker *w) {
  w->draining = true;
  health_notify_watchers(w);
  if (w->cfg->drain_delay_ms == 0)
    begin_stop(w);
  else
    uv_timer_start(&w->grace_timer, on_drain_over, w->cfg->drain_delay_ms, 0);
}

static void on_wakeup(uv_async_t *async) {
  worker *w = async->data;
  run_completions(w);
  if (atomic_load(&w->stop_now) && !w->grace_over) {
    w->draining = true; /* watchers are ended by begin_stop */
    if (!w->stopping) begin_stop(w);
    end_grace(w);
  } else if (!w->draining && atomic_load(&w->stop_requested)) {
    begin_drain(w);
  }
  worker_maybe_finish(w);
}

static void worker_main(void *arg) {
  worker *w = arg;
  uv_run(&w->loop, UV_RUN_DEFAULT);
  arena_cache_release();
}

/* Closes every handle of a loop that never ran (or has stopped) and frees the loop. */
static void close_loop(worker *w) {
  stop_listeners(w); /* their sockets close with them */
  uv_walk(&w->loop, close_handle, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT); /* let the close callbacks run */
  uv_loop_close(&w->loop);
  arena_cache_release(); /* what those callbacks freed on this thread */
  uv_mutex_destroy(&w->lock);
  free(w->completed);
  w->completed = NULL;
  free(w->out_buf);
  w->out_buf = NULL;
  free(w->tls_buf);
  w->tls_buf = NULL;
  free(w->spare.buf);
  w->spare = (grpc_spare){0};
}

int worker_init(worker *w, unsigned index, const transport_config *cfg, transport_stats *stats,
                listener_spec *specs, unsigned spec_count) {
  memset(w, 0, sizeof(*w)); /* not a compound literal: the read buffer is 64 KiB */
  w->cfg = cfg;
  w->stats = stats;
  w->index = index;
  int rv = uv_loop_init(&w->loop);
  if (rv != 0) return rv;
  if ((rv = uv_mutex_init(&w->lock)) != 0) {
    uv_loop_close(&w->loop);
    return rv;
  }
  if ((rv = uv_async_init(&w->loop, &w->wakeup, on_wakeup)) == 0 &&
      (rv = uv_timer_init(&w->loop, &w->grace_timer)) == 0 &&
      (rv = uv_timer_init(&w->loop, &w->accept_timer)) == 0 &&
      (rv = uv_timer_init(&w->loop, &w->budget_timer)) == 0 &&
      (rv = uv_timer_init(&w->loop, &w->trim_timer)) == 0 &&
      (rv = uv_timer_init(&w->loop, &w->idle_timer)) == 0) {
    w->wakeup.data = w;
    w->grace_timer.data = w;
    w->accept_timer.data = w->budget_timer.data = w->trim_timer.data = w->idle_timer.data = w;
    for (unsigned i = 0; i < spec_count && rv == 0; i++) {
      if (specs[i].fds[index] < 0) continue;
      rv = listener_start(w, &specs[i], &w->listeners[w->listener_count]);
      if (rv == 0)
        w->listener_count++;
      else
        log_line(EXTPROC_LOG_ERROR, "listen: %s", uv_strerror(rv));
    }
  }
  if (rv != 0) close_loop(w);
  return rv;
}

int worker_start(worker *w) { return uv_thread_create(&w->thread, worker_main, w); }

void worker_request_stop(worker *w) {
  atomic_store(&w->stop_requested, true);
  uv_async_send(&w->wakeup);
}

void worker_request_stop_now(worker *w) {
  atomic_store(&w->stop_now, true);
  worker_request_stop(w);
}

void worker_join(worker *w) { uv_thread_join(&w->thread); }

void worker_close(worker *w) { close_loop(w); }
