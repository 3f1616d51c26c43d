/* The stream engine's state machine: a stream opens, each message is checked against the
 * phase order and dispatched to its callback, the callback's outcome (now, or later through a
 * deferral resumed from any thread) becomes the reply or the error policy, and the stream ends
 * once Envoy has half-closed and everything is answered. */
#include "engine/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/metrics.h"
#include "engine/request.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"

/* Small, so an idle stream costs little: it holds the request facts and the context. */
enum { STREAM_ARENA_FIRST_BLOCK = 1024 };

/* Frees the message and its reply; the blocks go to this thread's cache for the next one. */
void reset_message_memory(extproc_request *req) {
  arena_reset(&req->msg_arena, ARENA_CACHED_BLOCK);
}

/* The processor's series in `stats`: a few entries, looked up once per stream. */
static const processor_metrics *metrics_of(const engine_stats *stats,
                                           const extproc_processor *proc) {
  for (size_t i = 0; stats && i < stats->processor_count; i++)
    if (stats->processors[i].proc == proc) return &stats->processors[i];
  return NULL;
}

void stream_count_violation(extproc_request *req, violation_kind kind) {
  if (req->poster.stats) atomic_fetch_add(&req->poster.stats->violations[kind], 1);
}

extproc_request *stream_open(const extproc_processor *proc, const stream_sink *sink, void *io,
                             const stream_poster *poster) {
  extproc_request *req = calloc(1, sizeof(*req));
  if (!req) return NULL;
  req->proc = proc;
  req->sink = sink;
  req->io = io;
  if (poster) req->poster = *poster;
  req->metrics = metrics_of(req->poster.stats, proc);
  arena_init(&req->arena, STREAM_ARENA_FIRST_BLOCK);
  arena_init(&req->msg_arena, ARENA_CACHED_BLOCK);
  req->info.content_length = -1;
  req->reply.fail_code = EXTPROC_GRPC_INTERNAL;
  req->body_mode[0] = req->body_mode[1] = EXTPROC_BODY_MODE_UNKNOWN;
  req->protocol.request_body_mode = req->protocol.response_body_mode = EXTPROC_BODY_MODE_UNKNOWN;
  return req;
}

int stream_set_peer(extproc_request *req, const char *peer) {
  req->peer = arena_strndup(&req->arena, peer, strlen(peer));
  return req->peer ? 0 : EXTPROC_ENOMEM;
}

static void free_memory(extproc_request *req) {
  intake_discard(req);
  free(req->accumulated[0]);
  free(req->accumulated[1]);
  arena_free(&req->msg_arena);
  arena_free(&req->arena);
  free(req);
}

void stream_free(extproc_request *req) {
  if (req->ctx_started && req->proc->context_cleanup) req->proc->context_cleanup(req->ctx);
  free_memory(req);
}

void stream_free_abandoned(extproc_request *req) {
  if (req->ctx_started && req->abandoned_cleanup) req->abandoned_cleanup(req->ctx);
  free_memory(req);
  /* Arena blocks went to this thread's cache; it may be one that never uses arenas. */
  arena_cache_release();
}

bool stream_busy(const extproc_request *req) { return req->deferred && !req->expired; }

bool stream_held(const extproc_request *req) { return req->deferred; }

/* Ends the stream with a non-OK status; the transport sends the trailers. */
void stream_fail(extproc_request *req, uint32_t code, const char *message) {
  if (req->ended) return;
  req->ended = true;
  if (req->io) req->sink->finish(req->io, code, message);
}

void stream_finish_if_done(extproc_request *req) {
  if (req->ended || !req->half_closed || req->deferred || !queue_empty(&req->waiting)) return;
  req->ended = true;
  if (req->io) req->sink->finish(req->io, EXTPROC_GRPC_OK, NULL);
}

/* Phase order within each direction is headers, body chunks, trailers; each may be skipped,
 * and end_of_stream on the headers means nothing else follows. Returns NULL if `phase` may come
 * now (and records it), or why not. */
static const char *advance_direction(extproc_request *req, extproc_phase phase) {
  const bool response = phase >= EXTPROC_RESPONSE_HEADERS;
  direction_state *d = &req->direction[response];
  switch (phase - (response ? EXTPROC_RESPONSE_HEADERS : EXTPROC_REQUEST_HEADERS)) {
  case 0: /* headers */
    if (*d != DIRECTION_NOTHING) return "headers arrived after this direction had started";
    *d = req->msg.end_of_stream ? DIRECTION_ENDED : DIRECTION_HEADERS;
    return NULL;
  case 1: /* a body chunk */
    if (*d == DIRECTION_BODY_ENDED) return "a body chunk arrived after the body had ended";
    if (*d == DIRECTION_ENDED) return "a body chunk arrived after the end of the stream";
    *d = req->msg.end_of_stream ? DIRECTION_BODY_ENDED : DIRECTION_BODY;
    return NULL;
  default: /* trailers */
    if (*d == DIRECTION_ENDED) return "trailers arrived after the end of the stream";
    *d = DIRECTION_ENDED;
    return NULL;
  }
}

/* A callback (or context_init) failed: log it, then apply the processor's policy. */
static void apply_error_policy(extproc_request *req) {
  const char *why = req->reply.fail_message ? req->reply.fail_message : "callback failed";
  extproc_log(req, EXTPROC_LOG_ERROR, "%s (grpc-status %u, policy %s)", why, req->reply.fail_code,
              req->proc->on_error == EXTPROC_ON_ERROR_FAIL_STREAM ? "fail_stream"
                                                                  : "immediate_response");
  /* Observability mode promises Envoy's traffic is not touched, yet Envoy fails the request
   * on an error status (500) even then: the stream ends with status OK, which Envoy takes as
   * "go on unprocessed". A processor written for the normal mode, whose writes are refused
   * there, thus stops observing that exchange instead of failing it. No later callback runs. */
  if (req->msg.observability_mode) {
    stream_fail(req, EXTPROC_GRPC_OK, why);
    return;
  }
  /* No reply is possible once a streamed immediate response is under way: the stream ends with
   * the error status, and no later callback runs. */
  if (req->streamed_immediate != STREAMED_IMMEDIATE_NONE) {
    stream_fail(req, req->reply.fail_code, why);
    return;
  }
  if (req->proc->on_error == EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE) {
    send_reply(req, reply_build_error(req, req->proc->error_http_status));
    return;
  }
  stream_fail(req, req->reply.fail_code, why);
}

static uint64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The callback's outcome is known: reply (or not) and move on. */
/* How the phase was answered, as the replies counter names it. */
static reply_kind kind_of(const extproc_request *req, extproc_result result) {
  const reply_draft *r = &req->reply;
  if (result == EXTPROC_FAIL) return REPLY_ERROR;
  if (r->immediate || req->streamed_immediate != STREAMED_IMMEDIATE_NONE) return REPLY_IMMEDIATE;
  const bool changed = !queue_empty(&r->edits.items) || r->body_op != BODY_KEEP ||
                       !queue_empty(&r->pieces) || r->dynamic_metadata || r->has_mode_override ||
                       r->clear_route_cache;
  return changed ? REPLY_MUTATION : REPLY_CONTINUE;
}

void complete_phase(extproc_request *req, extproc_result result) {
  /* Read before the reply is sent and reset; only what metrics or a debug line will use. */
  const reply_kind kind = req->metrics ? kind_of(req, result) : REPLY_CONTINUE;
  if (result == EXTPROC_FAIL) {
    apply_error_policy(req);
  } else if (!req->msg.observability_mode && !req->ended) {
    send_replies(req);
  }
  if (req->msg.started_ns) {
    const uint64_t elapsed_ns = monotonic_ns() - req->msg.started_ns;
    if (req->metrics) {
      metric_observe(req->metrics->duration[req->msg.phase], elapsed_ns);
      if (!req->msg.observability_mode) metric_add(req->metrics->replies[kind], 1);
    }
    extproc_log(req, EXTPROC_LOG_DEBUG, "%s in %llu ns",
                result == EXTPROC_FAIL ? "failed"
                : req->reply.immediate ? "answered immediately"
                                       : "handled",
                (unsigned long long)elapsed_ns);
  }
  reset_message_memory(req);
}

static bool start_context(extproc_request *req) {
  const extproc_processor *proc = req->proc;
  if (proc->context_size) {
    req->ctx = arena_calloc(&req->arena, proc->context_size);
    if (!req->ctx) {
      req->reply.fail_code = EXTPROC_GRPC_RESOURCE_EXHAUSTED;
      req->reply.fail_message = "out of memory allocating the request context";
      return false;
    }
  }
  if (proc->context_init && proc->context_init(req, req->ctx) != 0) {
    if (!req->reply.fail_message) req->reply.fail_message = "context_init failed";
    return false;
  }
  req->ctx_started = true;
  return true;
}

/* The oneof's field numbers alternate directions (request_headers 2, response_headers 3,
 * request_body 4, ...); phases are numbered by direction. */
static extproc_phase phase_of(unsigned field) {
  const unsigned n = field - 2;
  return (extproc_phase)((n & 1) * EXTPROC_RESPONSE_HEADERS + n / 2);
}

void stream_process(extproc_request *req, const uint8_t *data, size_t len) {
  decoded_request msg;
  if (!intake_decode(req, data, len, &msg)) {
    reset_message_memory(req);
    return;
  }
  const extproc_phase phase = phase_of(msg.phase_field);
  const bool first_message =
      req->direction[0] == DIRECTION_NOTHING && req->direction[1] == DIRECTION_NOTHING;
  /* The clock is read only for what uses it: the duration metric, or a debug line. */
  req->msg.started_ns = req->metrics || log_enabled(EXTPROC_LOG_DEBUG) ? monotonic_ns() : 0;
  req->msg.phase = phase;
  req->msg.observability_mode = msg.observability_mode;
  req->reply = (reply_draft){.fail_code = EXTPROC_GRPC_INTERNAL};
  if (!intake_load(req, &msg)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory decoding the request");
    reset_message_memory(req);
    return;
  }
  const char *order_error = advance_direction(req, phase);
  if (req->metrics) metric_add(req->metrics->messages[phase], 1);
  if (order_error) {
    stream_count_violation(req, VIOLATION_PHASE_ORDER);
    extproc_log(req, EXTPROC_LOG_WARN, "unexpected phase: %s", order_error);
    stream_fail(req, EXTPROC_GRPC_FAILED_PRECONDITION, order_error);
    reset_message_memory(req);
    return;
  }

  /* After CONTINUE_AND_REPLACE Envoy takes no reply for that direction's body or trailers, but
   * in FULL_DUPLEX_STREAMED (or without waiting for the headers reply) some may already be on
   * their way: they are dropped unanswered, or Envoy would count the replies as spurious. */
  if (!is_headers_phase(phase) && req->body_replaced[direction_of(phase)]) {
    extproc_log(req, EXTPROC_LOG_DEBUG, "after CONTINUE_AND_REPLACE: dropped unanswered");
    reset_message_memory(req);
    return;
  }

  if (first_message && !start_context(req)) {
    complete_phase(req, EXTPROC_FAIL);
    return;
  }
  const extproc_phase_fn fn = req->proc->on[phase];
  if (!fn) {
    complete_phase(req, EXTPROC_CONTINUE);
    return;
  }
  handoff_run(req, fn);
}

void stream_on_message(extproc_request *req, const uint8_t *data, size_t len) {
  if (req->ended) {
    extproc_log(req, EXTPROC_LOG_DEBUG, "message after the stream ended, ignored");
    return;
  }
  if (!req->deferred && queue_empty(&req->waiting)) {
    stream_process(req, data, len);
    return;
  }
  /* An earlier message is still being answered: keep order by queueing a copy. The transport
   * holds back flow-control credit meanwhile, so Envoy cannot make this grow without bound. */
  if (!intake_enqueue(req, data, len))
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory queueing a message");
}

void stream_on_half_close(extproc_request *req) {
  req->half_closed = true;
  stream_finish_if_done(req);
}

void stream_close(extproc_request *req) {
  req->io = NULL;
  if (req->deferred) return; /* freed by stream_resume_on_loop */
  stream_free(req);
}
