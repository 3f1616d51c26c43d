/* The server's metrics: the families it exposes (docs/metrics.md), the transport's and the
 * engine's counters (plain atomics on the hot path) copied into the registry when a scrape
 * comes, and the per-processor series the engine updates directly. */
#ifndef EXTPROC_SERVER_METRICS_H
#define EXTPROC_SERVER_METRICS_H

#include "base/metrics.h"
#include "engine/stream.h"
#include "transport/transport.h"

/* Rows of the table in server_metrics.c. */
enum { SERVER_STAT_COUNT = 32 };

typedef struct server_metrics {
  metrics *registry;
  const transport_stats *transport;
  const engine_stats *engine;
  metric_series *from_stats[SERVER_STAT_COUNT]; /* in the order of the table */
} server_metrics;

/* Creates the registry and the families read from `transport` and `engine` (which must outlive
 * it). Returns 0 or EXTPROC_ENOMEM. */
int server_metrics_init(server_metrics *sm, const transport_stats *transport,
                        const engine_stats *engine);

/* Frees the registry. */
void server_metrics_free(server_metrics *sm);

/* Adds `proc`'s series (messages and replies by phase and kind, callback durations) to
 * `engine`, so its streams update them. Call before the workers start; once per processor
 * (again for the same one is a no-op). Returns 0, EXTPROC_ENOMEM, or EXTPROC_ESTATE when
 * ENGINE_MAX_PROCESSORS processors are registered already. */
int server_metrics_add_processor(server_metrics *sm, engine_stats *engine,
                                 const extproc_processor *proc);

/* Copies the counters into the registry (a metrics_collect_fn; `data` is the server_metrics). */
void server_metrics_collect(void *data);

#endif
