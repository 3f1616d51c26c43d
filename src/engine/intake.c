/* Message intake: from a whole gRPC message to the request's view of it. Hostile shapes are
 * refused before protobuf-c sees them; decoding goes into the message arena; what Envoy says
 * once but a processor may want later (request facts, protocol_config, attributes, metadata)
 * is kept in the stream arena; messages that arrive while another is answered wait in order. */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "engine/request.h"
#include "engine/wire_check.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;

/* Envoy's messages nest a few levels (headers) to a few dozen (attribute and metadata Structs),
 * and carry at most a few thousand headers; far larger values only come from a hostile peer. */
enum { MAX_NESTING = 64, MAX_SUBMESSAGES = 100000 };

/* The slow path, for what decode_direct does not read: hostile shapes refused before
 * protobuf-c sees them, then protobuf-c's unpack into the message arena. */
static bool decode_indirect(extproc_request *req, const uint8_t *data, size_t len,
                            decoded_request *out) {
  const wire_check_result check =
      wire_check(&envoy__service__ext_proc__v3__processing_request__descriptor, data, len,
                 MAX_NESTING, MAX_SUBMESSAGES);
  if (check == WIRE_TOO_DEEP || check == WIRE_TOO_MANY_MESSAGES) {
    const char *why = check == WIRE_TOO_DEEP ? "ProcessingRequest nested too deeply"
                                             : "ProcessingRequest has too many sub-messages";
    extproc_log(req, EXTPROC_LOG_WARN, "%s (%zu bytes)", why, len);
    stream_count_violation(req, check == WIRE_TOO_DEEP ? VIOLATION_TOO_DEEP
                                                       : VIOLATION_TOO_MANY_MESSAGES);
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, why);
    return false;
  }
  ProtobufCAllocator alloc = arena_protobuf_allocator(&req->msg_arena);
  ProcessingRequest *msg =
      envoy__service__ext_proc__v3__processing_request__unpack(&alloc, len, data);
  if (!msg) {
    extproc_log(req, EXTPROC_LOG_WARN, "malformed ProcessingRequest (%zu bytes)", len);
    stream_count_violation(req, VIOLATION_MALFORMED);
    stream_fail(req, EXTPROC_GRPC_INVALID_ARGUMENT, "malformed ProcessingRequest");
    return false;
  }
  if (!decode_unpacked(&req->msg_arena, msg, out)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory decoding the request");
    return false;
  }
  return true;
}

bool intake_decode(extproc_request *req, const uint8_t *data, size_t len, decoded_request *out) {
  const decode_result r = decode_direct(&req->msg_arena, data, len, out);
  if (r == DECODE_NO_MEMORY) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory decoding the request");
    return false;
  }
  if (r == DECODE_INDIRECT && !decode_indirect(req, data, len, out)) return false;
  if (out->phase_field == 0) {
    stream_count_violation(req, VIOLATION_NO_PHASE);
    stream_fail(req, EXTPROC_GRPC_INVALID_ARGUMENT, "ProcessingRequest carries no phase");
    return false;
  }
  return true;
}

bool intake_own_body(extproc_request *req) {
  if (!req->msg.body_borrowed) return true;
  uint8_t *copy = arena_alloc(&req->msg_arena, req->msg.body_len ? req->msg.body_len : 1);
  if (!copy) return false;
  if (req->msg.body_len) memcpy(copy, req->msg.body, req->msg.body_len);
  req->msg.body = copy;
  req->msg.body_borrowed = false;
  return true;
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
  for (size_t i = 0; i < req->msg.header_count; i++) {
    const extproc_header *h = &req->msg.headers[i];
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
  const char *status = headers_find(req->msg.headers, req->msg.header_count, ":status");
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
static bool keep_context(extproc_request *req, const decoded_request *d) {
  if (d->has_protocol_config && !req->protocol.known) {
    req->protocol =
        (extproc_protocol_config){.known = true,
                                  .request_body_mode = (extproc_body_mode)d->request_body_mode,
                                  .response_body_mode = (extproc_body_mode)d->response_body_mode,
                                  .send_body_without_waiting_for_header_response =
                                      d->send_body_without_waiting_for_header_response};
    req->body_mode[0] = req->protocol.request_body_mode;
    req->body_mode[1] = req->protocol.response_body_mode;
  }
  /* Envoy may send the same metadata with every message: keep a new copy only when it
   * changed, so a long streamed body does not grow the stream's memory. */
  const Envoy__Config__Core__V3__Metadata *md = d->metadata_context;
  if (md &&
      !(req->metadata_context && same_message(req, &md->base, &req->metadata_context->base))) {
    req->metadata_context = (Envoy__Config__Core__V3__Metadata *)keep_copy(req, &md->base);
    if (!req->metadata_context) return false;
  }
  for (size_t i = 0; i < d->attribute_count; i++) {
    const Google__Protobuf__Struct *s = d->attributes[i]->value;
    if (!s || s->n_fields == 0) continue;
    Google__Protobuf__Struct *copy = (Google__Protobuf__Struct *)keep_copy(req, &s->base);
    if (!copy || !merge_attributes(req, copy)) return false;
  }
  return true;
}

/* Envoy removes content-length in streaming body modes (STREAMED, BUFFERED_PARTIAL,
 * FULL_DUPLEX_STREAMED) only after sending the headers, and decides with the mode in effect at
 * that moment: for the request, the filter's mode (protocol_config), since the processor's
 * mode_override comes later; for the response, the filter's mode or, if Envoy granted it, the
 * override sent at request_headers, which the processor cannot tell apart. So the processor
 * sees a content-length Envoy may or may not go on holding; it is surely gone only when both
 * the filter's mode and the mode asked for are streaming ones. Otherwise a changed body has to
 * keep it true (send.c). */
static void note_content_length(extproc_request *req) {
  const int dir = direction_of(req->msg.phase);
  const extproc_body_mode filter_mode =
      dir ? req->protocol.response_body_mode : req->protocol.request_body_mode;
  const bool removed =
      drops_content_length(filter_mode) && drops_content_length(req->body_mode[dir]);
  req->content_length_held[dir] =
      !removed && headers_find(req->msg.headers, req->msg.header_count, "content-length") != NULL;
}

/* Points the request at the decoded message's phase data. Returns false on out-of-memory. */
bool intake_load(extproc_request *req, const decoded_request *d) {
  req->msg.headers = d->headers;
  req->msg.header_count = d->header_count;
  req->msg.body = d->body;
  req->msg.body_len = d->body_len;
  req->msg.body_borrowed = d->body_in_input;
  /* Trailers end their direction. */
  req->msg.end_of_stream = d->end_of_stream || d->phase_field >= 6;
  req->msg.chunk_accumulated = false;
  if (req->msg.phase == EXTPROC_REQUEST_HEADERS) record_request_info(req);
  if (req->msg.phase == EXTPROC_RESPONSE_HEADERS) record_response_info(req);
  if (is_body_phase(req->msg.phase)) req->body_messages[direction_of(req->msg.phase)]++;
  if (!keep_context(req, d)) return false;
  if (is_headers_phase(req->msg.phase)) note_content_length(req);
  return true;
}

bool intake_enqueue(extproc_request *req, const uint8_t *data, size_t len) {
  queued_message *q = malloc(sizeof(*q) + len);
  if (!q) return false;
  q->len = len;
  memcpy(q->data, data, len);
  queue_push(&req->waiting, &q->link);
  return true;
}

void intake_drain(extproc_request *req) {
  while (!req->deferred && !queue_empty(&req->waiting)) {
    queued_message *q = LIST_ITEM(queue_pop(&req->waiting), queued_message, link);
    if (!req->ended) stream_process(req, q->data, q->len);
    free(q);
  }
  stream_finish_if_done(req);
}

void intake_discard(extproc_request *req) {
  queue_link *l;
  while ((l = queue_pop(&req->waiting)))
    free(LIST_ITEM(l, queued_message, link));
}
