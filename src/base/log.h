/* Process-wide logging to stderr: one line per event, with a UTC timestamp and level. It knows
 * nothing of requests; the engine adds the processor, phase and request id (extproc_log). */
#ifndef EXTPROC_LOG_H
#define EXTPROC_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#include "extproc/extproc.h"

/* True when lines at `level` are printed; check before building an expensive message. */
bool log_enabled(extproc_log_level level);

/* Prints one line at `level`: a timestamp, the level, `prefix` (may be "") and the formatted
 * text; control characters are masked. Check log_enabled() first; this does not. */
void log_linev(extproc_log_level level, const char *prefix, const char *fmt, va_list ap);

/* Prints one line at `level`. printf-style; a trailing newline is added. */
void log_line(extproc_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
