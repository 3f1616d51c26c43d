/* Recording the processor's replies: each ProcessingResponse, decoded from its wire form as
 * Envoy would receive it, becomes an extproc_harness_reply (and changes Envoy's view of the
 * headers); the getters that inspect them. */
#include <stdlib.h>
#include <string.h>

#include "engine/headers.h"
#include "testing/harness_internal.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Service__ExtProc__V3__HeaderMutation HeaderMutation;

/* A body or a body piece, never NULL (protobuf-c leaves an empty bytes field NULL). */
static const uint8_t *bytes_of(const ProtobufCBinaryData *b) {
  return b->data ? b->data : (const uint8_t *)"";
}

/* raw_value is bytes, not a C string: keeps a NUL-terminated copy for the test's author. */
static bool copy_raw_value(extproc_harness_header_write *w, const ProtobufCBinaryData *raw) {
  w->value_len = raw ? raw->len : 0;
  char *v = malloc(w->value_len + 1);
  if (!v) return false;
  if (w->value_len) memcpy(v, raw->data, w->value_len);
  v[w->value_len] = '\0';
  w->value = v;
  return true;
}

/* Records a HeaderMutation's writes and removals (NULL: none). */
static bool record_writes(stored_reply *s, const HeaderMutation *m) {
  extproc_harness_reply *r = &s->pub;
  if (!m) return true;
  s->writes = calloc(m->n_set_headers ? m->n_set_headers : 1, sizeof(*s->writes));
  if (!s->writes) return false;
  r->header_writes = s->writes;
  for (size_t i = 0; i < m->n_set_headers; i++) {
    const Envoy__Config__Core__V3__HeaderValueOption *o = m->set_headers[i];
    extproc_harness_header_write *w = &s->writes[i];
    w->name = o->header && o->header->key ? o->header->key : "";
    w->value_field_set = o->header && o->header->value && o->header->value[0];
    w->append = o->append && o->append->value;
    w->append_action = (int)o->append_action;
    if (!copy_raw_value(w, o->header ? &o->header->raw_value : NULL)) return false;
    r->header_write_count = i + 1;
  }
  r->header_removes = (const char *const *)m->remove_headers;
  r->header_remove_count = m->n_remove_headers;
  return true;
}

/* Records the writes of a reply for `phase` and applies them to that phase's view, if any. */
static bool record_mutation(extproc_harness *h, stored_reply *s, extproc_phase phase,
                            const HeaderMutation *m) {
  if (!record_writes(s, m)) return false;
  pair_list *view = envoy_view_of(h, phase);
  return !m || !view || envoy_view_apply(view, &s->pub, m);
}

static bool record_common(extproc_harness *h, stored_reply *s, extproc_phase phase,
                          const Envoy__Service__ExtProc__V3__CommonResponse *c) {
  extproc_harness_reply *r = &s->pub;
  r->kind = EXTPROC_HARNESS_PHASE_REPLY;
  r->phase = phase;
  if (!c) return true;
  r->continue_and_replace =
      c->status ==
      ENVOY__SERVICE__EXT_PROC__V3__COMMON_RESPONSE__RESPONSE_STATUS__CONTINUE_AND_REPLACE;
  r->clear_route_cache = c->clear_route_cache;
  const Envoy__Service__ExtProc__V3__BodyMutation *bm = c->body_mutation;
  if (bm && bm->mutation_case == ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY) {
    r->body_change = EXTPROC_HARNESS_BODY_REPLACED;
    r->body = bytes_of(&bm->body);
    r->body_len = bm->body.len;
  } else if (bm && bm->mutation_case ==
                       ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY) {
    r->body_change = EXTPROC_HARNESS_BODY_CLEARED;
  } else if (bm && bm->mutation_case ==
                       ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE) {
    r->streamed_body = true;
    r->body = bytes_of(&bm->streamed_response->body);
    r->body_len = bm->streamed_response->body.len;
    r->end_of_stream = bm->streamed_response->end_of_stream;
  }
  return record_mutation(h, s, phase, c->header_mutation);
}

static void record_mode_override(extproc_harness_reply *r, const ProcessingResponse *m) {
  const Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *pm = m->mode_override;
  if (!pm) return;
  r->has_mode_override = true;
  r->mode_override = (extproc_processing_mode){
      .struct_size = sizeof(extproc_processing_mode),
      .request_header_mode = (extproc_header_mode)pm->request_header_mode,
      .response_header_mode = (extproc_header_mode)pm->response_header_mode,
      .request_body_mode = (extproc_body_mode)pm->request_body_mode,
      .response_body_mode = (extproc_body_mode)pm->response_body_mode,
      .request_trailer_mode = (extproc_header_mode)pm->request_trailer_mode,
      .response_trailer_mode = (extproc_header_mode)pm->response_trailer_mode};
}

static bool record_streamed_immediate(extproc_harness *h, stored_reply *s) {
  const Envoy__Service__ExtProc__V3__StreamedImmediateResponse *si =
      s->msg->streamed_immediate_response;
  extproc_harness_reply *r = &s->pub;
  r->kind = EXTPROC_HARNESS_STREAMED_IMMEDIATE;
  r->phase = extproc_request_phase(h->req);
  if (si->response_case ==
      ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_BODY_RESPONSE) {
    r->streamed_body = true;
    r->body = bytes_of(&si->body_response->body);
    r->body_len = si->body_response->body.len;
    r->end_of_stream = si->body_response->end_of_stream;
    return true;
  }
  if (si->response_case !=
      ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_HEADERS_RESPONSE)
    return true;
  /* The headers: they read as header writes, and the client's view becomes them. */
  const Envoy__Config__Core__V3__HeaderMap *map = si->headers_response->headers;
  r->end_of_stream = si->headers_response->end_of_stream;
  const size_t n = map ? map->n_headers : 0;
  s->writes = calloc(n ? n : 1, sizeof(*s->writes));
  if (!s->writes) return false;
  r->header_writes = s->writes;
  for (size_t i = 0; i < n; i++) {
    extproc_harness_header_write *w = &s->writes[i];
    w->name = map->headers[i]->key ? map->headers[i]->key : "";
    if (!copy_raw_value(w, &map->headers[i]->raw_value)) return false;
    r->header_write_count = i + 1;
    if (strcmp(w->name, ":status") == 0)
      r->immediate_status = (uint32_t)strtoul(w->value, NULL, 10);
  }
  return envoy_view_replace(&h->client, r);
}

static bool record_immediate(extproc_harness *h, stored_reply *s) {
  const Envoy__Service__ExtProc__V3__ImmediateResponse *im = s->msg->immediate_response;
  extproc_harness_reply *r = &s->pub;
  r->kind = EXTPROC_HARNESS_IMMEDIATE;
  r->phase = extproc_request_phase(h->req);
  r->immediate_status = im->status ? (uint32_t)im->status->code : 0;
  r->body = bytes_of(&im->body);
  r->body_len = im->body.len;
  r->has_grpc_status = im->grpc_status != NULL;
  r->grpc_status = im->grpc_status ? im->grpc_status->status : 0;
  r->details = im->details ? im->details : "";
  return record_writes(s, im->headers) && envoy_view_immediate(&h->client, r, im->headers);
}

static bool record_reply(extproc_harness *h, stored_reply *s) {
  const ProcessingResponse *m = s->msg;
  extproc_harness_reply *r = &s->pub;
  record_mode_override(r, m);
  if (m->override_message_timeout) {
    r->kind = EXTPROC_HARNESS_TIMEOUT_OVERRIDE;
    r->override_message_timeout_ms = (uint32_t)(m->override_message_timeout->seconds * 1000 +
                                                m->override_message_timeout->nanos / 1000000);
  }
  switch (m->response_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_STREAMED_IMMEDIATE_RESPONSE:
    return record_streamed_immediate(h, s);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS:
    return record_common(h, s, EXTPROC_REQUEST_HEADERS, m->request_headers->response);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS:
    return record_common(h, s, EXTPROC_RESPONSE_HEADERS, m->response_headers->response);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY:
    return record_common(h, s, EXTPROC_REQUEST_BODY, m->request_body->response);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY:
    return record_common(h, s, EXTPROC_RESPONSE_BODY, m->response_body->response);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS:
    r->phase = EXTPROC_REQUEST_TRAILERS;
    return record_writes(s, m->request_trailers->header_mutation);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS:
    r->phase = EXTPROC_RESPONSE_TRAILERS;
    return record_writes(s, m->response_trailers->header_mutation);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE:
    return record_immediate(h, s);
  default: return true;
  }
}

int harness_record_reply(void *io, const ProtobufCMessage *reply) {
  extproc_harness *h = io;
  if (h->reply_count == h->reply_cap) {
    const size_t cap = h->reply_cap ? h->reply_cap * 2 : 8;
    stored_reply *grown = realloc(h->replies, cap * sizeof(*grown));
    if (!grown) return EXTPROC_ENOMEM;
    h->replies = grown;
    h->reply_cap = cap;
  }
  /* Through the wire format, exactly as Envoy would receive it. */
  const size_t len = protobuf_c_message_get_packed_size(reply);
  uint8_t *buf = malloc(len ? len : 1);
  if (!buf) return EXTPROC_ENOMEM;
  protobuf_c_message_pack(reply, buf);
  stored_reply *s = &h->replies[h->reply_count];
  memset(s, 0, sizeof(*s));
  s->msg = envoy__service__ext_proc__v3__processing_response__unpack(NULL, len, buf);
  free(buf);
  if (!s->msg) return EXTPROC_ENOMEM;
  h->reply_count++;
  if (!record_reply(h, s)) h->failed_to_record = true;
  if (s->pub.kind == EXTPROC_HARNESS_IMMEDIATE) {
    h->has_immediate = true;
    h->immediate_index = h->reply_count - 1;
  }
  return 0;
}

void harness_record_finish(void *io, uint32_t status, const char *message) {
  extproc_harness *h = io;
  h->ended = true;
  h->status = status;
  h->message = strdup(message ? message : "");
}

void harness_replies_free(extproc_harness *h) {
  for (size_t i = 0; i < h->reply_count; i++) {
    stored_reply *s = &h->replies[i];
    for (size_t k = 0; k < s->pub.header_write_count; k++)
      free((char *)s->writes[k].value);
    free(s->writes);
    envoy__service__ext_proc__v3__processing_response__free_unpacked(s->msg, NULL);
  }
  free(h->replies);
  free(h->message);
}

/* ---- Inspection ------------------------------------------------------------------------ */

size_t extproc_harness_reply_count(const extproc_harness *h) { return h ? h->reply_count : 0; }

const extproc_harness_reply *extproc_harness_reply_at(const extproc_harness *h, size_t index) {
  return (h && index < h->reply_count) ? &h->replies[index].pub : NULL;
}

const extproc_harness_reply *extproc_harness_last_reply(const extproc_harness *h) {
  if (!h || h->reply_count == h->replies_before_send) return NULL;
  return &h->replies[h->reply_count - 1].pub;
}

const extproc_value *extproc_harness_reply_metadata(const extproc_harness_reply *r,
                                                    const char *ns) {
  if (!r || !ns) return NULL;
  /* pub is the first member of stored_reply, so the reply leads back to its message. */
  const stored_reply *s = (const stored_reply *)r;
  const Google__Protobuf__Struct *md = s->msg->dynamic_metadata;
  for (size_t i = 0; md && i < md->n_fields; i++)
    if (strcmp(md->fields[i]->key, ns) == 0) return (const extproc_value *)md->fields[i]->value;
  return NULL;
}

const char *extproc_harness_reply_header(const extproc_harness_reply *r, const char *name) {
  const char *found = NULL;
  for (size_t i = 0; r && name && i < r->header_write_count; i++)
    if (header_name_equal(r->header_writes[i].name, name)) found = r->header_writes[i].value;
  return found;
}

bool extproc_harness_stream_ended(const extproc_harness *h, uint32_t *grpc_status,
                                  const char **grpc_message) {
  if (!h || !h->ended) return false;
  if (grpc_status) *grpc_status = h->status;
  if (grpc_message) *grpc_message = h->message ? h->message : "";
  return true;
}

const extproc_harness_reply *extproc_harness_immediate_response(const extproc_harness *h) {
  return (h && h->has_immediate) ? &h->replies[h->immediate_index].pub : NULL;
}
