/* The messages Envoy sends (see envoy_request.h). */
#include "testing/envoy_request.h"

#include <string.h>

typedef Envoy__Service__ExtProc__V3__ProcessingRequest__AttributesEntry AttributesEntry;
typedef Envoy__Config__Core__V3__Metadata__FilterMetadataEntry FilterMetadataEntry;

Envoy__Config__Core__V3__HeaderMap *envoy_header_map(arena *a, const char *const *pairs, size_t n) {
  Envoy__Config__Core__V3__HeaderMap *map = arena_alloc(a, sizeof(*map));
  Envoy__Config__Core__V3__HeaderValue *hv = arena_alloc(a, n * sizeof(*hv));
  Envoy__Config__Core__V3__HeaderValue **hvp = arena_alloc(a, n * sizeof(*hvp));
  if (!map || !hv || !hvp) return NULL;
  envoy__config__core__v3__header_map__init(map);
  for (size_t i = 0; i < n; i++) {
    envoy__config__core__v3__header_value__init(&hv[i]);
    hv[i].key = (char *)pairs[2 * i];
    hv[i].raw_value.data = (uint8_t *)pairs[2 * i + 1];
    hv[i].raw_value.len = strlen(pairs[2 * i + 1]);
    hvp[i] = &hv[i];
  }
  map->n_headers = n;
  map->headers = hvp;
  return map;
}

envoy_request *envoy_request_new(arena *a) {
  envoy_request *m = arena_alloc(a, sizeof(*m));
  if (m) envoy__service__ext_proc__v3__processing_request__init(m);
  return m;
}

/* A ProcessingRequest for `phase`, carrying the one of `hh`, `hb` and `ht` that fits it. */
static envoy_request *request_for(arena *a, extproc_phase phase,
                                  Envoy__Service__ExtProc__V3__HttpHeaders *hh,
                                  Envoy__Service__ExtProc__V3__HttpBody *hb,
                                  Envoy__Service__ExtProc__V3__HttpTrailers *ht) {
  envoy_request *m = envoy_request_new(a);
  if (!m) return NULL;
  switch (phase) {
  case EXTPROC_REQUEST_HEADERS:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
    m->request_headers = hh;
    break;
  case EXTPROC_REQUEST_BODY:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY;
    m->request_body = hb;
    break;
  case EXTPROC_REQUEST_TRAILERS:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_TRAILERS;
    m->request_trailers = ht;
    break;
  case EXTPROC_RESPONSE_HEADERS:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS;
    m->response_headers = hh;
    break;
  case EXTPROC_RESPONSE_BODY:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY;
    m->response_body = hb;
    break;
  default:
    m->request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_TRAILERS;
    m->response_trailers = ht;
    break;
  }
  return m;
}

envoy_request *envoy_request_headers(arena *a, extproc_phase phase, const char *const *pairs,
                                     size_t n, bool end_of_stream) {
  if (phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY ||
      (unsigned)phase >= EXTPROC_PHASE_COUNT)
    return NULL;
  Envoy__Config__Core__V3__HeaderMap *map = envoy_header_map(a, pairs, n);
  if (!map) return NULL;
  if (phase == EXTPROC_REQUEST_TRAILERS || phase == EXTPROC_RESPONSE_TRAILERS) {
    Envoy__Service__ExtProc__V3__HttpTrailers *ht = arena_alloc(a, sizeof(*ht));
    if (!ht) return NULL;
    envoy__service__ext_proc__v3__http_trailers__init(ht);
    ht->trailers = map;
    return request_for(a, phase, NULL, NULL, ht);
  }
  Envoy__Service__ExtProc__V3__HttpHeaders *hh = arena_alloc(a, sizeof(*hh));
  if (!hh) return NULL;
  envoy__service__ext_proc__v3__http_headers__init(hh);
  hh->headers = map;
  hh->end_of_stream = end_of_stream;
  return request_for(a, phase, hh, NULL, NULL);
}

envoy_request *envoy_request_body(arena *a, extproc_phase phase, const void *data, size_t len,
                                  bool end_of_stream) {
  if (phase != EXTPROC_REQUEST_BODY && phase != EXTPROC_RESPONSE_BODY) return NULL;
  Envoy__Service__ExtProc__V3__HttpBody *hb = arena_alloc(a, sizeof(*hb));
  if (!hb) return NULL;
  envoy__service__ext_proc__v3__http_body__init(hb);
  hb->body.data = (uint8_t *)data;
  hb->body.len = len;
  hb->end_of_stream = end_of_stream;
  return request_for(a, phase, NULL, hb, NULL);
}

bool envoy_request_set_protocol_config(arena *a, envoy_request *m,
                                       extproc_body_mode request_body_mode,
                                       extproc_body_mode response_body_mode) {
  Envoy__Service__ExtProc__V3__ProtocolConfiguration *pc = arena_alloc(a, sizeof(*pc));
  if (!pc) return false;
  envoy__service__ext_proc__v3__protocol_configuration__init(pc);
  pc->request_body_mode = (int)request_body_mode;
  pc->response_body_mode = (int)response_body_mode;
  m->protocol_config = pc;
  return true;
}

/* A google.protobuf.Struct of the `n` string fields keys[index[i]] = values[index[i]]. */
static Google__Protobuf__Struct *string_struct(arena *a, const char *const *keys,
                                               const char *const *values, const size_t *index,
                                               size_t n) {
  Google__Protobuf__Struct *s = arena_alloc(a, sizeof(*s));
  Google__Protobuf__Struct__FieldsEntry **fields = arena_alloc(a, n * sizeof(*fields));
  if (!s || !fields) return NULL;
  google__protobuf__struct__init(s);
  for (size_t i = 0; i < n; i++) {
    Google__Protobuf__Struct__FieldsEntry *e = arena_alloc(a, sizeof(*e));
    Google__Protobuf__Value *v = arena_alloc(a, sizeof(*v));
    if (!e || !v) return NULL;
    google__protobuf__struct__fields_entry__init(e);
    google__protobuf__value__init(v);
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v->string_value = (char *)values[index[i]];
    e->key = (char *)keys[index[i]];
    e->value = v;
    fields[i] = e;
  }
  s->n_fields = n;
  s->fields = fields;
  return s;
}

bool envoy_request_set_attributes(arena *a, envoy_request *m, const char *const *keys,
                                  const char *const *values, size_t n) {
  if (n == 0) return true;
  size_t *index = arena_alloc(a, n * sizeof(*index));
  AttributesEntry *e = arena_alloc(a, sizeof(*e));
  AttributesEntry **entries = arena_alloc(a, sizeof(*entries));
  if (!index || !e || !entries) return false;
  for (size_t i = 0; i < n; i++)
    index[i] = i;
  envoy__service__ext_proc__v3__processing_request__attributes_entry__init(e);
  e->key = (char *)ENVOY_REQUEST_ATTRIBUTES_KEY;
  e->value = string_struct(a, keys, values, index, n);
  if (!e->value) return false;
  entries[0] = e;
  m->n_attributes = 1;
  m->attributes = entries;
  return true;
}

bool envoy_request_set_metadata(arena *a, envoy_request *m, const char *const *namespaces,
                                const char *const *keys, const char *const *values, size_t n) {
  if (n == 0) return true;
  Envoy__Config__Core__V3__Metadata *md = arena_alloc(a, sizeof(*md));
  FilterMetadataEntry **entries = arena_alloc(a, n * sizeof(*entries));
  size_t *index = arena_alloc(a, n * sizeof(*index));
  if (!md || !entries || !index) return false;
  envoy__config__core__v3__metadata__init(md);
  for (size_t i = 0; i < n; i++) {
    size_t seen = 0;
    while (seen < md->n_filter_metadata && strcmp(entries[seen]->key, namespaces[i]) != 0)
      seen++;
    if (seen < md->n_filter_metadata) continue; /* that namespace has its entry already */
    size_t count = 0;
    for (size_t k = i; k < n; k++)
      if (strcmp(namespaces[k], namespaces[i]) == 0) index[count++] = k;
    FilterMetadataEntry *e = arena_alloc(a, sizeof(*e));
    if (!e) return false;
    envoy__config__core__v3__metadata__filter_metadata_entry__init(e);
    e->key = (char *)namespaces[i];
    e->value = string_struct(a, keys, values, index, count);
    if (!e->value) return false;
    entries[md->n_filter_metadata++] = e;
  }
  md->filter_metadata = entries;
  m->metadata_context = md;
  return true;
}

uint8_t *envoy_request_encode(arena *a, const envoy_request *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(&m->base);
  uint8_t *buf = arena_alloc(a, *len);
  if (buf) protobuf_c_message_pack(&m->base, buf);
  return buf;
}

const char *envoy_response_case_name(int response_case) {
  switch (response_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS:
    return "request_headers";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS:
    return "response_headers";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY:
    return "request_body";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY:
    return "response_body";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS:
    return "request_trailers";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS:
    return "response_trailers";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE:
    return "immediate_response";
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_STREAMED_IMMEDIATE_RESPONSE:
    return "streamed_immediate_response";
  default: return "nothing";
  }
}
