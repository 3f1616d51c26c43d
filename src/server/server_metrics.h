/* The server's metrics: the families it exposes, and copying the transport's counters (plain
 * atomics on the hot path) into the registry when a scrape comes. */
#ifndef EXTPROC_SERVER_METRICS_H
#define EXTPROC_SERVER_METRICS_H

#include "base/metrics.h"
#include "transport/transport.h"

typedef struct server_metrics {
  metrics *registry;
  const transport_stats *stats;
  metric_series *streams_active, *streams_total;
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
