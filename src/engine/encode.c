/* The direct reply encoder (encode.h).
 *
 * One walk serves both passes: sizing (out == NULL) records each sub-message's size in
 * pre-order, writing reads them back in the same order, so nothing is measured twice. Field
 * by field it follows protobuf-c 1.4's packer: fields in field-number order; a proto3 scalar
 * is left out when zero, a string when NULL or empty, bytes when empty (protobuf-c tests the
 * first word of ProtobufCBinaryData, its length), a message when NULL; a oneof member is written
 * when its case is set, bytes and bools even when empty or false; an enum is an int32 varint (ten
 * bytes when negative); repeated strings are each written, empty or not. */
#include "engine/encode.h"

#include <string.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Service__ExtProc__V3__CommonResponse CommonResponse;
typedef Envoy__Service__ExtProc__V3__HeaderMutation HeaderMutation;
typedef Envoy__Service__ExtProc__V3__BodyMutation BodyMutation;
typedef Envoy__Service__ExtProc__V3__StreamedBodyResponse StreamedBodyResponse;
typedef Envoy__Config__Core__V3__HeaderValueOption HeaderValueOption;
typedef Envoy__Config__Core__V3__HeaderValue HeaderValue;
typedef Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode ProcessingMode;

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

typedef struct encoder {
  uint8_t *out;        /* NULL while sizing */
  size_t n;            /* bytes so far */
  size_t *record;      /* sizing: where sub-message sizes go */
  const size_t *sizes; /* writing: where they come from */
  size_t next;         /* the next sub-message's slot */
  bool unsupported;    /* a field this encoder leaves to protobuf-c */
} encoder;

static void put_varint(encoder *e, uint64_t v) {
  do {
    const uint8_t byte = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    if (e->out) e->out[e->n] = byte;
    e->n++;
    v >>= 7;
  } while (v);
}

static void put_tag(encoder *e, unsigned field, unsigned wire) {
  put_varint(e, (uint64_t)field << 3 | wire);
}

static void put_raw(encoder *e, const void *p, size_t len) {
  if (e->out && len) memcpy(e->out + e->n, p, len);
  e->n += len;
}

static void put_len_field(encoder *e, unsigned field, const void *p, size_t len) {
  put_tag(e, field, WIRE_LEN);
  put_varint(e, len);
  put_raw(e, p, len);
}

static void put_bool(encoder *e, unsigned field, protobuf_c_boolean v) {
  if (!v) return;
  put_tag(e, field, WIRE_VARINT);
  put_varint(e, 1);
}

/* protobuf-c writes an int32 as its sign-extended 64-bit varint. */
static void put_enum_value(encoder *e, unsigned field, int32_t v) {
  put_tag(e, field, WIRE_VARINT);
  put_varint(e, (uint64_t)(int64_t)v);
}

static void put_enum(encoder *e, unsigned field, int v) {
  if (v) put_enum_value(e, field, (int32_t)v);
}

static void put_string(encoder *e, unsigned field, const char *s) {
  if (s && *s) put_len_field(e, field, s, strlen(s));
}

static void put_bytes(encoder *e, unsigned field, const ProtobufCBinaryData *b) {
  if (b->len) put_len_field(e, field, b->data, b->len);
}

typedef void (*message_fn)(encoder *e, const void *m);

/* A sub-message field: its size comes from the sizing pass. */
static void put_message(encoder *e, unsigned field, message_fn fn, const void *m) {
  if (!m || e->unsupported) return;
  if (e->next == ENCODE_MAX_SUBMESSAGES) {
    e->unsupported = true;
    return;
  }
  const size_t slot = e->next++;
  put_tag(e, field, WIRE_LEN);
  if (e->out) {
    put_varint(e, e->sizes[slot]);
    fn(e, m);
    return;
  }
  const size_t start = e->n;
  fn(e, m);
  const size_t size = e->n - start;
  e->record[slot] = size;
  put_varint(e, size); /* counts the prefix after the contents: only the total matters */
}

/* Unknown fields would be written by protobuf-c after the known ones. */
static bool plain(encoder *e, const ProtobufCMessage *base) {
  if (base->n_unknown_fields) e->unsupported = true;
  return !e->unsupported;
}

/* ---- The messages ------------------------------------------------------------------------- */

static void header_value(encoder *e, const void *m) {
  const HeaderValue *v = m;
  if (!plain(e, &v->base)) return;
  put_string(e, 1, v->key);
  put_string(e, 2, v->value);
  put_bytes(e, 3, &v->raw_value);
}

static void bool_value(encoder *e, const void *m) {
  const Google__Protobuf__BoolValue *b = m;
  if (plain(e, &b->base)) put_bool(e, 1, b->value);
}

static void header_value_option(encoder *e, const void *m) {
  const HeaderValueOption *o = m;
  if (!plain(e, &o->base)) return;
  put_message(e, 1, header_value, o->header);
  put_message(e, 2, bool_value, o->append);
  put_enum(e, 3, o->append_action);
  put_bool(e, 4, o->keep_empty_value);
}

static void header_mutation(encoder *e, const void *m) {
  const HeaderMutation *h = m;
  if (!plain(e, &h->base)) return;
  for (size_t i = 0; i < h->n_set_headers; i++) {
    if (!h->set_headers[i]) { /* protobuf-c would not survive it either */
      e->unsupported = true;
      return;
    }
    put_message(e, 1, header_value_option, h->set_headers[i]);
  }
  for (size_t i = 0; i < h->n_remove_headers; i++) {
    const char *s = h->remove_headers[i] ? h->remove_headers[i] : "";
    put_len_field(e, 2, s, strlen(s));
  }
}

static void streamed_body_response(encoder *e, const void *m) {
  const StreamedBodyResponse *s = m;
  if (!plain(e, &s->base)) return;
  put_bytes(e, 1, &s->body);
  put_bool(e, 2, s->end_of_stream);
  put_bool(e, 3, s->end_of_stream_without_message);
  put_bool(e, 4, s->grpc_message_compressed);
  put_bool(e, 5, s->drain_complete);
}

static void body_mutation(encoder *e, const void *m) {
  const BodyMutation *b = m;
  if (!plain(e, &b->base)) return;
  switch (b->mutation_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY:
    put_len_field(e, 1, b->body.data, b->body.len);
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY:
    put_tag(e, 2, WIRE_VARINT);
    put_varint(e, b->clear_body ? 1 : 0);
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE:
    put_message(e, 3, streamed_body_response, b->streamed_response);
    break;
  default: break;
  }
}

static void common_response(encoder *e, const void *m) {
  const CommonResponse *c = m;
  if (!plain(e, &c->base)) return;
  if (c->trailers) e->unsupported = true;
  put_enum(e, 1, c->status);
  put_message(e, 2, header_mutation, c->header_mutation);
  put_message(e, 3, body_mutation, c->body_mutation);
  put_bool(e, 5, c->clear_route_cache);
}

/* HeadersResponse and BodyResponse: one CommonResponse at field 1. */
static void headers_or_body_response(encoder *e, const void *m) {
  const Envoy__Service__ExtProc__V3__HeadersResponse *h = m;
  if (plain(e, &h->base)) put_message(e, 1, common_response, h->response);
}

static void trailers_response(encoder *e, const void *m) {
  const Envoy__Service__ExtProc__V3__TrailersResponse *t = m;
  if (plain(e, &t->base)) put_message(e, 1, header_mutation, t->header_mutation);
}

static void processing_mode(encoder *e, const void *m) {
  const ProcessingMode *p = m;
  if (!plain(e, &p->base)) return;
  put_enum(e, 1, p->request_header_mode);
  put_enum(e, 2, p->response_header_mode);
  put_enum(e, 3, p->request_body_mode);
  put_enum(e, 4, p->response_body_mode);
  put_enum(e, 5, p->request_trailer_mode);
  put_enum(e, 6, p->response_trailer_mode);
}

static void processing_response(encoder *e, const ProcessingResponse *r) {
  if (!plain(e, &r->base)) return;
  if (r->dynamic_metadata || r->n_typed_dynamic_metadata || r->override_message_timeout ||
      r->server_window_update) {
    e->unsupported = true;
    return;
  }
  const unsigned field = (unsigned)r->response_case;
  switch (r->response_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE__NOT_SET: break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS:
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS:
    put_message(e, field, headers_or_body_response, r->request_headers);
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY:
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY:
    put_message(e, field, headers_or_body_response, r->request_body);
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS:
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS:
    put_message(e, field, trailers_response, r->request_trailers);
    break;
  default: e->unsupported = true; return; /* immediate responses */
  }
  put_message(e, 9, processing_mode, r->mode_override);
  /* Deprecated in Envoy's API, but a field protobuf-c writes when set. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  put_bool(e, 12, r->request_drain);
#pragma GCC diagnostic pop
  put_bool(e, 15, r->request_drain_requests);
  put_bool(e, 16, r->request_drain_responses);
}

/* ---- Entry points ------------------------------------------------------------------------- */

size_t encode_size(const ProtobufCMessage *msg, encode_plan *plan) {
  plan->direct = false;
  plan->count = 0;
  if (msg->descriptor == &envoy__service__ext_proc__v3__processing_response__descriptor) {
    encoder e = {.record = plan->sizes};
    processing_response(&e, (const ProcessingResponse *)msg);
    if (!e.unsupported) {
      plan->direct = true;
      plan->count = e.next;
      return e.n;
    }
  }
  return protobuf_c_message_get_packed_size(msg);
}

size_t encode_pack(const ProtobufCMessage *msg, const encode_plan *plan, uint8_t *out) {
  if (!plan->direct) return protobuf_c_message_pack(msg, out);
  encoder e = {.out = out, .sizes = plan->sizes};
  processing_response(&e, (const ProcessingResponse *)msg);
  return e.n;
}
