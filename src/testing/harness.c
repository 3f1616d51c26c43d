/* The in-process testing harness: plays Envoy's side of one ext_proc stream against the real
 * engine, with messages encoded and decoded as on the wire. */
#include "extproc/testing.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/headers.h"
#include "engine/stream.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;
typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Service__ExtProc__V3__HeaderMutation HeaderMutation;

/* A header map the harness owns: what the upstream or the client would see. */
typedef struct header_list {
  char **names, **values;
  size_t count, cap;
} header_list;

typedef struct stored_reply {
  extproc_harness_reply pub;
  ProcessingResponse *msg; /* owns the strings pub points into */
  extproc_harness_header_write *writes;
} stored_reply;

/* String entries for attributes and metadata, kept until sent. */
typedef struct kv_list {
  char **ns, **keys, **values; /* ns unused for attributes */
  size_t count;
} kv_list;

struct extproc_harness {
  const extproc_processor *proc;
  extproc_request *req;
  bool observability_mode;
  uint32_t timeout_ms;
  stored_reply *replies;
  size_t reply_count, reply_cap;
  size_t replies_before_send; /* reply_count when the last message was sent */
  bool ended;
  uint32_t status;
  char *message;
  header_list upstream, client;
  size_t immediate_index; /* valid when has_immediate */
  bool has_immediate;
  bool send_protocol_config, protocol_config_sent;
  extproc_body_mode protocol_request_mode, protocol_response_mode;
  kv_list attributes;    /* sent with the next message, then cleared */
  kv_list metadata;      /* sent with every message */
  bool failed_to_record; /* out of memory while recording a reply */

  pthread_mutex_t lock; /* guards `posted`: deferred phases come back from any thread */
  pthread_cond_t cond;
  extproc_request *posted;
  size_t deferred;
  bool orphaned; /* freed by the test while a phase was deferred */
};

/* ---- Header lists ---------------------------------------------------------------------- */

static void list_clear(header_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->names[i]);
    free(l->values[i]);
  }
  l->count = 0;
}

static void list_free(header_list *l) {
  list_clear(l);
  free(l->names);
  free(l->values);
}

static bool list_add(header_list *l, const char *name, const char *value) {
  if (l->count == l->cap) {
    const size_t cap = l->cap ? l->cap * 2 : 16;
    char **n = realloc(l->names, cap * sizeof(*n));
    if (!n) return false;
    l->names = n;
    char **v = realloc(l->values, cap * sizeof(*v));
    if (!v) return false;
    l->values = v;
    l->cap = cap;
  }
  char *nc = strdup(name), *vc = strdup(value);
  if (!nc || !vc) {
    free(nc);
    free(vc);
    return false;
  }
  l->names[l->count] = nc;
  l->values[l->count++] = vc;
  return true;
}

static void list_remove(header_list *l, const char *name) {
  size_t kept = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (header_name_equal(l->names[i], name)) {
      free(l->names[i]);
      free(l->values[i]);
      continue;
    }
    l->names[kept] = l->names[i];
    l->values[kept++] = l->values[i];
  }
  l->count = kept;
}

static size_t list_get_all(const header_list *l, const char *name, const char **values,
                           size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (!header_name_equal(l->names[i], name)) continue;
    if (values && n < max) values[n] = l->values[i];
    n++;
  }
  return n;
}

/* Applies one HeaderValueOption as Envoy's ext_proc filter does: the legacy `append` flag,
 * when present, decides between adding and overwriting; otherwise append_action does. */
static bool list_apply(header_list *l, const extproc_harness_header_write *w, bool has_append) {
  const bool exists = list_get_all(l, w->name, NULL, 0) > 0;
  enum { APPEND = 0, ADD_IF_ABSENT = 1, OVERWRITE_OR_ADD = 2, OVERWRITE_IF_EXISTS = 3 };
  int action = w->append_action;
  if (has_append && action != ADD_IF_ABSENT) action = w->append ? APPEND : OVERWRITE_OR_ADD;
  switch (action) {
  case ADD_IF_ABSENT: return exists || list_add(l, w->name, w->value);
  case OVERWRITE_IF_EXISTS:
    if (!exists) return true;
    /* fall through */
  case OVERWRITE_OR_ADD: list_remove(l, w->name); return list_add(l, w->name, w->value);
  default: return list_add(l, w->name, w->value);
  }
}

/* ---- Recording replies ----------------------------------------------------------------- */

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

static bool fill_writes(stored_reply *s, const HeaderMutation *m, header_list *view) {
  extproc_harness_reply *r = &s->pub;
  if (!m) return true;
  /* Envoy applies the removals first, then the writes. */
  for (size_t i = 0; view && i < m->n_remove_headers; i++)
    list_remove(view, m->remove_headers[i]);
  s->writes = calloc(m->n_set_headers ? m->n_set_headers : 1, sizeof(*s->writes));
  if (!s->writes) return false;
  for (size_t i = 0; i < m->n_set_headers; i++) {
    const Envoy__Config__Core__V3__HeaderValueOption *o = m->set_headers[i];
    extproc_harness_header_write *w = &s->writes[i];
    w->name = o->header && o->header->key ? o->header->key : "";
    w->value_field_set = o->header && o->header->value && o->header->value[0];
    w->append = o->append && o->append->value;
    w->append_action = (int)o->append_action;
    if (!copy_raw_value(w, o->header ? &o->header->raw_value : NULL)) return false;
    r->header_write_count = i + 1;
    if (view && !list_apply(view, w, o->append != NULL)) return false;
  }
  r->header_writes = s->writes;
  r->header_removes = (const char *const *)m->remove_headers;
  r->header_remove_count = m->n_remove_headers;
  return true;
}

static header_list *view_of(extproc_harness *h, extproc_phase phase) {
  if (phase == EXTPROC_REQUEST_TRAILERS || phase == EXTPROC_RESPONSE_TRAILERS) return NULL;
  return phase < EXTPROC_RESPONSE_HEADERS ? &h->upstream : &h->client;
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
    r->body = bm->body.data ? bm->body.data : (const uint8_t *)"";
    r->body_len = bm->body.len;
  } else if (bm && bm->mutation_case ==
                       ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY) {
    r->body_change = EXTPROC_HARNESS_BODY_CLEARED;
  } else if (bm && bm->mutation_case ==
                       ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE) {
    r->streamed_body = true;
    r->body =
        bm->streamed_response->body.data ? bm->streamed_response->body.data : (const uint8_t *)"";
    r->body_len = bm->streamed_response->body.len;
    r->end_of_stream = bm->streamed_response->end_of_stream;
  }
  return fill_writes(s, c->header_mutation, view_of(h, phase));
}

static void record_mode_override(extproc_harness_reply *r, const ProcessingResponse *m) {
  const Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *pm = m->mode_override;
  if (!pm) return;
  r->has_mode_override = true;
  r->mode_override = (extproc_processing_mode){(extproc_header_mode)pm->request_header_mode,
                                               (extproc_header_mode)pm->response_header_mode,
                                               (extproc_body_mode)pm->request_body_mode,
                                               (extproc_body_mode)pm->response_body_mode,
                                               (extproc_header_mode)pm->request_trailer_mode,
                                               (extproc_header_mode)pm->response_trailer_mode};
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
    r->body = si->body_response->body.data ? si->body_response->body.data : (const uint8_t *)"";
    r->body_len = si->body_response->body.len;
    r->end_of_stream = si->body_response->end_of_stream;
    return true;
  }
  if (si->response_case !=
      ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_HEADERS_RESPONSE)
    return true;
  /* The headers: the client's view becomes them; they read as header writes. */
  const Envoy__Config__Core__V3__HeaderMap *map = si->headers_response->headers;
  r->end_of_stream = si->headers_response->end_of_stream;
  list_clear(&h->client);
  const size_t n = map ? map->n_headers : 0;
  s->writes = calloc(n ? n : 1, sizeof(*s->writes));
  if (!s->writes) return false;
  for (size_t i = 0; i < n; i++) {
    extproc_harness_header_write *w = &s->writes[i];
    w->name = map->headers[i]->key ? map->headers[i]->key : "";
    if (!copy_raw_value(w, &map->headers[i]->raw_value)) return false;
    r->header_write_count = i + 1;
    if (strcmp(w->name, ":status") == 0)
      r->immediate_status = (uint32_t)strtoul(w->value, NULL, 10);
    if (!list_add(&h->client, w->name, w->value)) return false;
  }
  r->header_writes = s->writes;
  return true;
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
    return fill_writes(s, m->request_trailers->header_mutation, NULL);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS:
    r->phase = EXTPROC_RESPONSE_TRAILERS;
    return fill_writes(s, m->response_trailers->header_mutation, NULL);
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE: {
    const Envoy__Service__ExtProc__V3__ImmediateResponse *im = m->immediate_response;
    r->kind = EXTPROC_HARNESS_IMMEDIATE;
    r->phase = extproc_request_phase(h->req);
    r->immediate_status = im->status ? (uint32_t)im->status->code : 0;
    r->body = im->body.data ? im->body.data : (const uint8_t *)"";
    r->body_len = im->body.len;
    r->has_grpc_status = im->grpc_status != NULL;
    r->grpc_status = im->grpc_status ? im->grpc_status->status : 0;
    r->details = im->details ? im->details : "";
    /* The client gets the immediate response instead of whatever the upstream said. */
    list_clear(&h->client);
    char status[12];
    snprintf(status, sizeof(status), "%u", r->immediate_status);
    if (!list_add(&h->client, ":status", status)) return false;
    return fill_writes(s, im->headers, &h->client);
  }
  default: return true;
  }
}

static int harness_send(void *io, const ProtobufCMessage *reply) {
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

static void harness_finish(void *io, uint32_t status, const char *message) {
  extproc_harness *h = io;
  h->ended = true;
  h->status = status;
  h->message = strdup(message ? message : "");
}

static void harness_resumed(void *io) { (void)io; }

static const stream_sink harness_sink = {
    .send = harness_send, .finish = harness_finish, .resumed = harness_resumed};

static void harness_post(void *data, extproc_request *req) {
  extproc_harness *h = data;
  pthread_mutex_lock(&h->lock);
  if (h->orphaned) { /* freed while this phase was deferred: finish the request here */
    pthread_mutex_unlock(&h->lock);
    stream_resume_on_loop(req); /* the exchange is closed: this only frees the request */
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    free(h);
    return;
  }
  h->posted = req;
  pthread_cond_signal(&h->cond);
  pthread_mutex_unlock(&h->lock);
}

/* ---- Driving the exchange ------------------------------------------------------------- */

extproc_harness *extproc_harness_new(const extproc_processor *proc) {
  if (!proc) return NULL;
  extproc_harness *h = calloc(1, sizeof(*h));
  if (!h) return NULL;
  h->proc = proc;
  h->timeout_ms = 5000;
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->cond, NULL);
  const stream_poster poster = {.post = harness_post, .data = h, .deferred = &h->deferred};
  h->req = stream_open(proc, &harness_sink, h, &poster);
  if (!h->req) {
    free(h);
    return NULL;
  }
  return h;
}

void extproc_harness_set_observability_mode(extproc_harness *h, bool on) {
  if (h) h->observability_mode = on;
}

void extproc_harness_set_timeout_ms(extproc_harness *h, uint32_t ms) {
  if (h) h->timeout_ms = ms;
}

void extproc_harness_set_protocol_config(extproc_harness *h, extproc_body_mode request_body_mode,
                                         extproc_body_mode response_body_mode) {
  if (!h) return;
  h->send_protocol_config = true;
  h->protocol_request_mode = request_body_mode;
  h->protocol_response_mode = response_body_mode;
}

static void kv_clear(kv_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->ns[i]);
    free(l->keys[i]);
    free(l->values[i]);
  }
  free(l->ns);
  free(l->keys);
  free(l->values);
  memset(l, 0, sizeof(*l));
}

static int kv_add(kv_list *l, const char *ns, const char *key, const char *value) {
  if (!key || !value) return EXTPROC_EINVAL;
  const size_t n = l->count + 1;
  char **a = realloc(l->ns, n * sizeof(*a));
  if (a) l->ns = a;
  char **b = realloc(l->keys, n * sizeof(*b));
  if (b) l->keys = b;
  char **c = realloc(l->values, n * sizeof(*c));
  if (c) l->values = c;
  if (!a || !b || !c) return EXTPROC_ENOMEM;
  l->ns[l->count] = strdup(ns ? ns : "");
  l->keys[l->count] = strdup(key);
  l->values[l->count] = strdup(value);
  l->count++;
  return (l->ns[n - 1] && l->keys[n - 1] && l->values[n - 1]) ? 0 : EXTPROC_ENOMEM;
}

int extproc_harness_add_attribute(extproc_harness *h, const char *name, const char *value) {
  return h ? kv_add(&h->attributes, NULL, name, value) : EXTPROC_EINVAL;
}

int extproc_harness_add_metadata(extproc_harness *h, const char *ns, const char *key,
                                 const char *value) {
  return (h && ns) ? kv_add(&h->metadata, ns, key, value) : EXTPROC_EINVAL;
}

/* A google.protobuf.Struct of string fields, allocated in `a` (an arena the caller frees). */
static Google__Protobuf__Struct *string_struct(arena *a, char *const *keys, char *const *values,
                                               const size_t *index, size_t n) {
  Google__Protobuf__Struct *s = arena_alloc(a, sizeof(*s));
  Google__Protobuf__Struct__FieldsEntry **fields = arena_alloc(a, (n ? n : 1) * sizeof(*fields));
  if (!s || !fields) return NULL;
  google__protobuf__struct__init(s);
  for (size_t i = 0; i < n; i++) {
    Google__Protobuf__Struct__FieldsEntry *e = arena_alloc(a, sizeof(*e));
    Google__Protobuf__Value *v = arena_alloc(a, sizeof(*v));
    if (!e || !v) return NULL;
    google__protobuf__struct__fields_entry__init(e);
    google__protobuf__value__init(v);
    v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v->string_value = values[index[i]];
    e->key = keys[index[i]];
    e->value = v;
    fields[i] = e;
  }
  s->n_fields = n;
  s->fields = fields;
  return s;
}

/* Adds protocol_config, attributes and metadata_context to an outgoing message. */
static bool add_context(extproc_harness *h, arena *a, ProcessingRequest *msg) {
  if (h->send_protocol_config && !h->protocol_config_sent) {
    Envoy__Service__ExtProc__V3__ProtocolConfiguration *pc = arena_alloc(a, sizeof(*pc));
    if (!pc) return false;
    envoy__service__ext_proc__v3__protocol_configuration__init(pc);
    pc->request_body_mode = (int)h->protocol_request_mode;
    pc->response_body_mode = (int)h->protocol_response_mode;
    msg->protocol_config = pc;
    h->protocol_config_sent = true;
  }
  size_t *index = arena_alloc(a, (h->attributes.count + h->metadata.count + 1) * sizeof(*index));
  if (!index) return false;
  if (h->attributes.count) {
    for (size_t i = 0; i < h->attributes.count; i++)
      index[i] = i;
    Envoy__Service__ExtProc__V3__ProcessingRequest__AttributesEntry *e = arena_alloc(a, sizeof(*e));
    Envoy__Service__ExtProc__V3__ProcessingRequest__AttributesEntry **entries =
        arena_alloc(a, sizeof(*entries));
    if (!e || !entries) return false;
    envoy__service__ext_proc__v3__processing_request__attributes_entry__init(e);
    e->key = (char *)"envoy.filters.http.ext_proc";
    e->value =
        string_struct(a, h->attributes.keys, h->attributes.values, index, h->attributes.count);
    if (!e->value) return false;
    entries[0] = e;
    msg->n_attributes = 1;
    msg->attributes = entries;
  }
  if (h->metadata.count) {
    Envoy__Config__Core__V3__Metadata *m = arena_alloc(a, sizeof(*m));
    Envoy__Config__Core__V3__Metadata__FilterMetadataEntry **entries =
        arena_alloc(a, h->metadata.count * sizeof(*entries));
    if (!m || !entries) return false;
    envoy__config__core__v3__metadata__init(m);
    /* One entry per namespace, holding all its keys. */
    for (size_t i = 0; i < h->metadata.count; i++) {
      size_t seen = 0;
      while (seen < m->n_filter_metadata && strcmp(entries[seen]->key, h->metadata.ns[i]) != 0)
        seen++;
      if (seen < m->n_filter_metadata) continue;
      size_t n = 0;
      for (size_t k = 0; k < h->metadata.count; k++)
        if (strcmp(h->metadata.ns[k], h->metadata.ns[i]) == 0) index[n++] = k;
      Envoy__Config__Core__V3__Metadata__FilterMetadataEntry *e = arena_alloc(a, sizeof(*e));
      if (!e) return false;
      envoy__config__core__v3__metadata__filter_metadata_entry__init(e);
      e->key = h->metadata.ns[i];
      e->value = string_struct(a, h->metadata.keys, h->metadata.values, index, n);
      if (!e->value) return false;
      entries[m->n_filter_metadata++] = e;
    }
    m->filter_metadata = entries;
    msg->metadata_context = m;
  }
  return true;
}

/* Waits for a deferred phase to be resumed and completes it, as the server's loop would. */
static int wait_for_deferred(extproc_harness *h) {
  while (stream_busy(h->req)) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += h->timeout_ms / 1000;
    deadline.tv_nsec += (long)(h->timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->lock);
    int rv = 0;
    while (!h->posted && rv != ETIMEDOUT)
      rv = pthread_cond_timedwait(&h->cond, &h->lock, &deadline);
    extproc_request *req = h->posted;
    h->posted = NULL;
    pthread_mutex_unlock(&h->lock);
    if (!req) return EXTPROC_ETIMEDOUT;
    stream_resume_on_loop(req);
  }
  return 0;
}

static int send_request(extproc_harness *h, ProcessingRequest *msg) {
  if (h->ended) return EXTPROC_ESTATE;
  msg->observability_mode = h->observability_mode;
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  if (!add_context(h, &a, msg)) {
    arena_free(&a);
    return EXTPROC_ENOMEM;
  }
  const size_t len = protobuf_c_message_get_packed_size(&msg->base);
  uint8_t *buf = malloc(len ? len : 1);
  if (buf) protobuf_c_message_pack(&msg->base, buf);
  arena_free(&a);
  kv_clear(&h->attributes); /* Envoy sends attributes once per direction */
  if (!buf) return EXTPROC_ENOMEM;
  h->replies_before_send = h->reply_count;
  stream_on_message(h->req, buf, len);
  free(buf);
  const int rv = wait_for_deferred(h);
  if (rv != 0) return rv;
  return h->failed_to_record ? EXTPROC_ENOMEM : 0;
}

int extproc_harness_headers(extproc_harness *h, extproc_phase phase, const char *const *headers,
                            bool end_of_stream) {
  if (!h || phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY ||
      (unsigned)phase >= EXTPROC_PHASE_COUNT)
    return EXTPROC_EINVAL;
  size_t n = 0;
  while (headers && headers[n])
    n++;
  if (n % 2) return EXTPROC_EINVAL;
  n /= 2;
  Envoy__Config__Core__V3__HeaderValue *hv = calloc(n ? n : 1, sizeof(*hv));
  Envoy__Config__Core__V3__HeaderValue **hvp = calloc(n ? n : 1, sizeof(*hvp));
  if (!hv || !hvp) {
    free(hv);
    free(hvp);
    return EXTPROC_ENOMEM;
  }
  header_list *view = view_of(h, phase);
  if (view) list_clear(view);
  for (size_t i = 0; i < n; i++) {
    envoy__config__core__v3__header_value__init(&hv[i]);
    hv[i].key = (char *)headers[2 * i];
    hv[i].raw_value.data = (uint8_t *)headers[2 * i + 1];
    hv[i].raw_value.len = strlen(headers[2 * i + 1]);
    hvp[i] = &hv[i];
    if (view && !list_add(view, headers[2 * i], headers[2 * i + 1])) h->failed_to_record = true;
  }
  Envoy__Config__Core__V3__HeaderMap map = ENVOY__CONFIG__CORE__V3__HEADER_MAP__INIT;
  map.n_headers = n;
  map.headers = hvp;
  Envoy__Service__ExtProc__V3__HttpHeaders hh = ENVOY__SERVICE__EXT_PROC__V3__HTTP_HEADERS__INIT;
  hh.headers = &map;
  hh.end_of_stream = end_of_stream;
  Envoy__Service__ExtProc__V3__HttpTrailers ht = ENVOY__SERVICE__EXT_PROC__V3__HTTP_TRAILERS__INIT;
  ht.trailers = &map;
  ProcessingRequest msg = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  switch (phase) {
  case EXTPROC_REQUEST_HEADERS:
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
    msg.request_headers = &hh;
    break;
  case EXTPROC_RESPONSE_HEADERS:
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS;
    msg.response_headers = &hh;
    break;
  case EXTPROC_REQUEST_TRAILERS:
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_TRAILERS;
    msg.request_trailers = &ht;
    break;
  default:
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_TRAILERS;
    msg.response_trailers = &ht;
    break;
  }
  const int rv = send_request(h, &msg);
  free(hv);
  free(hvp);
  return rv;
}

int extproc_harness_body(extproc_harness *h, extproc_phase phase, const void *data, size_t len,
                         bool end_of_stream) {
  if (!h || (!data && len) || (phase != EXTPROC_REQUEST_BODY && phase != EXTPROC_RESPONSE_BODY))
    return EXTPROC_EINVAL;
  Envoy__Service__ExtProc__V3__HttpBody hb = ENVOY__SERVICE__EXT_PROC__V3__HTTP_BODY__INIT;
  hb.body.data = (uint8_t *)data;
  hb.body.len = len;
  hb.end_of_stream = end_of_stream;
  ProcessingRequest msg = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  if (phase == EXTPROC_REQUEST_BODY) {
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY;
    msg.request_body = &hb;
  } else {
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY;
    msg.response_body = &hb;
  }
  return send_request(h, &msg);
}

int extproc_harness_end(extproc_harness *h) {
  if (!h) return EXTPROC_EINVAL;
  stream_on_half_close(h->req);
  return 0;
}

void extproc_harness_free(extproc_harness *h) {
  if (!h) return;
  if (stream_busy(h->req)) wait_for_deferred(h);
  /* A phase still deferred after the wait keeps the request, and this struct (its poster), alive
   * until the late resume, which then frees both (harness_post). */
  pthread_mutex_lock(&h->lock);
  const bool orphaned = stream_busy(h->req) && !h->posted;
  if (h->posted) { /* the resume came just now */
    extproc_request *req = h->posted;
    h->posted = NULL;
    pthread_mutex_unlock(&h->lock);
    stream_resume_on_loop(req);
  } else {
    h->orphaned = orphaned;
    pthread_mutex_unlock(&h->lock);
  }
  stream_close(h->req);
  for (size_t i = 0; i < h->reply_count; i++) {
    stored_reply *s = &h->replies[i];
    for (size_t k = 0; k < s->pub.header_write_count; k++)
      free((char *)s->writes[k].value);
    free(s->writes);
    envoy__service__ext_proc__v3__processing_response__free_unpacked(s->msg, NULL);
  }
  free(h->replies);
  free(h->message);
  list_free(&h->upstream);
  list_free(&h->client);
  kv_clear(&h->attributes);
  kv_clear(&h->metadata);
  arena_cache_release(); /* this thread may be a test's own, about to exit */
  if (orphaned) return;
  pthread_mutex_destroy(&h->lock);
  pthread_cond_destroy(&h->cond);
  free(h);
}

/* ---- Inspection ----------------------------------------------------------------------- */

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

const char *extproc_harness_upstream_header(const extproc_harness *h, const char *name) {
  const char *v = NULL;
  return (h && name && list_get_all(&h->upstream, name, &v, 1)) ? v : NULL;
}

const char *extproc_harness_client_header(const extproc_harness *h, const char *name) {
  const char *v = NULL;
  return (h && name && list_get_all(&h->client, name, &v, 1)) ? v : NULL;
}

size_t extproc_harness_upstream_header_all(const extproc_harness *h, const char *name,
                                           const char **values, size_t max) {
  return (h && name) ? list_get_all(&h->upstream, name, values, max) : 0;
}

size_t extproc_harness_client_header_all(const extproc_harness *h, const char *name,
                                         const char **values, size_t max) {
  return (h && name) ? list_get_all(&h->client, name, values, max) : 0;
}

const extproc_harness_reply *extproc_harness_immediate_response(const extproc_harness *h) {
  return (h && h->has_immediate) ? &h->replies[h->immediate_index].pub : NULL;
}
