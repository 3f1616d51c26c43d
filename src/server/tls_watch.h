/* Reloads the server's TLS files when they change, from a thread of its own: every
 * TLS_WATCH_INTERVAL_MS it compares each file's inode, size and modification time with what
 * the last reload saw (tls_store_files_changed), and reloads on a difference. */
#ifndef EXTPROC_TLS_WATCH_H
#define EXTPROC_TLS_WATCH_H

#include <stdbool.h>
#include <uv.h>

#include "transport/tls.h"

/* How often the files are looked at. Polling three stat() calls is cheap, and sees what
 * inotify-style watches miss: cert-manager and kubelet replace a mounted secret by swapping a
 * symlink to a new directory, editors by renaming a new file over the old one. A certificate
 * is renewed long before it expires, so a few seconds' delay does not matter. */
enum { TLS_WATCH_INTERVAL_MS = 2000 };

typedef struct tls_watch {
  tls_store *store;
  transport_stats *stats;
  uv_thread_t thread;
  uv_mutex_t lock; /* guards stop */
  uv_cond_t wake;
  bool stop;
  bool running;
} tls_watch;

/* Starts watching `store`'s files (reload results are counted in `stats`). The thread starts
 * with SIGINT, SIGTERM and SIGHUP blocked. Returns 0 or EXTPROC_EIO. */
int tls_watch_start(tls_watch *w, tls_store *store, transport_stats *stats);

/* Stops the thread and waits for it (a reload under way finishes first). Does nothing if it
 * does not run. */
void tls_watch_stop(tls_watch *w);

#endif
