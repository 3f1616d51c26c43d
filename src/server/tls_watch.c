/* The TLS file watcher (see tls_watch.h). */
#include "server/tls_watch.h"
#include "server/run_signals.h"

#include <pthread.h>
#include <signal.h>

static void watch_main(void *arg) {
  tls_watch *w = arg;
  uv_mutex_lock(&w->lock);
  while (!w->stop) {
    /* Returns early on a stop (or spuriously): the loop checks again. */
    (void)uv_cond_timedwait(&w->wake, &w->lock, (uint64_t)TLS_WATCH_INTERVAL_MS * 1000000u);
    if (w->stop) break;
    uv_mutex_unlock(&w->lock);
    if (tls_store_files_changed(w->store)) tls_store_reload(w->store, w->stats, "files changed");
    uv_mutex_lock(&w->lock);
  }
  uv_mutex_unlock(&w->lock);
}

int tls_watch_start(tls_watch *w, tls_store *store, transport_stats *stats) {
  *w = (tls_watch){.store = store, .stats = stats};
  if (uv_mutex_init(&w->lock) != 0) return EXTPROC_EIO;
  if (uv_cond_init(&w->wake) != 0) {
    uv_mutex_destroy(&w->lock);
    return EXTPROC_EIO;
  }
  sigset_t old;
  run_signals_mask(SIG_BLOCK, &old);
  const int rv = uv_thread_create(&w->thread, watch_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rv != 0) {
    uv_cond_destroy(&w->wake);
    uv_mutex_destroy(&w->lock);
    return EXTPROC_EIO;
  }
  w->running = true;
  return 0;
}

void tls_watch_stop(tls_watch *w) {
  if (!w->running) return;
  uv_mutex_lock(&w->lock);
  w->stop = true;
  uv_cond_signal(&w->wake);
  uv_mutex_unlock(&w->lock);
  uv_thread_join(&w->thread);
  uv_cond_destroy(&w->wake);
  uv_mutex_destroy(&w->lock);
  w->running = false;
}
