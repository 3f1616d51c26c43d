/* Builds the ProcessingResponse for the message being processed, from the edits a callback
 * recorded. Everything is allocated in the message arena. The reply's type always matches the
 * phase Envoy sent (or is an immediate response), which is what keeps Envoy from calling it
 * spurious. */
#include <string.h>

#include "api/headers.h"
#include "api/processor.h"
#include "engine/stream.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
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
  if (!edits->head) return NULL;
  HeaderMutation *m = arena_alloc(a, sizeof(*m));
  HeaderValueOption **sets = arena_alloc(a, edits->sets * sizeof(*sets));
  HeaderValueOption *opts = arena_alloc(a, edits->sets * sizeof(*opts));
  char **removes = arena_alloc(a, edits->removes * sizeof(*removes));
  if (!m || !sets || !opts || !removes) {
    *ok = false;
    return NULL;
  }
  envoy__service__ext_proc__v3__header_mutation__init(m);
  for (const header_edit *e = edits->head; e; e = e->next) {
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
  c->header_mutation = build_mutation(a, &req->edits, ok);
  if (!*ok) return NULL;
  if (req->body_op != BODY_KEEP) {
    Envoy__Service__ExtProc__V3__BodyMutation *bm = arena_alloc(a, sizeof(*bm));
    if (!bm) {
      *ok = false;
      return NULL;
    }
    envoy__service__ext_proc__v3__body_mutation__init(bm);
    if (req->body_op == BODY_CLEAR) {
      bm->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY;
      bm->clear_body = true;
    } else {
      bm->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY;
      bm->body.data = req->body_data;
      bm->body.len = req->body_data_len;
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
  status->code = (Envoy__Type__V3__StatusCode)req->immediate_status;
  im->status = status;
  bool ok;
  im->headers = build_mutation(a, &req->immediate_headers, &ok);
  if (!ok) return NULL;
  im->body.data = req->immediate_body;
  im->body.len = req->immediate_body_len;
  if (req->immediate_has_grpc_status) {
    Envoy__Service__ExtProc__V3__GrpcStatus *gs = arena_alloc(a, sizeof(*gs));
    if (!gs) return NULL;
    envoy__service__ext_proc__v3__grpc_status__init(gs);
    gs->status = req->immediate_grpc_status;
    im->grpc_status = gs;
  }
  im->details = req->immediate_details ? req->immediate_details : (char *)"";
  r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE;
  r->immediate_response = im;
  return &r->base;
}

/* The chain header: this processor's name first, then what earlier processors wrote (read from
 * the response Envoy sent, so a client cannot forge it). */
static bool add_chain_header(extproc_request *req) {
  const char *header = req->proc->chain_header, *name = req->proc->name;
  if (!header) return true;
  if (req->immediate)
    return header_edits_add(&req->msg_arena, &req->immediate_headers, HEADER_SET, header, name) ==
           0;
  if (req->phase != EXTPROC_RESPONSE_HEADERS) return true;
  const char *earlier = extproc_header_get(req, header);
  if (!earlier || !*earlier)
    return header_edits_add(&req->msg_arena, &req->edits, HEADER_SET, header, name) == 0;
  const size_t name_len = strlen(name), earlier_len = strlen(earlier);
  char *value = arena_alloc(&req->msg_arena, name_len + 1 + earlier_len + 1);
  if (!value) return false;
  memcpy(value, name, name_len);
  value[name_len] = ',';
  memcpy(value + name_len + 1, earlier, earlier_len + 1);
  return header_edits_add(&req->msg_arena, &req->edits, HEADER_SET, header, value) == 0;
}

ProtobufCMessage *reply_build(extproc_request *req) {
  arena *a = &req->msg_arena;
  if (!add_chain_header(req)) return NULL;
  ProcessingResponse *r = arena_alloc(a, sizeof(*r));
  if (!r) return NULL;
  envoy__service__ext_proc__v3__processing_response__init(r);
  if (req->immediate) return build_immediate(req, r);

  bool ok = true;
  if (req->phase == EXTPROC_REQUEST_TRAILERS || req->phase == EXTPROC_RESPONSE_TRAILERS) {
    Envoy__Service__ExtProc__V3__TrailersResponse *t = arena_alloc(a, sizeof(*t));
    if (!t) return NULL;
    envoy__service__ext_proc__v3__trailers_response__init(t);
    t->header_mutation = build_mutation(a, &req->edits, &ok);
    if (!ok) return NULL;
    if (req->phase == EXTPROC_REQUEST_TRAILERS) {
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
  if (req->phase == EXTPROC_REQUEST_HEADERS || req->phase == EXTPROC_RESPONSE_HEADERS) {
    Envoy__Service__ExtProc__V3__HeadersResponse *h = arena_alloc(a, sizeof(*h));
    if (!h) return NULL;
    envoy__service__ext_proc__v3__headers_response__init(h);
    h->response = common;
    if (req->phase == EXTPROC_REQUEST_HEADERS) {
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
  Envoy__Service__ExtProc__V3__BodyResponse *b = arena_alloc(a, sizeof(*b));
  if (!b) return NULL;
  envoy__service__ext_proc__v3__body_response__init(b);
  b->response = common;
  if (req->phase == EXTPROC_REQUEST_BODY) {
    r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY;
    r->request_body = b;
  } else {
    r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY;
    r->response_body = b;
  }
  return &r->base;
}

ProtobufCMessage *reply_build_error(extproc_request *req, uint32_t http_status) {
  req->edits = (header_edits){0};
  req->immediate_headers = (header_edits){0};
  req->body_op = BODY_KEEP;
  req->immediate = true;
  req->immediate_status = http_status;
  req->immediate_body = NULL;
  req->immediate_body_len = 0;
  req->immediate_has_grpc_status = false;
  req->immediate_details = (char *)"ext_proc_callback_failed";
  return reply_build(req);
}
