/* How Envoy 1.40's ext_proc filter takes a reply's header mutation, dynamic metadata and
 * mode_override: what it applies, and what it says about it. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exchange.h"

/* ---- Judgments ------------------------------------------------------------------------- */

void outcome_judge(outcome *o, const char *code, const char *fmt, ...) {
  judgment *grown = realloc(o->judgments, (o->judgment_count + 1) * sizeof(*grown));
  if (!grown) return;
  o->judgments = grown;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  grown[o->judgment_count++] = (judgment){.code = code, .message = strdup(buf)};
}

bool outcome_has_judgment(const outcome *o, const char *code) {
  for (size_t i = 0; i < o->judgment_count; i++)
    if (strcmp(o->judgments[i].code, code) == 0) return true;
  return false;
}

static void side_free(side_outcome *s) {
  pair_list_clear(&s->headers);
  pair_list_clear(&s->trailers);
  byte_buf_free(&s->body);
}

void outcome_free(outcome *o) {
  side_free(&o->upstream);
  side_free(&o->client);
  cJSON_Delete(o->dynamic_metadata);
  cJSON_Delete(o->mode_override);
  for (size_t i = 0; i < o->judgment_count; i++)
    free(o->judgments[i].message);
  free(o->judgments);
}

/* ---- Header mutations ------------------------------------------------------------------ */

/* A name Envoy accepts in a mutation: an HTTP token, or a pseudo-header (":" then a token). */
static bool valid_name(const char *name) {
  static const char extra[] = "!#$%&'*+-.^_`|~";
  const char *p = name[0] == ':' ? name + 1 : name;
  if (!*p) return false;
  for (; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          strchr(extra, *p)))
      return false;
  return true;
}

static bool valid_value(const char *value, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (value[i] == '\r' || value[i] == '\n' || value[i] == 0) return false;
  return true;
}

/* Whether Envoy's default mutation_rules (none configured) let a processor set `name` to
 * `value` (`append`: added beside the existing values) or remove it. Envoy 1.40 ignores, and
 * counts in rejected_header_mutations: setting :authority, host, :method, :scheme or x-envoy-*,
 * :status other than a number from 200, appending to any pseudo-header; removing any
 * pseudo-header, host or x-envoy-*. :path and :status can be set. */
static bool allowed_by_default(const char *name, const char *value, bool append, bool remove) {
  if (strncasecmp(name, "x-envoy-", 8) == 0 || strcasecmp(name, "host") == 0) return false;
  if (name[0] != ':') return true;
  if (remove || append) return false;
  if (strcasecmp(name, ":path") == 0) return true;
  if (strcasecmp(name, ":status") == 0) {
    char *end;
    const long code = strtol(value, &end, 10);
    return *value && !*end && code >= 200 && code <= 999;
  }
  return false;
}

enum {
  APPEND_IF_EXISTS_OR_ADD = 0,
  ADD_IF_ABSENT = 1,
  OVERWRITE_IF_EXISTS_OR_ADD = 2,
  OVERWRITE_IF_EXISTS = 3
};

/* One write, by its append_action (or the legacy `append` flag, which wins when present). */
static void apply_write(pair_list *headers, const char *name, const char *value, int action) {
  const bool exists = pair_list_get(headers, name) != NULL;
  switch (action) {
  case ADD_IF_ABSENT:
    if (!exists) pair_list_add(headers, name, value);
    break;
  case OVERWRITE_IF_EXISTS:
    if (!exists) break;
    /* fall through */
  case OVERWRITE_IF_EXISTS_OR_ADD:
    pair_list_remove(headers, name);
    pair_list_add(headers, name, value);
    break;
  default: pair_list_add(headers, name, value);
  }
}

/* Whether a header name in the reply's encoding (`data`, `len` bytes of a `desc` message, nested
 * at most as deep as its caller checked) holds a NUL byte: HeaderValue.key or
 * HeaderMutation.remove_headers. protobuf-c cuts such a string at the NUL, so only the encoding
 * shows it; Envoy sees the whole name, which is not a valid one. */
static bool names_hold_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                           const uint8_t *end) {
  while (p < end) {
    uint64_t key = 0, n = 0;
    for (unsigned shift = 0; p < end && shift < 64; shift += 7) {
      key |= (uint64_t)(*p & 0x7f) << shift;
      if (!(*p++ & 0x80)) break;
    }
    const unsigned wire = key & 7;
    if (wire != 2) { /* varints and fixed-size values hold no names */
      if (wire == 0) {
        while (p < end && (*p++ & 0x80)) {
        }
      } else {
        p += wire == 1 ? 8 : 4;
      }
      continue;
    }
    for (unsigned shift = 0; p < end && shift < 64; shift += 7) {
      n |= (uint64_t)(*p & 0x7f) << shift;
      if (!(*p++ & 0x80)) break;
    }
    if (n > (uint64_t)(end - p)) return false; /* wire_check has refused such a message */
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field(desc, (unsigned)(key >> 3));
    if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && names_hold_nul(f->descriptor, p, p + n))
      return true;
    const bool name = f && f->type == PROTOBUF_C_TYPE_STRING &&
                      ((desc == &envoy__config__core__v3__header_value__descriptor &&
                        strcmp(f->name, "key") == 0) ||
                       (desc == &envoy__service__ext_proc__v3__header_mutation__descriptor &&
                        strcmp(f->name, "remove_headers") == 0));
    if (name && memchr(p, 0, (size_t)n)) return true;
    p += n;
  }
  return false;
}

bool envoy_reply_names_hold_nul(const uint8_t *data, size_t len) {
  return names_hold_nul(&envoy__service__ext_proc__v3__processing_response__descriptor, data,
                        data + len);
}

bool envoy_apply_header_mutation(outcome *o, const char *phase, const header_mutation *m,
                                 pair_list *headers, bool skip_content_length) {
  if (!m) return true;
  for (size_t i = 0; i < m->n_remove_headers; i++) {
    const char *name = m->remove_headers[i];
    if (!valid_name(name)) {
      outcome_judge(o, "invalid_header_mutation",
                    "%s: removing \"%s\", not a valid header name: Envoy would answer 500 "
                    "(even with failure_mode_allow)",
                    phase, name);
      return false;
    }
    if (!allowed_by_default(name, "", false, true)) {
      outcome_judge(o, "mutation_dropped",
                    "%s: removing %s: Envoy's default mutation_rules ignore it", phase, name);
      continue;
    }
    pair_list_remove(headers, name);
  }
  for (size_t i = 0; i < m->n_set_headers; i++) {
    const Envoy__Config__Core__V3__HeaderValueOption *opt = m->set_headers[i];
    const Envoy__Config__Core__V3__HeaderValue *hv = opt->header;
    if (!hv || !hv->key) continue;
    const bool has_value = hv->value && *hv->value, has_raw = hv->raw_value.len > 0;
    if (has_value && has_raw)
      outcome_judge(o, "value_and_raw_value",
                    "%s: header %s has both value and raw_value: Envoy 1.40 takes raw_value "
                    "(\"%.*s\") and ignores value (\"%s\")",
                    phase, hv->key, (int)hv->raw_value.len, (const char *)hv->raw_value.data,
                    hv->value);
    else if (has_value)
      outcome_judge(o, "value_only",
                    "%s: header %s is written to `value` only (\"%s\"): Envoy 1.40 reads "
                    "raw_value and would forward it empty",
                    phase, hv->key, hv->value);
    const char *raw = (const char *)hv->raw_value.data;
    if (!valid_name(hv->key) || !valid_value(raw ? raw : "", hv->raw_value.len)) {
      outcome_judge(o, "invalid_header_mutation",
                    "%s: setting \"%s\": not a valid header name, or a value with CR, LF or "
                    "NUL: Envoy would answer 500 (even with failure_mode_allow)",
                    phase, hv->key);
      return false;
    }
    char *value = strndup(raw ? raw : "", hv->raw_value.len);
    char *name = strdup(hv->key);
    if (!value || !name) {
      free(value);
      free(name);
      continue;
    }
    for (char *c = name; *c; c++) /* Envoy lower-cases the names it is given */
      if (*c >= 'A' && *c <= 'Z') *c = (char)(*c - 'A' + 'a');
    int action = opt->append_action;
    if (opt->append && action != ADD_IF_ABSENT)
      action = opt->append->value ? APPEND_IF_EXISTS_OR_ADD : OVERWRITE_IF_EXISTS_OR_ADD;
    const bool appends = action == APPEND_IF_EXISTS_OR_ADD && pair_list_get(headers, name);
    if (!allowed_by_default(name, value, appends, false))
      outcome_judge(o, "mutation_dropped",
                    "%s: setting %s: Envoy's default mutation_rules ignore it", phase, name);
    else if (!(skip_content_length && strcmp(name, "content-length") == 0))
      apply_write(headers, name, value, action); /* else Envoy removed it for a streamed body */
    free(value);
    free(name);
  }
  return true;
}

/* ---- Dynamic metadata and mode_override ------------------------------------------------ */

static cJSON *value_to_json(const Google__Protobuf__Value *v);

static cJSON *struct_to_json(const Google__Protobuf__Struct *s) {
  cJSON *o = cJSON_CreateObject();
  /* A key given twice: the last one wins, as in any protobuf map. */
  for (size_t i = 0; o && s && i < s->n_fields; i++) {
    cJSON *v = value_to_json(s->fields[i]->value);
    if (cJSON_HasObjectItem(o, s->fields[i]->key))
      cJSON_ReplaceItemInObjectCaseSensitive(o, s->fields[i]->key, v);
    else
      cJSON_AddItemToObject(o, s->fields[i]->key, v);
  }
  return o;
}

/* Expectations compare as text, so numbers and booleans become strings as YAML writes them. */
static cJSON *value_to_json(const Google__Protobuf__Value *v) {
  if (!v) return cJSON_CreateNull();
  char buf[64];
  switch (v->kind_case) {
  case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE: return cJSON_CreateString(v->string_value);
  case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
    snprintf(buf, sizeof(buf), "%.17g", v->number_value);
    return cJSON_CreateString(buf);
  case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
    return cJSON_CreateString(v->bool_value ? "true" : "false");
  case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE: return struct_to_json(v->struct_value);
  case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && v->list_value && i < v->list_value->n_values; i++)
      cJSON_AddItemToArray(a, value_to_json(v->list_value->values[i]));
    return a;
  }
  default: return cJSON_CreateNull();
  }
}

void envoy_merge_dynamic_metadata(outcome *o, const processing_response *r) {
  if (!r->dynamic_metadata) return;
  if (!o->dynamic_metadata) o->dynamic_metadata = cJSON_CreateObject();
  cJSON *add = struct_to_json(r->dynamic_metadata);
  if (!o->dynamic_metadata || !add) {
    cJSON_Delete(add);
    return;
  }
  /* A namespace written again replaces its keys one by one, as Envoy merges filter metadata. */
  cJSON *ns;
  cJSON_ArrayForEach(ns, add) {
    cJSON *have = cJSON_GetObjectItemCaseSensitive(o->dynamic_metadata, ns->string);
    if (!have || !cJSON_IsObject(have) || !cJSON_IsObject(ns)) {
      cJSON_DeleteItemFromObjectCaseSensitive(o->dynamic_metadata, ns->string);
      cJSON_AddItemToObject(o->dynamic_metadata, ns->string, cJSON_Duplicate(ns, true));
      continue;
    }
    cJSON *kv;
    cJSON_ArrayForEach(kv, ns) {
      cJSON_DeleteItemFromObjectCaseSensitive(have, kv->string);
      cJSON_AddItemToObject(have, kv->string, cJSON_Duplicate(kv, true));
    }
  }
  cJSON_Delete(add);
}

void envoy_record_mode_override(outcome *o, const processing_response *r) {
  const Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *m = r->mode_override;
  if (!m) return;
  cJSON_Delete(o->mode_override);
  o->mode_override = cJSON_CreateObject();
  if (!o->mode_override) return;
  const int headers[] = {m->request_header_mode, m->response_header_mode, m->request_trailer_mode,
                         m->response_trailer_mode};
  static const char *const header_keys[] = {"request_header_mode", "response_header_mode",
                                            "request_trailer_mode", "response_trailer_mode"};
  for (int i = 0; i < 4; i++)
    if (header_mode_name(headers[i]))
      cJSON_AddStringToObject(o->mode_override, header_keys[i], header_mode_name(headers[i]));
  if (body_mode_name((extproc_body_mode)m->request_body_mode))
    cJSON_AddStringToObject(o->mode_override, "request_body_mode",
                            body_mode_name((extproc_body_mode)m->request_body_mode));
  if (body_mode_name((extproc_body_mode)m->response_body_mode))
    cJSON_AddStringToObject(o->mode_override, "response_body_mode",
                            body_mode_name((extproc_body_mode)m->response_body_mode));
}
