#include "server/server_metrics.h"

#include <stdatomic.h>
#include <stddef.h>

#include "engine/processor.h"
#include "extproc/extproc.h"

/* One counter or gauge kept as an atomic in transport_stats or engine_stats, and the metric it
 * is exposed as (one series; `label` names it within a labeled family). Adding one is a row
 * here (and SERVER_STAT_COUNT) and a row in docs/metrics.md. */
typedef struct stat_row {
  const char *name, *help;
  metric_type type;
  const char *label_name, *label; /* NULL for an unlabeled family */
  bool engine;                    /* in engine_stats, else in transport_stats */
  size_t offset;
} stat_row;

#define TRANSPORT(field) false, offsetof(transport_stats, field)
#define ENGINE(field) true, offsetof(engine_stats, field)

static const char LIMIT_HELP[] =
    "Limits reached: accepting paused (max_connections, file_descriptors), connections closed "
    "(handshake_timeout, idle_timeout, keepalive_timeout), streams ended (message_size, "
    "callback_deadline), input held (buffered_bytes), bodies refused (body_accumulate), streams "
    "refused (open_streams).";
static const char VIOLATION_HELP[] =
    "Messages Envoy would not send, refused before any callback, by kind.";

static const char RELOAD_HELP[] =
    "TLS certificate reloads (SIGHUP, extproc_server_reload_tls, files changed), by result: ok "
    "(new connections get the new files), failed (the previous certificate stays).";

static const stat_row rows[SERVER_STAT_COUNT] = {
    {"extproc_open_streams", "gRPC streams open now (ext_proc and health).", METRIC_GAUGE, NULL,
     NULL, TRANSPORT(open_streams)},
    {"extproc_streams_total", "gRPC streams opened since start (ext_proc and health).",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(total_streams)},
    {"extproc_connections_open", "HTTP/2 connections open now.", METRIC_GAUGE, NULL, NULL,
     TRANSPORT(connections_open)},
    {"extproc_connections_accepted_total", "HTTP/2 connections accepted since start.",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(connections_accepted_total)},
    {"extproc_buffered_bytes", "Bytes of incomplete gRPC messages buffered now.", METRIC_GAUGE,
     NULL, NULL, TRANSPORT(buffered_bytes)},
    {"extproc_received_bytes_total", "Bytes read from peers, HTTP/2 framing included.",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(bytes_received_total)},
    {"extproc_sent_bytes_total", "Bytes written to peers, HTTP/2 framing included.", METRIC_COUNTER,
     NULL, NULL, TRANSPORT(bytes_sent_total)},
    {"extproc_draining", "1 once the server is stopping: health answers NOT_SERVING.", METRIC_GAUGE,
     NULL, NULL, TRANSPORT(draining)},
    {"extproc_health_checks_total", "grpc.health.v1.Health/Check calls answered.", METRIC_COUNTER,
     NULL, NULL, TRANSPORT(health_checks)},
    {"extproc_health_watches_total", "grpc.health.v1.Health/Watch streams started.", METRIC_COUNTER,
     NULL, NULL, TRANSPORT(health_watches)},
    {"extproc_shutdown_streams_cut_total",
     "Streams still open when the shutdown grace period ran out, closed by the server.",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(streams_cut)},
    {"extproc_deferred_abandoned_total",
     "Deferred answers still pending when their loop stopped (freed on their late resume).",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(deferred_abandoned)},
    {"extproc_deferred_dropped_total",
     "Deferred answers that came after Envoy had ended the stream (e.g. its message_timeout).",
     METRIC_COUNTER, NULL, NULL, ENGINE(deferred_dropped)},
    {"extproc_blocking_pool_waits_total",
     "Blocking callbacks that found the pool's queue full and waited for a thread.", METRIC_COUNTER,
     NULL, NULL, ENGINE(pool_waits)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "max_connections",
     TRANSPORT(accept_paused_max_connections_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "file_descriptors",
     TRANSPORT(accept_paused_no_fds_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "handshake_timeout",
     TRANSPORT(handshake_timeouts_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "idle_timeout",
     TRANSPORT(idle_timeouts_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "keepalive_timeout",
     TRANSPORT(keepalive_timeouts_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "message_size",
     TRANSPORT(messages_too_large_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "buffered_bytes",
     TRANSPORT(buffered_limit_holds_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "open_streams",
     TRANSPORT(streams_refused_total)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "body_accumulate",
     ENGINE(body_limit_hits)},
    {"extproc_limit_hits_total", LIMIT_HELP, METRIC_COUNTER, "limit", "callback_deadline",
     ENGINE(deadlines_expired)},
    {"extproc_protocol_violations_total", VIOLATION_HELP, METRIC_COUNTER, "kind", "malformed",
     ENGINE(violations[VIOLATION_MALFORMED])},
    {"extproc_protocol_violations_total", VIOLATION_HELP, METRIC_COUNTER, "kind", "no_phase",
     ENGINE(violations[VIOLATION_NO_PHASE])},
    {"extproc_protocol_violations_total", VIOLATION_HELP, METRIC_COUNTER, "kind", "too_deep",
     ENGINE(violations[VIOLATION_TOO_DEEP])},
    {"extproc_protocol_violations_total", VIOLATION_HELP, METRIC_COUNTER, "kind",
     "too_many_messages", ENGINE(violations[VIOLATION_TOO_MANY_MESSAGES])},
    {"extproc_protocol_violations_total", VIOLATION_HELP, METRIC_COUNTER, "kind", "phase_order",
     ENGINE(violations[VIOLATION_PHASE_ORDER])},
    {"extproc_tls_handshake_failures_total",
     "TLS connections closed because their handshake failed (no common version or cipher, no h2 "
     "in ALPN, a client certificate missing or refused, a client not speaking TLS).",
     METRIC_COUNTER, NULL, NULL, TRANSPORT(tls_handshake_failures_total)},
    {"extproc_tls_reloads_total", RELOAD_HELP, METRIC_COUNTER, "result", "ok",
     TRANSPORT(tls_reloads_ok_total)},
    {"extproc_tls_reloads_total", RELOAD_HELP, METRIC_COUNTER, "result", "failed",
     TRANSPORT(tls_reloads_failed_total)},
};

int server_metrics_init(server_metrics *sm, const transport_stats *transport,
                        const engine_stats *engine) {
  *sm = (server_metrics){.transport = transport, .engine = engine};
  if (!(sm->registry = metrics_new())) return EXTPROC_ENOMEM;
  for (size_t i = 0; i < SERVER_STAT_COUNT; i++) {
    const stat_row *r = &rows[i];
    const size_t labels = r->label_name ? 1 : 0;
    metric_family *f =
        metrics_family(sm->registry, r->name, r->help, r->type, &r->label_name, labels, NULL, 0, 0);
    if (!(sm->from_stats[i] = metrics_series(f, labels ? &r->label : NULL))) {
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
  for (size_t i = 0; i < SERVER_STAT_COUNT; i++) {
    const char *base = rows[i].engine ? (const char *)sm->engine : (const char *)sm->transport;
    atomic_uint_fast64_t *v = (atomic_uint_fast64_t *)(base + rows[i].offset);
    metric_set(sm->from_stats[i], (int64_t)atomic_load(v));
  }
}

/* Callback durations, in nanoseconds: from tens of microseconds (a callback on the loop) to
 * seconds (a deferred answer waiting on another service). */
static const uint64_t DURATION_BOUNDS_NS[] = {
    10000,   25000,    50000,    100000,   250000,    500000,    1000000,    2500000,
    5000000, 10000000, 25000000, 50000000, 100000000, 250000000, 1000000000, 5000000000};

static const char *const REPLY_KIND_NAMES[REPLY_KIND_COUNT] = {"continue", "mutation", "immediate",
                                                               "error"};

int server_metrics_add_processor(server_metrics *sm, engine_stats *engine,
                                 const extproc_processor *proc) {
  for (size_t i = 0; i < engine->processor_count; i++)
    if (engine->processors[i].proc == proc) return 0;
  if (engine->processor_count == ENGINE_MAX_PROCESSORS) return EXTPROC_ESTATE;
  processor_metrics *pm = &engine->processors[engine->processor_count];
  *pm = (processor_metrics){.proc = proc};
  const char *phase_labels[] = {"processor", "phase"};
  const char *kind_labels[] = {"processor", "kind"};
  metric_family *messages = metrics_family(sm->registry, "extproc_messages_total",
                                           "ProcessingRequests taken in, by processor and phase.",
                                           METRIC_COUNTER, phase_labels, 2, NULL, 0, 0);
  metric_family *replies = metrics_family(
      sm->registry, "extproc_replies_total",
      "Phases answered, by processor and how: continue (nothing changed), mutation, immediate "
      "(an immediate response), error (the error policy answered).",
      METRIC_COUNTER, kind_labels, 2, NULL, 0, 0);
  metric_family *durations = metrics_family(
      sm->registry, "extproc_callback_duration_seconds",
      "Time from a message taken in to its phase answered (a deferred answer included), by "
      "processor and phase.",
      METRIC_HISTOGRAM, phase_labels, 2, DURATION_BOUNDS_NS,
      sizeof(DURATION_BOUNDS_NS) / sizeof(DURATION_BOUNDS_NS[0]), 1e-9);
  for (int p = 0; p < EXTPROC_PHASE_COUNT; p++) {
    const char *values[] = {proc->name, extproc_phase_name((extproc_phase)p)};
    if (!(pm->messages[p] = metrics_series(messages, values)) ||
        !(pm->duration[p] = metrics_series(durations, values)))
      return EXTPROC_ENOMEM;
  }
  for (int k = 0; k < REPLY_KIND_COUNT; k++) {
    const char *values[] = {proc->name, REPLY_KIND_NAMES[k]};
    if (!(pm->replies[k] = metrics_series(replies, values))) return EXTPROC_ENOMEM;
  }
  engine->processor_count++;
  return 0;
}
