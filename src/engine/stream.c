#include "engine/stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "engine/headers.h"
#include "engine/processor.h"
#include "engine/wire_check.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;

/* Small, so an idle stream costs little: it holds the request facts and the context. */
enum { STREAM_ARENA_FIRST_BLOCK = 1024 };

/* Frees the message and its reply; the blocks go to this thread's cache for the next one. */
static void reset_message_memory(extproc_request *req) {
  arena_reset(&req->msg_arena, ARENA_CACHED_BLOCK);
}

extproc_request *stream_open(const extproc_processor *proc, const stream_sink *sink, void *io,
                             const stream_poster *poster) {
  extproc_request *req = calloc(1, sizeof(*req));
  if (!req) return NULL;
  req->proc = proc;
  req->sink = sink;
  req->io = io;
  if (poster) req->poster = *poster;
  arena_init(&req->arena, STREAM_ARENA_FIRST_BLOCK);
  arena_init(&req->msg_arena, ARENA_CACHED_BLOCK);
  req->info.content_length = -1;
  req->body_mode[0] = req->body_mode[1] = EXTPROC_BODY_MODE_UNKNOWN;
  req->protocol.request_body_mode = req->protocol.response_body_mode = EXTPROC_BODY_MODE_UNKNOWN;
  return req;
}

static void stream_free(extproc_request *req) {
  if (req->ctx_started && req->proc->context_cleanup) req->proc->context_cleanup(req->ctx);
  queued_message *q = req->queue_head;
  while (q) {
    queued_message *next = q->next;
    free(q);
    q = next;
  }
  free(req->accumulated[0]);
  free(req->accumulated[1]);
  arena_free(&req->msg_arena);
  arena_free(&req->arena);
  free(req);
}

bool stream_busy(const extproc_request *req) { return req->deferred; }

/* Ends the stream with a non-OK status; the transport sends the trailers. */
static void stream_fail(extproc_request *req, uint32_t code, const char *message) {
  if (req->ended) return;
  req->ended = true;
  if (req->io) req->sink->finish(req->io, code, message);
}

static void stream_finish_if_done(extproc_request *req) {
  if (req->ended || !req->half_closed || req->deferred || req->queue_head) return;
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
    *d = req->end_of_stream ? DIRECTION_ENDED : DIRECTION_HEADERS;
    return NULL;
  case 1: /* a body chunk */
    if (*d == DIRECTION_BODY_ENDED) return "a body chunk arrived after the body had ended";
    if (*d == DIRECTION_ENDED) return "a body chunk arrived after the end of the stream";
    *d = req->end_of_stream ? DIRECTION_BODY_ENDED : DIRECTION_BODY;
    return NULL;
  default: /* trailers */
    if (*d == DIRECTION_ENDED) return "trailers arrived after the end of the stream";
    *d = DIRECTION_ENDED;
    return NULL;
  }
}

static void record_request_info(extproc_request *req) {
  extproc_request_info *info = &req->info;
  /* Compared by length first: this runs for every header of every request. */
  const struct {
    const char *name;
    size_t len;
    const char **slot;
  } facts[] = {{":method", 7, &info->method},
               {":path", 5, &info->path},
               {":scheme", 7, &info->scheme},
               {":authority", 10, &info->authority},
               {"x-request-id", 12, &info->request_id},
               {"content-type", 12, &info->content_type},
               {"content-length", 14, NULL}};
  for (size_t i = 0; i < req->header_count; i++) {
    const extproc_header *h = &req->headers[i];
    for (size_t f = 0; f < sizeof(facts) / sizeof(facts[0]); f++) {
      if (h->name_len != facts[f].len || !header_name_equal(h->name, facts[f].name)) continue;
      if (!facts[f].slot) {
        info->content_length = header_parse_length(h->value, h->value_len);
      } else if (!*facts[f].slot) {
        *facts[f].slot = arena_strndup(&req->arena, h->value, h->value_len);
      }
      break;
    }
  }
}

static void record_response_info(extproc_request *req) {
  const char *status = headers_find(req->headers, req->header_count, ":status");
  if (!status) return;
  int64_t n = header_parse_length(status, strlen(status));
  if (n >= 100 && n <= 999) req->info.response_status = (uint32_t)n;
}

/* Copies a message into the stream arena, so it outlives the message being processed. */
static ProtobufCMessage *keep_copy(extproc_request *req, const ProtobufCMessage *m) {
  const size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = arena_alloc(&req->msg_arena, len ? len : 1);
  if (!buf) return NULL;
  protobuf_c_message_pack(m, buf);
  ProtobufCAllocator alloc = arena_protobuf_allocator(&req->arena);
  return protobuf_c_message_unpack(m->descriptor, &alloc, len, buf);
}

/* True when two messages encode to the same bytes. */
static bool same_message(extproc_request *req, const ProtobufCMessage *a,
                         const ProtobufCMessage *b) {
  const size_t len = protobuf_c_message_get_packed_size(a);
  if (len != protobuf_c_message_get_packed_size(b)) return false;
  uint8_t *x = arena_alloc(&req->msg_arena, len ? len : 1);
  uint8_t *y = arena_alloc(&req->msg_arena, len ? len : 1);
  if (!x || !y) return false;
  protobuf_c_message_pack(a, x);
  protobuf_c_message_pack(b, y);
  return memcmp(x, y, len) == 0;
}

/* Adds `copy`'s attributes to the kept ones; a name sent again takes its new value. */
static bool merge_attributes(extproc_request *req, Google__Protobuf__Struct *copy) {
  if (!req->attributes) {
    req->attributes = copy;
    return true;
  }
  Google__Protobuf__Struct *kept = req->attributes;
  Google__Protobuf__Struct__FieldsEntry **all =
      arena_alloc(&req->arena, (kept->n_fields + copy->n_fields) * sizeof(*all));
  if (!all) return false;
  memcpy(all, kept->fields, kept->n_fields * sizeof(*all));
  size_t n = kept->n_fields;
  for (size_t i = 0; i < copy->n_fields; i++) {
    size_t k = 0;
    while (k < n && strcmp(all[k]->key, copy->fields[i]->key) != 0)
      k++;
    all[k] = copy->fields[i];
    if (k == n) n++;
  }
  kept->fields = all;
  kept->n_fields = n;
  return true;
}

/* Keeps what Envoy sends once but the processor may want later: the protocol configuration
 * (first message), attributes (first message of each direction) and metadata. */
static bool keep_context(extproc_request *req, const ProcessingRequest *msg) {
  const Envoy__Service__ExtProc__V3__ProtocolConfiguration *pc = msg->protocol_config;
  if (pc && !req->protocol.known) {
    req->protocol =
        (extproc_protocol_config){.known = true,
                                  .request_body_mode = (extproc_body_mode)pc->request_body_mode,
                                  .response_body_mode = (extproc_body_mode)pc->response_body_mode,
                                  .send_body_without_waiting_for_header_response =
                                      pc->send_body_without_waiting_for_header_response};
    req->body_mode[0] = req->protocol.request_body_mode;
    req->body_mode[1] = req->protocol.response_body_mode;
  }
  /* Envoy may send the same metadata with every message: keep a new copy only when it
   * changed, so a long streamed body does not grow the stream's memory. */
  const Envoy__Config__Core__V3__Metadata *md = msg->metadata_context;
  if (md &&
      !(req->metadata_context && same_message(req, &md->base, &req->metadata_context->base))) {
    req->metadata_context = (Envoy__Config__Core__V3__Metadata *)keep_copy(req, &md->base);
    if (!req->metadata_context) return false;
  }
  for (size_t i = 0; i < msg->n_attributes; i++) {
    const Google__Protobuf__Struct *s = msg->attributes[i]->value;
    if (!s || s->n_fields == 0) continue;
    Google__Protobuf__Struct *copy = (Google__Protobuf__Struct *)keep_copy(req, &s->base);
    if (!copy || !merge_attributes(req, copy)) return false;
  }
  return true;
}

/* Points the request at the decoded message's phase data. Returns false on out-of-memory. */
static bool load_message(extproc_request *req, const ProcessingRequest *msg) {
  const Envoy__Config__Core__V3__HeaderMap *map = NULL;
  req->headers = NULL;
  req->header_count = 0;
  req->body = NULL;
  req->body_len = 0;
  req->end_of_stream = true;
  switch (msg->request_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS:
    map = msg->request_headers->headers;
    req->end_of_stream = msg->request_headers->end_of_stream;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS:
    map = msg->response_headers->headers;
    req->end_of_stream = msg->response_headers->end_of_stream;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY:
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY: {
    const Envoy__Service__ExtProc__V3__HttpBody *b =
        msg->request_case == ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY
            ? msg->request_body
            : msg->response_body;
    /* protobuf-c leaves data NULL for an empty field; callers get "" for an empty chunk. */
    req->body = b->body.data ? b->body.data : (const uint8_t *)"";
    req->body_len = b->body.len;
    req->end_of_stream = b->end_of_stream;
    break;
  }
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_TRAILERS:
    map = msg->request_trailers->trailers;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_TRAILERS:
    map = msg->response_trailers->trailers;
    break;
  default: break;
  }
  if (map && !headers_load(&req->msg_arena, map, &req->headers, &req->header_count)) return false;
  if (req->phase == EXTPROC_REQUEST_HEADERS) record_request_info(req);
  if (req->phase == EXTPROC_RESPONSE_HEADERS) record_response_info(req);
  if (req->phase == EXTPROC_REQUEST_HEADERS || req->phase == EXTPROC_RESPONSE_HEADERS)
    req->had_content_length[req->phase == EXTPROC_RESPONSE_HEADERS] =
        headers_find(req->headers, req->header_count, "content-length") != NULL;
  return keep_context(req, msg);
}

static void reset_reply(extproc_request *req) {
  memset(&req->edits, 0, sizeof(req->edits));
  memset(&req->immediate_headers, 0, sizeof(req->immediate_headers));
  req->body_op = BODY_KEEP;
  req->body_data = NULL;
  req->body_data_len = 0;
  req->immediate = false;
  req->immediate_status = 0;
  req->immediate_body = NULL;
  req->immediate_body_len = 0;
  req->immediate_has_grpc_status = false;
  req->immediate_details = NULL;
  req->fail_code = EXTPROC_GRPC_INTERNAL;
  req->fail_message = NULL;
  req->dynamic_metadata = NULL;
  req->has_mode_override = false;
  req->clear_route_cache = false;
  req->pieces_head = req->pieces_tail = NULL;
  req->chunk_accumulated = false;
}

static void send_reply(extproc_request *req, ProtobufCMessage *reply) {
  if (!reply) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  if (req->io && req->sink->send(req->io, reply) != 0) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "could not queue the reply");
    return;
  }
  if (req->immediate) req->ended = true; /* Envoy stops processing after an immediate response */
}

/* A callback (or context_init) failed: log it, then apply the processor's policy. */
static void apply_error_policy(extproc_request *req) {
  const char *why = req->fail_message ? req->fail_message : "callback failed";
  extproc_log(req, EXTPROC_LOG_ERROR, "%s (grpc-status %u, policy %s)", why, req->fail_code,
              req->proc->on_error == EXTPROC_ON_ERROR_FAIL_STREAM ? "fail_stream"
                                                                  : "immediate_response");
  /* No reply is possible in observability mode, nor once a streamed immediate response is
   * under way: the stream ends with the error status, and no later callback runs. */
  if (req->observability_mode || req->streamed_immediate != STREAMED_IMMEDIATE_NONE) {
    stream_fail(req, req->fail_code, why);
    return;
  }
  if (req->proc->on_error == EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE) {
    send_reply(req, reply_build_error(req, req->proc->error_http_status));
    return;
  }
  stream_fail(req, req->fail_code, why);
}

static uint64_t monotonic_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool is_body_phase(extproc_phase phase) {
  return phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY;
}

/* The direction of a phase: 0 request, 1 response. */
static int direction_of(extproc_phase phase) { return phase >= EXTPROC_RESPONSE_HEADERS; }

/* Appends a piece whose bytes already live in the message arena (no copy). */
static int append_piece(extproc_request *req, const uint8_t *data, size_t len, bool end_of_stream) {
  streamed_piece *p = arena_alloc(&req->msg_arena, sizeof(*p));
  if (!p) return EXTPROC_ENOMEM;
  *p = (streamed_piece){NULL, data, len, end_of_stream};
  if (req->pieces_tail)
    req->pieces_tail->next = p;
  else
    req->pieces_head = p;
  req->pieces_tail = p;
  return 0;
}

int stream_add_piece(extproc_request *req, const void *data, size_t len, bool end_of_stream) {
  uint8_t *copy = arena_alloc(&req->msg_arena, len ? len : 1);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  return append_piece(req, copy, len, end_of_stream);
}

int stream_send_extra(extproc_request *req, ProtobufCMessage *reply) {
  if (!reply) return EXTPROC_ENOMEM;
  return req->io ? req->sink->send(req->io, reply) : 0;
}

/* FULL_DUPLEX_STREAMED: this chunk's replies are the pieces the callback sent, else the chunk
 * itself as replaced, cleared (nothing) or untouched; and the body's last reply always carries
 * end_of_stream, even when the last chunk is empty or was cleared. */
static void send_duplex_body(extproc_request *req) {
  const int dir = direction_of(req->phase);
  if (!req->pieces_head && req->body_op != BODY_CLEAR && !req->duplex_body_ended[dir]) {
    const bool replaced = req->body_op == BODY_REPLACE;
    /* The chunk and a replacement are already in the message arena: no copy. */
    if (append_piece(req, replaced ? req->body_data : req->body,
                     replaced ? req->body_data_len : req->body_len, req->end_of_stream)) {
      stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
      return;
    }
  }
  bool ended = req->duplex_body_ended[dir];
  for (const streamed_piece *p = req->pieces_head; p; p = p->next)
    ended |= p->end_of_stream;
  if (req->end_of_stream && !ended && append_piece(req, (const uint8_t *)"", 0, true)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  for (const streamed_piece *p = req->pieces_head; p && !req->ended; p = p->next) {
    send_reply(req, reply_build_streamed_body(req, p));
    if (p->end_of_stream) req->duplex_body_ended[dir] = true;
  }
}

/* A streamed immediate response: its headers (when this callback started it), then the pieces
 * sent so far; the exchange is over once one carries end_of_stream. */
static void send_streamed_immediate(extproc_request *req) {
  if (req->streamed_immediate == STREAMED_IMMEDIATE_STARTING) {
    const bool headers_only = req->streamed_immediate_headers_end;
    send_reply(req, reply_build_streamed_immediate_headers(req, headers_only));
    req->streamed_immediate = headers_only ? STREAMED_IMMEDIATE_ENDED : STREAMED_IMMEDIATE_OPEN;
  }
  for (const streamed_piece *p = req->pieces_head; p && !req->ended; p = p->next) {
    send_reply(req, reply_build_streamed_immediate_body(req, p));
    if (p->end_of_stream) req->streamed_immediate = STREAMED_IMMEDIATE_ENDED;
  }
  if (req->streamed_immediate == STREAMED_IMMEDIATE_ENDED) req->ended = true;
}

/* BUFFERED with headers sent: Envoy keeps content-length and answers 500 when it no longer
 * matches the body, so a changed body gets its new length (unless the callback set one). */
static bool fix_content_length(extproc_request *req) {
  const int dir = direction_of(req->phase);
  const extproc_body_mode mode = req->body_mode[dir];
  const bool whole_body =
      mode == EXTPROC_BODY_BUFFERED || (mode == EXTPROC_BODY_MODE_UNKNOWN && req->end_of_stream);
  if (!is_body_phase(req->phase) || req->body_op == BODY_KEEP || !whole_body ||
      !req->had_content_length[dir])
    return true;
  for (const header_edit *e = req->edits.head; e; e = e->next)
    if (strcmp(e->name, "content-length") == 0) return true;
  char len[24];
  snprintf(len, sizeof(len), "%zu", req->body_op == BODY_CLEAR ? (size_t)0 : req->body_data_len);
  return header_edits_add(&req->msg_arena, &req->edits, HEADER_SET, "content-length", len) == 0;
}

/* Sends what the callback recorded: the phase's one reply, or the streamed replies of a
 * FULL_DUPLEX_STREAMED body or a streamed immediate response. */
static void send_replies(extproc_request *req) {
  if (req->streamed_immediate != STREAMED_IMMEDIATE_NONE) {
    send_streamed_immediate(req);
    return;
  }
  if (is_body_phase(req->phase) && !req->immediate &&
      req->body_mode[direction_of(req->phase)] == EXTPROC_BODY_FULL_DUPLEX_STREAMED) {
    send_duplex_body(req);
    return;
  }
  if (!fix_content_length(req)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  send_reply(req, reply_build(req));
  if (!is_body_phase(req->phase) && req->body_op != BODY_KEEP)
    req->body_replaced[direction_of(req->phase)] = true;
  if (req->has_mode_override) { /* what Envoy sends next follows the new mode */
    req->body_mode[0] = req->mode_override.request_body_mode;
    req->body_mode[1] = req->mode_override.response_body_mode;
  }
}

/* The callback's outcome is known: reply (or not) and move on. */
static void complete_phase(extproc_request *req, extproc_result result) {
  if (result == EXTPROC_FAIL) {
    apply_error_policy(req);
  } else if (!req->observability_mode && !req->ended) {
    send_replies(req);
  }
  if (req->phase_started_ns)
    extproc_log(req, EXTPROC_LOG_DEBUG, "%s in %llu ns",
                result == EXTPROC_FAIL ? "failed"
                : req->immediate       ? "answered immediately"
                                       : "handled",
                (unsigned long long)(monotonic_ns() - req->phase_started_ns));
  reset_message_memory(req);
}

static bool start_context(extproc_request *req) {
  const extproc_processor *proc = req->proc;
  if (proc->context_size) {
    req->ctx = arena_calloc(&req->arena, proc->context_size);
    if (!req->ctx) {
      req->fail_code = EXTPROC_GRPC_RESOURCE_EXHAUSTED;
      req->fail_message = "out of memory allocating the request context";
      return false;
    }
  }
  if (proc->context_init && proc->context_init(req, req->ctx) != 0) {
    if (!req->fail_message) req->fail_message = "context_init failed";
    return false;
  }
  req->ctx_started = true;
  return true;
}

/* The oneof's field numbers alternate directions (request_headers 2, response_headers 3,
 * request_body 4, ...); phases are numbered by direction. */
static extproc_phase phase_of(Envoy__Service__ExtProc__V3__ProcessingRequest__RequestCase c) {
  const unsigned n = (unsigned)c - 2;
  return (extproc_phase)((n & 1) * EXTPROC_RESPONSE_HEADERS + n / 2);
}

/* Envoy's messages nest a few levels (headers) to a few dozen (attribute and metadata Structs),
 * and carry at most a few thousand headers; far larger values only come from a hostile peer. */
enum { MAX_NESTING = 64, MAX_SUBMESSAGES = 100000 };

static void process_message(extproc_request *req, const uint8_t *data, size_t len) {
  const wire_check_result check =
      wire_check(&envoy__service__ext_proc__v3__processing_request__descriptor, data, len,
                 MAX_NESTING, MAX_SUBMESSAGES);
  if (check == WIRE_TOO_DEEP || check == WIRE_TOO_MANY_MESSAGES) {
    const char *why = check == WIRE_TOO_DEEP ? "ProcessingRequest nested too deeply"
                                             : "ProcessingRequest has too many sub-messages";
    log_line(EXTPROC_LOG_WARN, "processor=%s: %s (%zu bytes)", req->proc->name, why, len);
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, why);
    return;
  }
  ProtobufCAllocator alloc = arena_protobuf_allocator(&req->msg_arena);
  ProcessingRequest *msg =
      envoy__service__ext_proc__v3__processing_request__unpack(&alloc, len, data);
  if (!msg) {
    log_line(EXTPROC_LOG_WARN, "processor=%s: malformed ProcessingRequest (%zu bytes)",
             req->proc->name, len);
    stream_fail(req, EXTPROC_GRPC_INVALID_ARGUMENT, "malformed ProcessingRequest");
    reset_message_memory(req);
    return;
  }
  if (msg->request_case == ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST__NOT_SET) {
    stream_fail(req, EXTPROC_GRPC_INVALID_ARGUMENT, "ProcessingRequest carries no phase");
    reset_message_memory(req);
    return;
  }
  const extproc_phase phase = phase_of(msg->request_case);
  const bool first_message =
      req->direction[0] == DIRECTION_NOTHING && req->direction[1] == DIRECTION_NOTHING;
  req->phase_started_ns = log_enabled(EXTPROC_LOG_DEBUG) ? monotonic_ns() : 0;
  req->phase = phase;
  req->observability_mode = msg->observability_mode;
  reset_reply(req);
  if (!load_message(req, msg)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory decoding the request");
    reset_message_memory(req);
    return;
  }
  const char *order_error = advance_direction(req, phase);
  if (order_error) {
    extproc_log(req, EXTPROC_LOG_WARN, "unexpected phase: %s", order_error);
    stream_fail(req, EXTPROC_GRPC_FAILED_PRECONDITION, order_error);
    reset_message_memory(req);
    return;
  }

  /* After CONTINUE_AND_REPLACE Envoy takes no reply for that direction's body or trailers, but
   * in FULL_DUPLEX_STREAMED (or without waiting for the headers reply) some may already be on
   * their way: they are dropped unanswered, or Envoy would count the replies as spurious. */
  if (phase != EXTPROC_REQUEST_HEADERS && phase != EXTPROC_RESPONSE_HEADERS &&
      req->body_replaced[direction_of(phase)]) {
    extproc_log(req, EXTPROC_LOG_DEBUG, "after CONTINUE_AND_REPLACE: dropped unanswered");
    reset_message_memory(req);
    return;
  }

  if (first_message && !start_context(req)) {
    complete_phase(req, EXTPROC_FAIL);
    return;
  }
  const extproc_phase_fn fn = req->proc->on[phase];
  atomic_store(&req->handoff, HANDOFF_IN_CALLBACK);
  const extproc_result result = fn ? fn(req, req->ctx) : EXTPROC_CONTINUE;
  if (result == EXTPROC_DEFER) {
    int expected = HANDOFF_IN_CALLBACK;
    if (atomic_compare_exchange_strong(&req->handoff, &expected, HANDOFF_DEFERRED)) {
      req->deferred = true;
      if (req->poster.deferred) (*req->poster.deferred)++;
      return;
    }
    /* Resumed before the callback even returned (another thread was quick, or the callback
     * resumed itself): the answer is ready now. */
    atomic_store(&req->handoff, HANDOFF_IDLE);
    complete_phase(req, req->resume_result);
    return;
  }
  if (atomic_exchange(&req->handoff, HANDOFF_IDLE) == HANDOFF_RESUMED_EARLY)
    extproc_log(req, EXTPROC_LOG_WARN,
                "extproc_request_resume() called but the callback did not return EXTPROC_DEFER; "
                "the resume is ignored");
  complete_phase(req, result == EXTPROC_FAIL ? EXTPROC_FAIL : EXTPROC_CONTINUE);
}

/* Processes queued messages until one defers or the queue is empty. */
static void drain_queue(extproc_request *req) {
  while (!req->deferred && req->queue_head) {
    queued_message *q = req->queue_head;
    req->queue_head = q->next;
    if (!req->queue_head) req->queue_tail = NULL;
    if (!req->ended) process_message(req, q->data, q->len);
    free(q);
  }
  stream_finish_if_done(req);
}

void stream_on_message(extproc_request *req, const uint8_t *data, size_t len) {
  if (req->ended) {
    log_line(EXTPROC_LOG_DEBUG, "processor=%s: message after the stream ended, ignored",
             req->proc->name);
    return;
  }
  if (!req->deferred && !req->queue_head) {
    process_message(req, data, len);
    return;
  }
  /* An earlier message is still being answered: keep order by queueing a copy. The transport
   * holds back flow-control credit meanwhile, so Envoy cannot make this grow without bound. */
  queued_message *q = malloc(sizeof(*q) + len);
  if (!q) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory queueing a message");
    return;
  }
  q->next = NULL;
  q->len = len;
  memcpy(q->data, data, len);
  if (req->queue_tail)
    req->queue_tail->next = q;
  else
    req->queue_head = q;
  req->queue_tail = q;
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

void stream_resume_on_loop(extproc_request *req) {
  req->deferred = false;
  atomic_store(&req->handoff, HANDOFF_IDLE);
  if (req->poster.deferred) (*req->poster.deferred)--;
  if (!req->io) { /* the exchange went away while we waited */
    extproc_log(req, EXTPROC_LOG_WARN,
                "deferred answer dropped: Envoy had already ended the stream "
                "(its message_timeout may have run out)");
    stream_free(req);
    return;
  }
  complete_phase(req, req->resume_result);
  drain_queue(req);
  if (req->io) req->sink->resumed(req->io);
}

int extproc_request_resume(extproc_request *req, extproc_result result) {
  if (!req || (result != EXTPROC_CONTINUE && result != EXTPROC_FAIL)) return EXTPROC_EINVAL;
  if (!req->poster.post) return EXTPROC_ESTATE;
  /* The result is written before the state changes hands (sequentially consistent atomics), so
   * whichever thread sees the new state also sees the result. */
  const extproc_result previous = req->resume_result;
  req->resume_result = result;
  int expected = HANDOFF_IN_CALLBACK;
  if (atomic_compare_exchange_strong(&req->handoff, &expected, HANDOFF_RESUMED_EARLY)) return 0;
  expected = HANDOFF_DEFERRED;
  if (atomic_compare_exchange_strong(&req->handoff, &expected, HANDOFF_POSTED)) {
    req->poster.post(req->poster.data, req);
    return 0;
  }
  req->resume_result = previous; /* not ours to answer: leave the request as it was */
  return EXTPROC_ESTATE;
}
