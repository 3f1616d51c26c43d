#include "server/server_metrics.h"

#include <stdatomic.h>

#include "extproc/extproc.h"

static metric_series *single(metrics *m, const char *name, const char *help, metric_type type) {
  return metrics_series(metrics_family(m, name, help, type, NULL, 0, NULL, 0, 0), NULL);
}

int server_metrics_init(server_metrics *sm, const transport_stats *stats) {
  *sm = (server_metrics){.stats = stats};
  if (!(sm->registry = metrics_new())) return EXTPROC_ENOMEM;
  sm->streams_active = single(sm->registry, "extproc_streams_active",
                              "gRPC streams open now (ext_proc and health).", METRIC_GAUGE);
  sm->streams_total =
      single(sm->registry, "extproc_streams_total",
             "gRPC streams opened since start (ext_proc and health).", METRIC_COUNTER);
  if (!sm->streams_active || !sm->streams_total) {
    server_metrics_free(sm);
    return EXTPROC_ENOMEM;
  }
  return 0;
}

void server_metrics_free(server_metrics *sm) {
  metrics_free(sm->registry);
  sm->registry = NULL;
}

void server_metrics_collect(void *data) {
  server_metrics *sm = data;
  transport_stats *stats = (transport_stats *)sm->stats; /* atomics: read only */
  metric_set(sm->streams_active, (int64_t)atomic_load(&stats->open_streams));
  metric_set(sm->streams_total, (int64_t)atomic_load(&stats->total_streams));
}
