/* An outcome as JSON, and checked against a scenario's expectations (docs/scenarios.md). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exchange.h"

/* ---- JSON ------------------------------------------------------------------------------ */

static cJSON *pairs_to_json(const pair_list *l) {
  cJSON *a = cJSON_CreateArray();
  for (size_t i = 0; a && i < l->count; i++) {
    cJSON *pair = cJSON_CreateArray();
    cJSON_AddItemToArray(pair, cJSON_CreateString(l->names[i]));
    cJSON_AddItemToArray(pair, cJSON_CreateString(l->values[i]));
    cJSON_AddItemToArray(a, pair);
  }
  return a;
}

static cJSON *side_to_json(const side_outcome *s, bool is_client) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddBoolToObject(o, "reached", s->reached);
  if (!s->reached) return o;
  if (is_client) cJSON_AddNumberToObject(o, "status", s->status);
  cJSON_AddItemToObject(o, "headers", pairs_to_json(&s->headers));
  /* Bodies are text in scenario files; bytes that are not are shown as they are. */
  cJSON_AddStringToObject(o, "body", s->body.data ? (const char *)s->body.data : "");
  if (s->has_trailers) cJSON_AddItemToObject(o, "trailers", pairs_to_json(&s->trailers));
  return o;
}

cJSON *outcome_to_json(const outcome *o) {
  cJSON *j = cJSON_CreateObject();
  if (!j) return NULL;
  cJSON_AddItemToObject(j, "upstream", side_to_json(&o->upstream, false));
  cJSON_AddItemToObject(j, "client", side_to_json(&o->client, true));
  cJSON_AddItemToObject(j, "dynamic_metadata",
                        o->dynamic_metadata ? cJSON_Duplicate(o->dynamic_metadata, true)
                                            : cJSON_CreateObject());
  cJSON_AddItemToObject(j, "mode_override",
                        o->mode_override ? cJSON_Duplicate(o->mode_override, true)
                                         : cJSON_CreateNull());
  cJSON_AddNumberToObject(j, "grpc_status", o->grpc_status);
  if (o->keeps_serving >= 0) cJSON_AddBoolToObject(j, "keeps_serving", o->keeps_serving);
  cJSON *says = cJSON_AddArrayToObject(j, "envoy_says");
  for (size_t i = 0; says && i < o->judgment_count; i++)
    cJSON_AddItemToArray(says, cJSON_CreateString(o->judgments[i].code));
  return j;
}

/* ---- Expectations ---------------------------------------------------------------------- */

static void failf(pair_list *failures, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void failf(pair_list *failures, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  pair_list_add(failures, "", buf);
}

/* A value for a message: long bodies are cut, so a report stays readable. */
static const char *shown(const char *s, char *buf, size_t len) {
  if (strlen(s) < len) return s;
  snprintf(buf, len, "%.*s... (%zu bytes)", (int)len - 32, s, strlen(s));
  return buf;
}

static void check_headers(const char *where, const header_expects *want, const pair_list *have,
                          pair_list *failures) {
  for (size_t i = 0; i < want->count; i++) {
    const header_expect *e = &want->items[i];
    size_t n = 0;
    const char *first = NULL;
    bool same = true;
    for (size_t k = 0; k < have->count; k++) {
      if (strcasecmp(have->names[k], e->name) != 0) continue;
      if (!first) first = have->values[k];
      same = same && n < e->value_count && strcmp(have->values[k], e->values[n]) == 0;
      n++;
    }
    if (e->absent) {
      if (n) failf(failures, "%s header %s: expected absent, got \"%s\"", where, e->name, first);
    } else if (!n) {
      failf(failures, "%s header %s: expected \"%s\", absent", where, e->name, e->values[0]);
    } else if (!same || n != e->value_count) {
      failf(failures, "%s header %s: expected \"%s\"%s, got \"%s\"%s", where, e->name, e->values[0],
            e->value_count > 1 ? " and more" : "", first, n > 1 ? " and more" : "");
    }
  }
}

static void check_side(const char *where, const side_expect *want, const side_outcome *have,
                       pair_list *failures) {
  if (!want->given) return;
  if (want->not_reached) {
    if (have->reached) failf(failures, "%s: expected nothing to reach it, something did", where);
    return;
  }
  if (!have->reached) {
    failf(failures, "%s: expected a message, none %s", where,
          strcmp(where, "upstream") == 0 ? "reached the upstream" : "reached the client");
    return;
  }
  if (want->status && want->status != have->status)
    failf(failures, "%s status: expected %d, got %d", where, want->status, have->status);
  check_headers(where, &want->headers, &have->headers, failures);
  check_headers(where, &want->trailers, &have->trailers, failures);
  if (want->has_body && (want->body.len != have->body.len ||
                         memcmp(want->body.data, have->body.data ? have->body.data : (uint8_t *)"",
                                want->body.len) != 0)) {
    char a[200], b[200];
    failf(failures, "%s body: expected \"%s\", got \"%s\"", where,
          shown((const char *)want->body.data, a, sizeof(a)),
          shown(have->body.data ? (const char *)have->body.data : "", b, sizeof(b)));
  }
}

/* `want` (an object of expected values) holds in `have`: every key of `want`, recursively,
 * with equal text. */
static bool json_subset(const cJSON *want, const cJSON *have) {
  if (cJSON_IsObject(want)) {
    if (!cJSON_IsObject(have)) return false;
    const cJSON *item;
    cJSON_ArrayForEach(item, want) {
      if (!json_subset(item, cJSON_GetObjectItemCaseSensitive(have, item->string))) return false;
    }
    return true;
  }
  return cJSON_Compare(want, have, true);
}

static void check_json(const char *what, const char *want_text, const cJSON *have,
                       pair_list *failures) {
  if (!want_text) return;
  cJSON *want = cJSON_Parse(want_text);
  if (!json_subset(want, have)) {
    char *h = have ? cJSON_PrintUnformatted(have) : NULL;
    failf(failures, "%s: expected %s, got %s", what, want_text, h ? h : "none");
    free(h);
  }
  cJSON_Delete(want);
}

size_t outcome_check(const scenario *s, const outcome *o, pair_list *failures) {
  const size_t before = failures->count;
  const scenario_expect *e = &s->expect;
  check_side("upstream", &e->upstream, &o->upstream, failures);
  check_side("client", &e->client, &o->client, failures);
  check_json("dynamic_metadata", e->dynamic_metadata_json, o->dynamic_metadata, failures);
  check_json("mode_override", e->mode_override_json, o->mode_override, failures);
  if (e->has_grpc_status && e->grpc_status != o->grpc_status)
    failf(failures, "grpc_status: expected %d, got %d", e->grpc_status, o->grpc_status);
  if (e->has_keeps_serving && e->keeps_serving != (o->keeps_serving == 1))
    failf(failures, "keeps_serving: expected %s, the server %s",
          e->keeps_serving ? "true" : "false",
          o->keeps_serving == 1 ? "answered" : "did not answer a new exchange");
  /* Every judgment must be expected, and every expected one made. */
  for (size_t i = 0; i < o->judgment_count; i++) {
    bool listed = false;
    for (size_t k = 0; k < e->envoy_says_count; k++)
      listed = listed || strcmp(e->envoy_says[k], o->judgments[i].code) == 0;
    if (!listed) failf(failures, "Envoy would object: %s", o->judgments[i].message);
  }
  for (size_t k = 0; k < e->envoy_says_count; k++)
    if (!outcome_has_judgment(o, e->envoy_says[k]))
      failf(failures, "envoy_says: expected %s, Envoy would not say it", e->envoy_says[k]);
  return failures->count - before;
}
