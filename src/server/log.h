/* Process-wide logging to stderr: one line per event, with a UTC timestamp and level. */
#ifndef EXTPROC_LOG_H
#define EXTPROC_LOG_H

#include <stdbool.h>

#include "extproc/extproc.h"

/* True when lines at `level` are printed; check before building an expensive message. */
bool log_enabled(extproc_log_level level);

/* Prints one line at `level`. printf-style; a trailing newline is added. */
void log_line(extproc_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
