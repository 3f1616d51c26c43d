/* The stream engine: one ext_proc gRPC stream, i.e. one HTTP exchange seen by one processor.
 *
 * It decodes each ProcessingRequest, checks that the phase may come now, runs the processor's
 * callback, and sends exactly the one reply Envoy expects for that message (none in
 * observability mode). The transport feeds it whole gRPC messages and is told, through a
 * stream_sink, what to send; the engine knows nothing of HTTP/2, so the same engine serves the
 * network and an in-process harness.
 *
 * This header is the engine's face to the layers above (transport, testing harness); the
 * request's own layout and the engine's internal seams are in engine/request.h.
 *
 * All functions run on the stream's loop thread, except extproc_request_resume() (public). */
#ifndef EXTPROC_STREAM_H
#define EXTPROC_STREAM_H

#include <protobuf-c/protobuf-c.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/list.h"
#include "extproc/extproc.h"

/* Where the engine's output goes. `io` is the transport's per-stream object. */
typedef struct stream_sink {
  /* Sends one ProcessingResponse (the message is valid only during the call). Returns 0, or
   * a negative extproc_error if it could not be queued (the engine then fails the stream). */
  int (*send)(void *io, const ProtobufCMessage *reply);
  /* Ends the gRPC stream with `grpc_status` and `message` (may be NULL) once queued replies
   * are out. Called at most once. */
  void (*finish)(void *io, uint32_t grpc_status, const char *message);
  /* A deferred phase has completed outside any transport event: the transport should take in
   * the input it held back and flush its output. */
  void (*resumed)(void *io);
} stream_sink;

/* Counters over all streams of a server (or harness), for metrics. Atomics: streams on any
 * loop, and pool threads, add to them; anyone may read them. */
/* How a phase was answered, for the replies counter. */
typedef enum reply_kind {
  REPLY_CONTINUE,  /* a plain CONTINUE: nothing changed */
  REPLY_MUTATION,  /* header, body or other reply fields changed */
  REPLY_IMMEDIATE, /* an immediate (or streamed immediate) response */
  REPLY_ERROR,     /* the callback failed: the error policy answered */
  REPLY_KIND_COUNT
} reply_kind;

/* A message Envoy would not send, refused before any callback. */
typedef enum violation_kind {
  VIOLATION_MALFORMED,         /* not a ProcessingRequest */
  VIOLATION_NO_PHASE,          /* a ProcessingRequest carrying no phase */
  VIOLATION_TOO_DEEP,          /* nested deeper than protobuf-c may recurse */
  VIOLATION_TOO_MANY_MESSAGES, /* a flood of sub-messages */
  VIOLATION_PHASE_ORDER,       /* a phase that cannot come now */
  VIOLATION_KIND_COUNT
} violation_kind;

/* Per processor: the series a stream updates, resolved once when the server starts. */
typedef struct processor_metrics {
  const extproc_processor *proc;
  struct metric_series *messages[EXTPROC_PHASE_COUNT]; /* extproc_messages_total */
  struct metric_series *duration[EXTPROC_PHASE_COUNT]; /* extproc_callback_duration_seconds */
  struct metric_series *replies[REPLY_KIND_COUNT];     /* extproc_replies_total */
} processor_metrics;

enum { ENGINE_MAX_PROCESSORS = 16 };

typedef struct engine_stats {
  atomic_uint_fast64_t body_limit_hits;   /* extproc_body_accumulate() refused past the limit */
  atomic_uint_fast64_t deadlines_expired; /* deferred phases answered by their deadline */
  atomic_uint_fast64_t pool_waits;        /* blocking callbacks that found the pool queue full */
  atomic_uint_fast64_t deferred_dropped;  /* answers resumed after Envoy ended the stream */
  atomic_uint_fast64_t violations[VIOLATION_KIND_COUNT];
  /* Filled before the workers start, read-only after. */
  processor_metrics processors[ENGINE_MAX_PROCESSORS];
  size_t processor_count;
} engine_stats;

struct task_pool;

/* What the layer that owns the loop lends the engine. `post` is thread-safe and makes the loop
 * call stream_resume_on_loop(req) soon. The rest run on the loop thread only. */
typedef struct stream_poster {
  void (*post)(void *data, extproc_request *req);
  void *data;
  size_t *deferred; /* counts deferred, unresumed requests; touched on the loop thread only */
  /* Optional: the requests held off the loop (loop thread only), so a stopping loop can
   * abandon them (stream_abandon_deferred). */
  dlist *deferred_list;
  /* A one-shot timer: calls stream_deadline_on_loop(req) on the loop thread after `ms`,
   * unless stopped first. Returns its handle, or NULL if none could be made (the phase then
   * has no deadline). May be NULL: deadlines are then not enforced. */
  void *(*timer_start)(void *data, extproc_request *req, uint32_t ms);
  /* Stops a timer that has not fired; the handle is invalid afterwards. */
  void (*timer_stop)(void *data, void *timer);
  /* Runs blocking processors' callbacks; NULL runs them on the loop thread, as others. */
  struct task_pool *pool;
  engine_stats *stats; /* may be NULL */
  /* The loop the stream runs on, opaque to the engine (the transport's uv_loop_t), handed to
   * processors by extproc_request_loop(); NULL where there is none (the testing harness). */
  void *loop;
} stream_poster;

/* Opens a stream for `proc`. `sink` is static; `io` and `poster` are the transport's.
 * Returns NULL on out-of-memory. */
extproc_request *stream_open(const extproc_processor *proc, const stream_sink *sink, void *io,
                             const stream_poster *poster);

/* Names the peer (e.g. "127.0.0.1:41234") in the stream's log lines; copied. Call before the
 * first message: the copy is read from any thread that logs about the request. Returns 0 or
 * EXTPROC_ENOMEM (the lines then go without it). */
int stream_set_peer(extproc_request *req, const char *peer);

/* Hands the engine one whole gRPC message (copied if it must wait). */
void stream_on_message(extproc_request *req, const uint8_t *data, size_t len);

/* Envoy half-closed the stream: once every message is answered, it ends with OK. */
void stream_on_half_close(extproc_request *req);

/* True while a phase awaits its answer (deferred, or a blocking callback queued for or running
 * on the pool): input should be held back. */
bool stream_busy(const extproc_request *req);

/* True while another thread may still hold the request: a deferral not yet resumed, even one
 * whose deadline has answered the phase already. The request is freed only after that. */
bool stream_held(const extproc_request *req);

/* The transport is done with the stream (closed, reset or cancelled). Frees it now, or when
 * its deferred phase is resumed. */
void stream_close(extproc_request *req);

/* Called on the loop thread after extproc_request_resume() posted the request. */
void stream_resume_on_loop(extproc_request *req);

/* A stopping loop gives up on the deferred requests of `poster`'s deferred_list: call it once
 * their streams are closed, when the loop will not wait any longer. Each one not yet resumed is
 * abandoned (logged; it leaves the list and the count): its late extproc_request_resume() frees
 * it on the resuming thread, touching neither the loop nor the processor. One whose resume is
 * already on its way stays in the list and still comes back through the poster, so the loop
 * must keep its poster working until the list is empty. Returns how many were abandoned. */
size_t stream_abandon_deferred(const stream_poster *poster);

/* Called on the loop thread when a timer from poster.timer_start fires (the handle is then
 * already released by the poster): the phase's deadline has passed. */
void stream_deadline_on_loop(extproc_request *req);

#endif
