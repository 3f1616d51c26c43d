/* Process-wide logging to stderr: one line per event, as text or as a JSON object, with a UTC
 * timestamp and level. It knows nothing of requests or connections: callers above hand it the
 * fields they know in a log_context (the engine: processor, phase, request id; the transport:
 * the peer's address).
 *
 * Repeated warnings and errors are rate-limited per message key (the format string, i.e. the
 * call site): at most LOG_BURST lines per key in each second; the next line printed with that
 * key says how many were suppressed. Debug and info lines are never limited. */
#ifndef EXTPROC_LOG_H
#define EXTPROC_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#include "extproc/extproc.h"

/* Lines per message key and second before the rest are counted instead of printed: enough to
 * see a burst's first few occurrences, few enough that a hostile peer cannot flood the log. */
enum { LOG_BURST = 10 };

/* What a line is about; every field may be NULL (unknown) and is then left out. */
typedef struct log_context {
  const char *processor;
  const char *phase;
  const char *request_id;
  const char *peer; /* "HOST:PORT", "[IPV6]:PORT" or "unix:PATH" */
} log_context;

/* True when lines at `level` are printed; check before building an expensive message. */
bool log_enabled(extproc_log_level level);

/* Prints one line at `level` about `ctx` (may be NULL) in the current format; strings are
 * masked (text) or escaped (JSON) so peer-supplied text cannot forge a line. `fmt` is also the
 * rate limiter's key. Check log_enabled() first; this does not. */
void log_emit(extproc_log_level level, const log_context *ctx, const char *fmt, va_list ap);

/* Prints one line at `level` with no context. printf-style; a trailing newline is added. */
void log_line(extproc_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints one line at `level` about `ctx` (may be NULL). printf-style. */
void log_ctx_line(extproc_log_level level, const log_context *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
