/* Limit hits: each one is counted, and logged (at warning level; idle closes at info) at most once
 * per interval for each limit, over all workers. A flood (a thousand silent connections timing out
 * together, a listener at its connection limit) then costs one line per interval, not one per
 * event, and the next line says how many were left out. */
#include <stdarg.h>
#include <stdio.h>

#include "base/log.h"
#include "transport/transport.h"

enum { LIMIT_LOG_INTERVAL_MS = 10000 };

static atomic_uint_fast64_t *counter_of(transport_stats *stats, transport_limit limit) {
  switch (limit) {
  case LIMIT_MAX_CONNECTIONS: return &stats->accept_paused_max_connections_total;
  case LIMIT_FILE_DESCRIPTORS: return &stats->accept_paused_no_fds_total;
  case LIMIT_HANDSHAKE_TIMEOUT: return &stats->handshake_timeouts_total;
  case LIMIT_IDLE_TIMEOUT: return &stats->idle_timeouts_total;
  case LIMIT_KEEPALIVE_TIMEOUT: return &stats->keepalive_timeouts_total;
  case LIMIT_MESSAGE_SIZE: return &stats->messages_too_large_total;
  case LIMIT_OPEN_STREAMS: return &stats->streams_refused_total;
  default: return &stats->buffered_limit_holds_total;
  }
}

/* True if this caller may log now: the first one past the gate's time moves it on. */
static bool gate_open(transport_stats *stats, transport_limit limit) {
  const uint64_t now = uv_hrtime() / 1000000;
  uint_fast64_t next = atomic_load(&stats->log_gate[limit].next_ms);
  while (now >= next) {
    if (atomic_compare_exchange_weak(&stats->log_gate[limit].next_ms, &next,
                                     now + LIMIT_LOG_INTERVAL_MS))
      return true;
  }
  return false;
}

void limit_hit(transport_stats *stats, transport_limit limit, const char *fmt, ...) {
  atomic_fetch_add(counter_of(stats, limit), 1);
  /* An idle connection closed is routine housekeeping, not a warning. */
  const extproc_log_level level = limit == LIMIT_IDLE_TIMEOUT ? EXTPROC_LOG_INFO : EXTPROC_LOG_WARN;
  if (!log_enabled(level)) return;
  if (!gate_open(stats, limit)) {
    atomic_fetch_add(&stats->log_gate[limit].suppressed, 1);
    return;
  }
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  const uint64_t left_out = atomic_exchange(&stats->log_gate[limit].suppressed, 0);
  if (left_out)
    log_line(level, "%s (%llu more since the last such line)", line, (unsigned long long)left_out);
  else
    log_line(level, "%s", line);
}
