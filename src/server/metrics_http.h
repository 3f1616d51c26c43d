/* The metrics endpoint: `GET /metrics` in the Prometheus text format, on its own address and
 * its own thread (libmicrohttpd), so a scrape never runs on, or waits for, a worker loop. */
#ifndef EXTPROC_METRICS_HTTP_H
#define EXTPROC_METRICS_HTTP_H

#include "base/metrics.h"

typedef struct metrics_endpoint metrics_endpoint;

/* Called before each scrape renders, to copy values kept elsewhere into the registry. */
typedef void (*metrics_collect_fn)(void *data);

/* Binds `address` ("HOST:PORT" or "[V6]:PORT"; port 0 picks one) and serves `m` from a thread
 * of its own until metrics_endpoint_stop(). `collect` (may be NULL) runs, on that thread,
 * before each scrape. Stores the endpoint in `*out` and returns its port (> 0), or a negative
 * extproc_error: EXTPROC_EINVAL (malformed address), EXTPROC_EIO (bind or thread failed),
 * EXTPROC_ENOMEM. */
int metrics_endpoint_start(metrics_endpoint **out, const char *address, metrics *m,
                           metrics_collect_fn collect, void *collect_data);

/* Stops serving and frees the endpoint. NULL is ignored. */
void metrics_endpoint_stop(metrics_endpoint *e);

#endif
