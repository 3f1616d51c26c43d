/* The engine's deadline timers on a worker loop: one uv_timer per armed deadline, allocated
 * when armed and freed once closed, so a request freed right after stopping its timer leaves
 * nothing behind that could call it. */
#include <stdlib.h>

#include "transport/transport.h"

static void free_timer(uv_handle_t *h) { free(h); }

static void on_deadline(uv_timer_t *t) {
  extproc_request *req = t->data;
  uv_close((uv_handle_t *)t, free_timer); /* released before the engine may free `req` */
  stream_deadline_on_loop(req);
}

void *worker_timer_start(void *data, extproc_request *req, uint32_t ms) {
  worker *w = data;
  uv_timer_t *t = malloc(sizeof(*t));
  if (!t) return NULL;
  if (uv_timer_init(&w->loop, t) != 0) {
    free(t);
    return NULL;
  }
  t->data = req;
  uv_timer_start(t, on_deadline, ms, 0);
  return t;
}

void worker_timer_stop(void *data, void *timer) {
  (void)data;
  uv_timer_stop(timer);
  uv_close(timer, free_timer);
}
