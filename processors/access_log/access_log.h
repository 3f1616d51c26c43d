/* AccessLogExtProcService ("access-log"): one JSON line per HTTP exchange, written by a
 * background thread to a file with size-based rotation, or to stdout. Settings come from
 * EXTPROC_ACCESS_LOG_* environment variables (README, "API call logging (access-log)"). */
#ifndef ACCESS_LOG_H
#define ACCESS_LOG_H

#include <extproc/extproc.h>

/* Reads the settings, opens the log and starts its writer thread. Returns the processor, or
 * NULL after logging which setting is bad (or that the file cannot be opened). The writer
 * lives as long as the processor: extproc_processor_free() writes out the queued lines. */
extproc_processor *access_log_processor_new(void);

/* Waits until every line handed to any access-log writer so far has been written or dropped
 * (for tests, which read the file). Thread-safe. */
void access_log_flush(void);

#endif
