/* Worker loops, as the server layer drives them: set up, start, ask to stop, join.
 *
 * Lifecycle of one worker: worker_init -> worker_start -> worker_request_stop (any thread) ->
 * worker_join -> worker_close; or worker_init -> worker_close when the server gives up before
 * starting it. */
#ifndef EXTPROC_WORKER_H
#define EXTPROC_WORKER_H

#include "transport/transport.h"

/* Sets up worker `index` (loop, wakeup, grace timer) and makes it listen on its socket of each
 * of the `spec_count` listeners that have one for it. `cfg` and `stats` must outlive the
 * worker. Returns 0, or a libuv error after undoing what was set up. */
int worker_init(worker *w, unsigned index, const transport_config *cfg, transport_stats *stats,
                listener_spec *specs, unsigned spec_count);

/* Starts the worker's thread. Returns 0 or a libuv error (the worker is then as after
 * worker_init). */
int worker_start(worker *w);

/* Asks a started worker to stop: after the drain delay (health already says NOT_SERVING, see
 * transport_stats.draining) its listeners close, its connections drain (GOAWAY), and after the
 * grace period the rest are closed and deferred requests abandoned. Thread-safe and
 * async-signal-safe. */
void worker_request_stop(worker *w);

/* The same without the drain delay and the grace period; also cuts short a stop under way. */
void worker_request_stop_now(worker *w);

/* Waits for a started worker's thread to end (its loop has nothing left to run). */
void worker_join(worker *w);

/* Frees the worker's loop: after worker_join, or for a worker set up but never started. No
 * worker_request_stop() may run on it from then on. */
void worker_close(worker *w);

#endif
