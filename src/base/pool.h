/* A fixed set of OS threads running jobs from one FIFO, for work that may block (a callback
 * that reads a file or calls a slow service) and so must not run on an event loop.
 *
 * The pool never allocates per job: a job is a link its owner embeds (in the request it works
 * for), so the FIFO costs nothing beyond the owners that already exist. It has room for
 * `queue_slots` jobs waiting for a thread; a job submitted beyond that still waits in order,
 * and pool_submit() says so, so that its owner can hold back the input behind it (see
 * engine/stream.h: such a stream counts as busy). Each owner has at most one job in the pool,
 * so the jobs waiting are bounded by the owners.
 *
 * Thread-safe: submit and cancel from any thread. */
#ifndef EXTPROC_POOL_H
#define EXTPROC_POOL_H

#include <stdbool.h>
#include <stddef.h>

#include "base/list.h"

typedef struct pool_job pool_job;

/* Runs on a pool thread. The pool does not touch the job after calling it, so `run` may hand
 * its owner (and the job with it) to another thread, or have it freed. */
typedef void (*pool_job_fn)(pool_job *job);

struct pool_job {
  queue_link link;
  pool_job_fn run;
};

typedef struct task_pool task_pool;

/* Starts `threads` (at least 1) threads. Returns 0, EXTPROC_EINVAL (threads 0), EXTPROC_ENOMEM
 * or EXTPROC_EIO (a thread could not be created). */
int pool_new(task_pool **out, unsigned threads, size_t queue_slots);

/* Queues `job` (its `run` set) behind the others. Returns true when it took a queue slot (or a
 * thread is free), false when the queue was full: the job still runs, after the ones before
 * it, but its owner should hold back input meanwhile. */
bool pool_submit(task_pool *p, pool_job *job);

/* Takes `job` off the queue if no thread has started it. Returns true when it was removed (it
 * will never run), false when a thread has it (it runs, or ran, as usual). */
bool pool_cancel(task_pool *p, pool_job *job);

/* Jobs waiting for a thread (queued, not running). For tests and metrics. */
size_t pool_pending(task_pool *p);

/* Waits for the running jobs, then stops the threads and frees the pool. Jobs still queued
 * never run: their owners must have none left (or cancel them first). NULL is ignored. */
void pool_free(task_pool *p);

#endif
