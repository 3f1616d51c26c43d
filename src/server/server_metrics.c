#include "server/server_metrics.h"

#include <stdatomic.h>
#include <stddef.h>

#include "extproc/extproc.h"

/* transport_stats fields and the metrics they are exposed as (names as documented in
 * transport.h and docs/metrics.md). Adding one is a row here and a row in the doc. */
static const struct {
  const char *name, *help;
  metric_type type;
  size_t offset;
} from_stats[SERVER_STAT_COUNT] = {
    {"extproc_open_streams", "gRPC streams open now (ext_proc and health).", METRIC_GAUGE,
     offsetof(transport_stats, open_streams)},
    {"extproc_streams_total", "gRPC streams served since start (ext_proc and health).",
     METRIC_COUNTER, offsetof(transport_stats, total_streams)},
    {"extproc_draining", "1 once the server is stopping: health answers NOT_SERVING.", METRIC_GAUGE,
     offsetof(transport_stats, draining)},
    {"extproc_health_checks_total", "grpc.health.v1.Health/Check calls answered.", METRIC_COUNTER,
     offsetof(transport_stats, health_checks)},
    {"extproc_health_watches_total", "grpc.health.v1.Health/Watch streams started.", METRIC_COUNTER,
     offsetof(transport_stats, health_watches)},
    {"extproc_shutdown_streams_cut_total",
     "Streams still open when the shutdown grace period ran out, closed by the server.",
     METRIC_COUNTER, offsetof(transport_stats, streams_cut)},
    {"extproc_deferred_abandoned_total",
     "Deferred answers still pending when their loop stopped (freed on their late resume).",
     METRIC_COUNTER, offsetof(transport_stats, deferred_abandoned)},
};

int server_metrics_init(server_metrics *sm, const transport_stats *stats) {
  *sm = (server_metrics){.stats = stats};
  if (!(sm->registry = metrics_new())) return EXTPROC_ENOMEM;
  for (size_t i = 0; i < SERVER_STAT_COUNT; i++) {
    metric_family *f = metrics_family(sm->registry, from_stats[i].name, from_stats[i].help,
                                      from_stats[i].type, NULL, 0, NULL, 0, 0);
    if (!(sm->from_stats[i] = metrics_series(f, NULL))) {
      server_metrics_free(sm);
      return EXTPROC_ENOMEM;
    }
  }
  return 0;
}

void server_metrics_free(server_metrics *sm) {
  metrics_free(sm->registry);
  sm->registry = NULL;
}

void server_metrics_collect(void *data) {
  server_metrics *sm = data;
  const char *base = (const char *)sm->stats;
  for (size_t i = 0; i < SERVER_STAT_COUNT; i++) {
    atomic_uint_fast64_t *v = (atomic_uint_fast64_t *)(base + from_stats[i].offset);
    metric_set(sm->from_stats[i], (int64_t)atomic_load(v));
  }
}
