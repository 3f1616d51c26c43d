/* Builds the ProcessingResponse for the message being processed, from the edits a callback
 * recorded. Everything is allocated in the message arena. The reply's type always matches the
 * phase Envoy sent (or is an immediate response), which is what keeps Envoy from calling it
 * spurious. */
#include <stdio.h>
#include <string.h>

#include "engine/request.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Service__ExtProc__V3__CommonResponse CommonResponse;
typedef Envoy__Service__ExtProc__V3__HeaderMutation HeaderMutation;
typedef Envoy__Config__Core__V3__HeaderValueOption HeaderValueOption;
typedef Envoy__Config__Core__V3__HeaderValue HeaderValue;

/* The legacy `append` flag and `append_action` always say the same thing, so every data plane
 * reads the same intent whichever field it honours. */
static bool fill_option(arena *a, HeaderValueOption *opt, const header_edit *e) {
  envoy__config__core__v3__header_value_option__init(opt);
  HeaderValue *hv = arena_alloc(a, sizeof(*hv));
  Google__Protobuf__BoolValue *append = arena_alloc(a, sizeof(*append));
  if (!hv || !append) return false;
  envoy__config__core__v3__header_value__init(hv);
  google__protobuf__bool_value__init(append);
  hv->key = e->name;
  /* raw_value only: Envoy rejects a header with both value and raw_value set. */
  hv->raw_value.data = (uint8_t *)e->value;
  hv->raw_value.len = e->value_len;
  opt->header = hv;
  opt->append = append;
  switch (e->op) {
  case HEADER_APPEND:
    append->value = true;
    opt->append_action =
        ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__APPEND_IF_EXISTS_OR_ADD;
    break;
  case HEADER_ADD_IF_ABSENT:
    /* Only recorded when the header was absent, so "add" and "overwrite" agree. */
    append->value = false;
    opt->append_action =
        ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__ADD_IF_ABSENT;
    break;
  default:
    append->value = false;
    opt->append_action =
        ENVOY__CONFIG__CORE__V3__HEADER_VALUE_OPTION__HEADER_APPEND_ACTION__OVERWRITE_IF_EXISTS_OR_ADD;
    break;
  }
  /* An empty value is a deliberate write, not a removal. */
  opt->keep_empty_value = e->value_len == 0;
  return true;
}

/* Returns the mutation for `edits`; NULL (no mutation) when there are none or on
 * out-of-memory, which *ok reports. */
static HeaderMutation *build_mutation(arena *a, const header_edits *edits, bool *ok) {
  *ok = true;
  if (queue_empty(&edits->items)) return NULL;
  HeaderMutation *m = arena_alloc(a, sizeof(*m));
  HeaderValueOption **sets = arena_alloc(a, edits->sets * sizeof(*sets));
  HeaderValueOption *opts = arena_alloc(a, edits->sets * sizeof(*opts));
  char **removes = arena_alloc(a, edits->removes * sizeof(*removes));
  if (!m || !sets || !opts || !removes) {
    *ok = false;
    return NULL;
  }
  envoy__service__ext_proc__v3__header_mutation__init(m);
  for (const queue_link *l = edits->items.head; l; l = l->next) {
    const header_edit *e = header_edit_of(l);
    if (e->op == HEADER_REMOVE) {
      removes[m->n_remove_headers++] = e->name;
      continue;
    }
    HeaderValueOption *opt = &opts[m->n_set_headers];
    if (!fill_option(a, opt, e)) {
      *ok = false;
      return NULL;
    }
    sets[m->n_set_headers++] = opt;
  }
  m->set_headers = sets;
  m->remove_headers = removes;
  return m;
}

static CommonResponse *build_common(extproc_request *req, bool *ok) {
  arena *a = &req->msg_arena;
  CommonResponse *c = arena_alloc(a, sizeof(*c));
  if (!c) {
    *ok = false;
    return NULL;
  }
  envoy__service__ext_proc__v3__common_response__init(c);
  c->header_mutation = build_mutation(a, &req->reply.edits, ok);
  if (!*ok) return NULL;
  c->clear_route_cache = req->reply.clear_route_cache;
  /* A body written in a headers phase replaces the whole body: CONTINUE_AND_REPLACE. */
  const bool headers_phase =
      req->msg.phase == EXTPROC_REQUEST_HEADERS || req->msg.phase == EXTPROC_RESPONSE_HEADERS;
  if (headers_phase && req->reply.body_op != BODY_KEEP)
    c->status =
        ENVOY__SERVICE__EXT_PROC__V3__COMMON_RESPONSE__RESPONSE_STATUS__CONTINUE_AND_REPLACE;
  if (req->reply.body_op != BODY_KEEP) {
    Envoy__Service__ExtProc__V3__BodyMutation *bm = arena_alloc(a, sizeof(*bm));
    if (!bm) {
      *ok = false;
      return NULL;
    }
    envoy__service__ext_proc__v3__body_mutation__init(bm);
    if (req->reply.body_op == BODY_CLEAR) {
      bm->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY;
      bm->clear_body = true;
    } else {
      bm->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY;
      bm->body.data = req->reply.body_data;
      bm->body.len = req->reply.body_data_len;
    }
    c->body_mutation = bm;
  }
  return c;
}

static ProtobufCMessage *build_immediate(extproc_request *req, ProcessingResponse *r) {
  arena *a = &req->msg_arena;
  Envoy__Service__ExtProc__V3__ImmediateResponse *im = arena_alloc(a, sizeof(*im));
  Envoy__Type__V3__HttpStatus *status = arena_alloc(a, sizeof(*status));
  if (!im || !status) return NULL;
  envoy__service__ext_proc__v3__immediate_response__init(im);
  envoy__type__v3__http_status__init(status);
  status->code = (Envoy__Type__V3__StatusCode)req->reply.immediate_status;
  im->status = status;
  bool ok;
  im->headers = build_mutation(a, &req->reply.immediate_headers, &ok);
  if (!ok) return NULL;
  im->body.data = req->reply.immediate_body;
  im->body.len = req->reply.immediate_body_len;
  if (req->reply.immediate_has_grpc_status) {
    Envoy__Service__ExtProc__V3__GrpcStatus *gs = arena_alloc(a, sizeof(*gs));
    if (!gs) return NULL;
    envoy__service__ext_proc__v3__grpc_status__init(gs);
    gs->status = req->reply.immediate_grpc_status;
    im->grpc_status = gs;
  }
  im->details = req->reply.immediate_details ? req->reply.immediate_details : (char *)"";
  r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE;
  r->immediate_response = im;
  return &r->base;
}

/* The chain header: this processor's name first, then what earlier processors wrote (read from
 * the response Envoy sent, so a client cannot forge it). */
static bool add_chain_header(extproc_request *req) {
  const char *header = req->proc->chain_header, *name = req->proc->name;
  if (!header) return true;
  if (req->reply.immediate)
    return header_edits_add(&req->msg_arena, &req->reply.immediate_headers, HEADER_SET, header,
                            name) == 0;
  if (req->msg.phase != EXTPROC_RESPONSE_HEADERS) return true;
  const char *earlier = headers_find(req->msg.headers, req->msg.header_count, header);
  if (!earlier || !*earlier)
    return header_edits_add(&req->msg_arena, &req->reply.edits, HEADER_SET, header, name) == 0;
  const size_t name_len = strlen(name), earlier_len = strlen(earlier);
  char *value = arena_alloc(&req->msg_arena, name_len + 1 + earlier_len + 1);
  if (!value) return false;
  memcpy(value, name, name_len);
  value[name_len] = ',';
  memcpy(value + name_len + 1, earlier, earlier_len + 1);
  return header_edits_add(&req->msg_arena, &req->reply.edits, HEADER_SET, header, value) == 0;
}

static Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *
build_mode(arena *a, const extproc_processing_mode *m) {
  Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *pm = arena_alloc(a, sizeof(*pm));
  if (!pm) return NULL;
  envoy__extensions__filters__http__ext_proc__v3__processing_mode__init(pm);
  pm->request_header_mode = (int)m->request_header_mode;
  pm->response_header_mode = (int)m->response_header_mode;
  pm->request_body_mode = m->request_body_mode < 0 ? 0 : (int)m->request_body_mode;
  pm->response_body_mode = m->response_body_mode < 0 ? 0 : (int)m->response_body_mode;
  pm->request_trailer_mode = (int)m->request_trailer_mode;
  pm->response_trailer_mode = (int)m->response_trailer_mode;
  return pm;
}

/* A ProcessingResponse carrying what any reply of this message may carry: dynamic metadata
 * (on every reply, so it is never lost) and the mode override. */
static ProcessingResponse *new_response(extproc_request *req) {
  ProcessingResponse *r = arena_alloc(&req->msg_arena, sizeof(*r));
  if (!r) return NULL;
  envoy__service__ext_proc__v3__processing_response__init(r);
  r->dynamic_metadata = req->reply.dynamic_metadata;
  if (req->reply.has_mode_override &&
      !(r->mode_override = build_mode(&req->msg_arena, &req->reply.mode_override)))
    return NULL;
  return r;
}

/* Wraps `common` in the BodyResponse answering the current body phase. */
static ProtobufCMessage *attach_body_response(extproc_request *req, ProcessingResponse *r,
                                              CommonResponse *common) {
  Envoy__Service__ExtProc__V3__BodyResponse *b = arena_alloc(&req->msg_arena, sizeof(*b));
  if (!b) return NULL;
  envoy__service__ext_proc__v3__body_response__init(b);
  b->response = common;
  if (req->msg.phase == EXTPROC_REQUEST_BODY) {
    r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY;
    r->request_body = b;
  } else {
    r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY;
    r->response_body = b;
  }
  return &r->base;
}

ProtobufCMessage *reply_build(extproc_request *req) {
  arena *a = &req->msg_arena;
  if (!add_chain_header(req)) return NULL;
  ProcessingResponse *r = new_response(req);
  if (!r) return NULL;
  if (req->reply.immediate) return build_immediate(req, r);

  bool ok = true;
  if (req->msg.phase == EXTPROC_REQUEST_TRAILERS || req->msg.phase == EXTPROC_RESPONSE_TRAILERS) {
    Envoy__Service__ExtProc__V3__TrailersResponse *t = arena_alloc(a, sizeof(*t));
    if (!t) return NULL;
    envoy__service__ext_proc__v3__trailers_response__init(t);
    t->header_mutation = build_mutation(a, &req->reply.edits, &ok);
    if (!ok) return NULL;
    if (req->msg.phase == EXTPROC_REQUEST_TRAILERS) {
      r->response_case =
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS;
      r->request_trailers = t;
    } else {
      r->response_case =
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS;
      r->response_trailers = t;
    }
    return &r->base;
  }

  CommonResponse *common = build_common(req, &ok);
  if (!ok) return NULL;
  /* HeadersResponse and BodyResponse share one layout: a single CommonResponse. */
  if (req->msg.phase == EXTPROC_REQUEST_HEADERS || req->msg.phase == EXTPROC_RESPONSE_HEADERS) {
    Envoy__Service__ExtProc__V3__HeadersResponse *h = arena_alloc(a, sizeof(*h));
    if (!h) return NULL;
    envoy__service__ext_proc__v3__headers_response__init(h);
    h->response = common;
    if (req->msg.phase == EXTPROC_REQUEST_HEADERS) {
      r->response_case =
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS;
      r->request_headers = h;
    } else {
      r->response_case =
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS;
      r->response_headers = h;
    }
    return &r->base;
  }
  return attach_body_response(req, r, common);
}

static Envoy__Service__ExtProc__V3__StreamedBodyResponse *
build_streamed_body(arena *a, const streamed_piece *piece) {
  Envoy__Service__ExtProc__V3__StreamedBodyResponse *sb = arena_alloc(a, sizeof(*sb));
  if (!sb) return NULL;
  envoy__service__ext_proc__v3__streamed_body_response__init(sb);
  sb->body.data = (uint8_t *)piece->data;
  sb->body.len = piece->len;
  sb->end_of_stream = piece->end_of_stream;
  return sb;
}

ProtobufCMessage *reply_build_streamed_body(extproc_request *req, const streamed_piece *piece) {
  arena *a = &req->msg_arena;
  ProcessingResponse *r = new_response(req);
  Envoy__Service__ExtProc__V3__CommonResponse *c = arena_alloc(a, sizeof(*c));
  Envoy__Service__ExtProc__V3__BodyMutation *bm = arena_alloc(a, sizeof(*bm));
  if (!r || !c || !bm) return NULL;
  envoy__service__ext_proc__v3__common_response__init(c);
  envoy__service__ext_proc__v3__body_mutation__init(bm);
  bm->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE;
  if (!(bm->streamed_response = build_streamed_body(a, piece))) return NULL;
  c->body_mutation = bm;
  return attach_body_response(req, r, c);
}

static ProcessingResponse *
new_streamed_immediate(extproc_request *req,
                       Envoy__Service__ExtProc__V3__StreamedImmediateResponse **out) {
  ProcessingResponse *r = new_response(req);
  Envoy__Service__ExtProc__V3__StreamedImmediateResponse *s =
      arena_alloc(&req->msg_arena, sizeof(*s));
  if (!r || !s) return NULL;
  envoy__service__ext_proc__v3__streamed_immediate_response__init(s);
  r->response_case =
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_STREAMED_IMMEDIATE_RESPONSE;
  r->streamed_immediate_response = s;
  *out = s;
  return r;
}

/* Immediate-response headers have overwrite semantics: a later set of the same name wins. */
static bool overwritten_later(const header_edit *e) {
  for (const queue_link *l = e->link.next; l; l = l->next) {
    const header_edit *later = header_edit_of(l);
    if (later->op != HEADER_REMOVE && strcmp(later->name, e->name) == 0) return true;
  }
  return false;
}

ProtobufCMessage *reply_build_streamed_immediate_headers(extproc_request *req, bool end_of_stream) {
  arena *a = &req->msg_arena;
  if (!add_chain_header(req)) return NULL;
  Envoy__Service__ExtProc__V3__StreamedImmediateResponse *s;
  ProcessingResponse *r = new_streamed_immediate(req, &s);
  Envoy__Service__ExtProc__V3__HttpHeaders *h = arena_alloc(a, sizeof(*h));
  Envoy__Config__Core__V3__HeaderMap *map = arena_alloc(a, sizeof(*map));
  const size_t n = 1 + req->reply.immediate_headers.sets;
  HeaderValue **values = arena_alloc(a, n * sizeof(*values));
  HeaderValue *storage = arena_alloc(a, n * sizeof(*storage));
  char *status = arena_alloc(a, 12);
  if (!r || !h || !map || !values || !storage || !status) return NULL;
  envoy__service__ext_proc__v3__http_headers__init(h);
  envoy__config__core__v3__header_map__init(map);
  snprintf(status, 12, "%u", req->reply.immediate_status);
  size_t i = 0;
  envoy__config__core__v3__header_value__init(&storage[i]);
  storage[i].key = (char *)":status";
  storage[i].raw_value.data = (uint8_t *)status;
  storage[i].raw_value.len = strlen(status);
  values[i] = &storage[i];
  for (const queue_link *l = req->reply.immediate_headers.items.head; l; l = l->next) {
    const header_edit *e = header_edit_of(l);
    if (e->op == HEADER_REMOVE || overwritten_later(e)) continue;
    i++;
    envoy__config__core__v3__header_value__init(&storage[i]);
    storage[i].key = e->name;
    storage[i].raw_value.data = (uint8_t *)e->value;
    storage[i].raw_value.len = e->value_len;
    values[i] = &storage[i];
  }
  map->n_headers = i + 1;
  map->headers = values;
  h->headers = map;
  h->end_of_stream = end_of_stream;
  s->response_case =
      ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_HEADERS_RESPONSE;
  s->headers_response = h;
  return &r->base;
}

ProtobufCMessage *reply_build_streamed_immediate_body(extproc_request *req,
                                                      const streamed_piece *piece) {
  Envoy__Service__ExtProc__V3__StreamedImmediateResponse *s;
  ProcessingResponse *r = new_streamed_immediate(req, &s);
  if (!r || !(s->body_response = build_streamed_body(&req->msg_arena, piece))) return NULL;
  s->response_case =
      ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_BODY_RESPONSE;
  return &r->base;
}

ProtobufCMessage *reply_build_timeout_override(extproc_request *req, uint32_t ms) {
  ProcessingResponse *r = arena_alloc(&req->msg_arena, sizeof(*r));
  Google__Protobuf__Duration *d = arena_alloc(&req->msg_arena, sizeof(*d));
  if (!r || !d) return NULL;
  envoy__service__ext_proc__v3__processing_response__init(r);
  google__protobuf__duration__init(d);
  d->seconds = ms / 1000;
  d->nanos = (int32_t)(ms % 1000) * 1000000;
  r->override_message_timeout = d;
  return &r->base;
}

ProtobufCMessage *reply_build_error(extproc_request *req, uint32_t http_status) {
  /* Whatever the failed callback recorded is dropped; only dynamic metadata and the failure
   * itself survive. */
  req->reply = (reply_draft){.fail_code = req->reply.fail_code,
                             .fail_message = req->reply.fail_message,
                             .dynamic_metadata = req->reply.dynamic_metadata,
                             .immediate = true,
                             .immediate_status = http_status,
                             .immediate_details = (char *)"ext_proc_callback_failed"};
  return reply_build(req);
}

ProtobufCMessage *reply_build_deadline(arena *a, const extproc_processor *proc,
                                       uint32_t http_status) {
  ProcessingResponse *r = arena_alloc(a, sizeof(*r));
  Envoy__Service__ExtProc__V3__ImmediateResponse *im = arena_alloc(a, sizeof(*im));
  Envoy__Type__V3__HttpStatus *status = arena_alloc(a, sizeof(*status));
  if (!r || !im || !status) return NULL;
  envoy__service__ext_proc__v3__processing_response__init(r);
  envoy__service__ext_proc__v3__immediate_response__init(im);
  envoy__type__v3__http_status__init(status);
  status->code = (Envoy__Type__V3__StatusCode)http_status;
  im->status = status;
  im->details = (char *)"ext_proc_callback_deadline_exceeded";
  if (proc->chain_header) { /* as every immediate response: this processor's name alone */
    header_edits edits = {0};
    bool ok;
    if (header_edits_add(a, &edits, HEADER_SET, proc->chain_header, proc->name) != 0) return NULL;
    im->headers = build_mutation(a, &edits, &ok);
    if (!ok) return NULL;
  }
  r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE;
  r->immediate_response = im;
  return &r->base;
}
