/* The access log's writer: one background thread per log that takes finished lines from a
 * bounded queue and appends them to a file (rotated by size) or to stdout, so that the event
 * loops never wait for the disk.
 *
 * Loop threads hand lines over with al_writer_push(), which only takes a mutex for a few
 * instructions; when the queue is full (the disk is slower than the traffic) the line is
 * dropped and counted. A failed write (a full disk) drops the lines of that write, cuts the
 * file back to its last complete line and reopens it, so the file never holds a partial line.
 * Drops are logged by the writer thread, at most once a second, with their counts. */
#ifndef ACCESS_LOG_WRITER_H
#define ACCESS_LOG_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct al_writer al_writer;

typedef struct al_writer_options {
  const char *path;   /* the file to append to, or "-" for stdout; copied */
  uint64_t max_bytes; /* rotate before the file would pass this size; 0: never rotate */
  unsigned keep;      /* rotated files kept: path.1 (newest) .. path.keep; at least 1 */
  size_t queue_lines; /* lines waiting for the writer at most; at least 1 */
  size_t queue_bytes; /* bytes waiting for the writer at most; at least 1 */
} al_writer_options;

typedef struct al_writer_stats {
  uint64_t written;       /* lines written whole */
  uint64_t dropped_queue; /* lines dropped because the queue was full */
  uint64_t dropped_write; /* lines lost because writing them failed (or the file could not be
                             opened) */
  uint64_t rotations;     /* times the file was rotated */
} al_writer_stats;

/* Opens the file (creating it, mode 0640) and starts the thread. Returns 0, or -1 with a log
 * line naming the reason (the file cannot be opened, a bad option, no thread). */
int al_writer_new(al_writer **out, const al_writer_options *opts);

/* Queues `line` (`len` bytes, no newline: the writer adds it) and takes ownership of it (it
 * is freed with free()), whether queued or dropped. Returns false when it was dropped.
 * Thread-safe; never waits for the disk. */
bool al_writer_push(al_writer *w, char *line, size_t len);

/* Waits until every line pushed before the call has been written or dropped. Thread-safe. */
void al_writer_flush(al_writer *w);

/* The counters so far. Thread-safe. */
void al_writer_stats_get(al_writer *w, al_writer_stats *out);

/* Writes what is queued, stops the thread, closes the file, logs a summary of drops if there
 * were any, and frees the writer. NULL is ignored. */
void al_writer_free(al_writer *w);

#endif
