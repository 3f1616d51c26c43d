/* google.protobuf.Struct and Value: read-only views for attributes and metadata, and the
 * builder for dynamic metadata. Built values live in the message arena with the reply. */
#include "extproc/values.h"

#include <math.h>
#include <string.h>

#include "engine/request.h"
#include "extproc/extproc.h"

typedef Google__Protobuf__Value Value;
typedef Google__Protobuf__Struct Struct;
typedef Google__Protobuf__ListValue ListValue;
typedef Google__Protobuf__Struct__FieldsEntry FieldsEntry;

/* ---- Reading ---------------------------------------------------------------------------- */

static const Value *as_pb(const extproc_value *v) { return (const Value *)v; }

static const extproc_value *struct_field(const Struct *s, const char *key) {
  for (size_t i = 0; s && key && i < s->n_fields; i++)
    if (s->fields[i]->key && strcmp(s->fields[i]->key, key) == 0)
      return (const extproc_value *)s->fields[i]->value;
  return NULL;
}

const extproc_value *extproc_request_attribute(const extproc_request *req, const char *name) {
  return req ? struct_field(req->attributes, name) : NULL;
}

const extproc_value *extproc_request_metadata(const extproc_request *req, const char *ns,
                                              const char *key) {
  const Envoy__Config__Core__V3__Metadata *m = req ? req->metadata_context : NULL;
  for (size_t i = 0; m && ns && i < m->n_filter_metadata; i++)
    if (m->filter_metadata[i]->key && strcmp(m->filter_metadata[i]->key, ns) == 0)
      return struct_field(m->filter_metadata[i]->value, key);
  return NULL;
}

extproc_value_kind extproc_value_kind_of(const extproc_value *v) {
  const Value *p = as_pb(v);
  if (!p) return EXTPROC_VALUE_ABSENT;
  switch (p->kind_case) {
  case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: return EXTPROC_VALUE_NUMBER;
  case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE: return EXTPROC_VALUE_STRING;
  case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE: return EXTPROC_VALUE_BOOL;
  case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE: return EXTPROC_VALUE_STRUCT;
  case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: return EXTPROC_VALUE_LIST;
  default: return EXTPROC_VALUE_NULL;
  }
}

const char *extproc_value_string(const extproc_value *v) {
  return extproc_value_kind_of(v) == EXTPROC_VALUE_STRING ? as_pb(v)->string_value : NULL;
}

double extproc_value_number(const extproc_value *v) {
  return extproc_value_kind_of(v) == EXTPROC_VALUE_NUMBER ? as_pb(v)->number_value : 0;
}

bool extproc_value_bool(const extproc_value *v) {
  return extproc_value_kind_of(v) == EXTPROC_VALUE_BOOL && as_pb(v)->bool_value;
}

const extproc_value *extproc_value_field(const extproc_value *v, const char *key) {
  return extproc_value_kind_of(v) == EXTPROC_VALUE_STRUCT
             ? struct_field(as_pb(v)->struct_value, key)
             : NULL;
}

size_t extproc_value_list_size(const extproc_value *v) {
  if (extproc_value_kind_of(v) != EXTPROC_VALUE_LIST || !as_pb(v)->list_value) return 0;
  return as_pb(v)->list_value->n_values;
}

const extproc_value *extproc_value_list_at(const extproc_value *v, size_t index) {
  if (index >= extproc_value_list_size(v)) return NULL;
  return (const extproc_value *)as_pb(v)->list_value->values[index];
}

/* ---- Building --------------------------------------------------------------------------- */

/* Handles are cheap views: the protobuf-c object plus the arena to grow it in. Arrays grow by
 * exact copies, so any number of handles may point at the same object. */
struct extproc_struct {
  arena *a;
  Struct *pb;
};

struct extproc_list {
  arena *a;
  ListValue *pb;
};

static Value *new_value(arena *a) {
  Value *v = arena_alloc(a, sizeof(*v));
  if (v) google__protobuf__value__init(v);
  return v;
}

/* The Value stored under `key`, replaced by a fresh NULL value, or appended. */
static Value *struct_slot(extproc_struct *s, const char *key) {
  if (!s || !key) return NULL;
  Value *v = new_value(s->a);
  if (!v) return NULL;
  for (size_t i = 0; i < s->pb->n_fields; i++) {
    if (strcmp(s->pb->fields[i]->key, key) == 0) {
      s->pb->fields[i]->value = v;
      return v;
    }
  }
  FieldsEntry *e = arena_alloc(s->a, sizeof(*e));
  FieldsEntry **fields = arena_alloc(s->a, (s->pb->n_fields + 1) * sizeof(*fields));
  char *k = arena_strndup(s->a, key, strlen(key));
  if (!e || !fields || !k) return NULL;
  google__protobuf__struct__fields_entry__init(e);
  e->key = k;
  e->value = v;
  if (s->pb->n_fields) memcpy(fields, s->pb->fields, s->pb->n_fields * sizeof(*fields));
  fields[s->pb->n_fields++] = e;
  s->pb->fields = fields;
  return v;
}

static Value *list_slot(extproc_list *l) {
  if (!l) return NULL;
  Value *v = new_value(l->a);
  Value **values = arena_alloc(l->a, (l->pb->n_values + 1) * sizeof(*values));
  if (!v || !values) return NULL;
  if (l->pb->n_values) memcpy(values, l->pb->values, l->pb->n_values * sizeof(*values));
  values[l->pb->n_values++] = v;
  l->pb->values = values;
  return v;
}

static int put_string(arena *a, Value *v, const char *value) {
  if (!v) return EXTPROC_ENOMEM;
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
  v->string_value = arena_strndup(a, value, strlen(value));
  return v->string_value ? 0 : EXTPROC_ENOMEM;
}

static int put_number(Value *v, double value) {
  if (!v) return EXTPROC_ENOMEM;
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
  v->number_value = value;
  return 0;
}

static int put_bool(Value *v, bool value) {
  if (!v) return EXTPROC_ENOMEM;
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
  v->bool_value = value;
  return 0;
}

static extproc_struct *put_struct(arena *a, Value *v) {
  extproc_struct *h = v ? arena_alloc(a, sizeof(*h)) : NULL;
  Struct *pb = h ? arena_alloc(a, sizeof(*pb)) : NULL;
  if (!pb) return NULL;
  google__protobuf__struct__init(pb);
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
  v->struct_value = pb;
  *h = (extproc_struct){a, pb};
  return h;
}

static extproc_list *put_list(arena *a, Value *v) {
  extproc_list *h = v ? arena_alloc(a, sizeof(*h)) : NULL;
  ListValue *pb = h ? arena_alloc(a, sizeof(*pb)) : NULL;
  if (!pb) return NULL;
  google__protobuf__list_value__init(pb);
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
  v->list_value = pb;
  *h = (extproc_list){a, pb};
  return h;
}

int extproc_struct_set_string(extproc_struct *s, const char *key, const char *value) {
  if (!s || !key || !value) return EXTPROC_EINVAL;
  return put_string(s->a, struct_slot(s, key), value);
}

int extproc_struct_set_number(extproc_struct *s, const char *key, double value) {
  if (!s || !key || !isfinite(value)) return EXTPROC_EINVAL;
  return put_number(struct_slot(s, key), value);
}

int extproc_struct_set_bool(extproc_struct *s, const char *key, bool value) {
  if (!s || !key) return EXTPROC_EINVAL;
  return put_bool(struct_slot(s, key), value);
}

int extproc_struct_set_null(extproc_struct *s, const char *key) {
  if (!s || !key) return EXTPROC_EINVAL;
  Value *v = struct_slot(s, key);
  if (!v) return EXTPROC_ENOMEM;
  v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
  v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
  return 0;
}

extproc_struct *extproc_struct_set_struct(extproc_struct *s, const char *key) {
  return s && key ? put_struct(s->a, struct_slot(s, key)) : NULL;
}

extproc_list *extproc_struct_set_list(extproc_struct *s, const char *key) {
  return s && key ? put_list(s->a, struct_slot(s, key)) : NULL;
}

int extproc_list_add_string(extproc_list *l, const char *value) {
  if (!l || !value) return EXTPROC_EINVAL;
  return put_string(l->a, list_slot(l), value);
}

int extproc_list_add_number(extproc_list *l, double value) {
  if (!l || !isfinite(value)) return EXTPROC_EINVAL;
  return put_number(list_slot(l), value);
}

int extproc_list_add_bool(extproc_list *l, bool value) {
  if (!l) return EXTPROC_EINVAL;
  return put_bool(list_slot(l), value);
}

extproc_struct *extproc_list_add_struct(extproc_list *l) {
  return l ? put_struct(l->a, list_slot(l)) : NULL;
}

extproc_list *extproc_list_add_list(extproc_list *l) {
  return l ? put_list(l->a, list_slot(l)) : NULL;
}

extproc_struct *extproc_dynamic_metadata(extproc_request *req, const char *ns) {
  if (!req || !ns || !*ns) return NULL;
  if (req->msg.observability_mode) {
    extproc_log(req, EXTPROC_LOG_WARN,
                "refused: dynamic metadata in observability mode, Envoy takes no reply");
    return NULL;
  }
  if (!req->reply.dynamic_metadata) {
    req->reply.dynamic_metadata = arena_alloc(&req->msg_arena, sizeof(Struct));
    if (!req->reply.dynamic_metadata) return NULL;
    google__protobuf__struct__init(req->reply.dynamic_metadata);
  }
  extproc_struct top = {&req->msg_arena, req->reply.dynamic_metadata};
  const extproc_value *existing = struct_field(req->reply.dynamic_metadata, ns);
  if (extproc_value_kind_of(existing) == EXTPROC_VALUE_STRUCT) {
    extproc_struct *h = arena_alloc(&req->msg_arena, sizeof(*h));
    if (h) *h = (extproc_struct){&req->msg_arena, as_pb(existing)->struct_value};
    return h;
  }
  return extproc_struct_set_struct(&top, ns);
}
