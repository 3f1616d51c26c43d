/* The server's metrics: the families it exposes, and copying the transport's counters (plain
 * atomics on the hot path) into the registry when a scrape comes. docs/metrics.md lists them. */
#ifndef EXTPROC_SERVER_METRICS_H
#define EXTPROC_SERVER_METRICS_H

#include "base/metrics.h"
#include "transport/transport.h"

/* One row per transport_stats field exposed (server_metrics.c). */
enum { SERVER_STAT_COUNT = 7 };

typedef struct server_metrics {
  metrics *registry;
  const transport_stats *stats;
  metric_series *from_stats[SERVER_STAT_COUNT]; /* in the order of the table */
} server_metrics;

/* Creates the registry and the families read from `stats` (which must outlive it). Returns 0
 * or EXTPROC_ENOMEM. */
int server_metrics_init(server_metrics *sm, const transport_stats *stats);

/* Frees the registry. */
void server_metrics_free(server_metrics *sm);

/* Copies the transport's counters into the registry (a metrics_collect_fn; `data` is the
 * server_metrics). */
void server_metrics_collect(void *data);

#endif
