/* Typed values read from a scenario file's YAML nodes, every mistake a "path:line: what". */
#include "reader.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool reader_fail(reader *r, const yaml_node_t *at, const char *fmt, ...) {
  if (r->failed) return false;
  r->failed = true;
  const int n = snprintf(r->err, r->errlen, "%s:%zu: ", r->path, at ? at->start_mark.line + 1 : 0);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < r->errlen) vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return false;
}

yaml_node_t *reader_node(reader *r, int index) { return yaml_document_get_node(&r->doc, index); }

/* A scalar's text; NULL for another node, and for a scalar holding a NUL byte ("\0" in YAML),
 * which no header, body or name of ours may contain. */
const char *reader_scalar(const yaml_node_t *n) {
  if (!n || n->type != YAML_SCALAR_NODE) return NULL;
  const char *text = (const char *)n->data.scalar.value;
  return strlen(text) == n->data.scalar.length ? text : NULL;
}

/* The value under `key` in mapping `map`, or NULL. */
yaml_node_t *reader_get(reader *r, const yaml_node_t *map, const char *key) {
  if (!map || map->type != YAML_MAPPING_NODE) return NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const char *k = reader_scalar(reader_node(r, p->key));
    if (k && strcmp(k, key) == 0) return reader_node(r, p->value);
  }
  return NULL;
}

/* Fails on a key of `map` not in `known` (NULL-terminated). */
bool reader_only_keys(reader *r, const yaml_node_t *map, const char *what,
                      const char *const *known) {
  if (!map) return true;
  if (map->type != YAML_MAPPING_NODE) return reader_fail(r, map, "%s must be a mapping", what);
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const yaml_node_t *kn = reader_node(r, p->key);
    const char *k = reader_scalar(kn);
    bool ok = false;
    for (size_t i = 0; k && known[i]; i++)
      ok = ok || strcmp(k, known[i]) == 0;
    if (!ok) return reader_fail(r, kn, "unknown key '%s' in %s", k ? k : "?", what);
  }
  return true;
}

bool reader_is_null(const yaml_node_t *n) {
  const char *s = reader_scalar(n);
  return n && n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
         (strcmp(s, "null") == 0 || strcmp(s, "~") == 0 || *s == 0);
}

bool reader_string(reader *r, const yaml_node_t *n, const char *what, char **out) {
  const char *s = reader_scalar(n);
  if (!s) return reader_fail(r, n, "%s must be a string", what);
  free(*out);
  *out = strdup(s);
  return *out != NULL;
}

bool reader_bool(reader *r, const yaml_node_t *n, const char *what, bool *out) {
  const char *s = reader_scalar(n);
  if (s && strcmp(s, "true") == 0)
    *out = true;
  else if (s && strcmp(s, "false") == 0)
    *out = false;
  else
    return reader_fail(r, n, "%s must be true or false", what);
  return true;
}

bool reader_uint(reader *r, const yaml_node_t *n, const char *what, uint64_t max, uint64_t *out) {
  const char *s = reader_scalar(n);
  char *end = (char *)s;
  errno = 0;
  const unsigned long long v = s && *s != '-' ? strtoull(s, &end, 10) : 0;
  if (!s || end == s || *end || errno || v > max)
    return reader_fail(r, n, "%s must be a whole number from 0 to %llu", what,
                       (unsigned long long)max);
  *out = v;
  return true;
}

bool reader_u32(reader *r, const yaml_node_t *n, const char *what, uint32_t *out) {
  uint64_t v;
  if (!reader_uint(r, n, what, UINT32_MAX, &v)) return false;
  *out = (uint32_t)v;
  return true;
}

/* A name and value a client or Envoy could send: no CR or LF (nor NUL: see reader_scalar()). */
static bool add_pair(reader *r, const yaml_node_t *at, const char *what, pair_list *out,
                     const char *k, const char *v) {
  if (!k || !v)
    return reader_fail(r, at, "%s: names and values must be strings, without NUL", what);
  if (strpbrk(k, "\r\n") || strpbrk(v, "\r\n"))
    return reader_fail(r, at, "%s: a name or value with CR or LF cannot be sent", what);
  return pair_list_add(out, k, v) || reader_fail(r, at, "out of memory");
}

/* Headers, trailers or attributes: a mapping, or a list of [name, value] pairs. */
bool reader_pairs(reader *r, const yaml_node_t *n, const char *what, pair_list *out) {
  if (n->type == YAML_MAPPING_NODE) {
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++)
      if (!add_pair(r, reader_node(r, p->key), what, out, reader_scalar(reader_node(r, p->key)),
                    reader_scalar(reader_node(r, p->value))))
        return false;
    return true;
  }
  if (n->type != YAML_SEQUENCE_NODE)
    return reader_fail(r, n, "%s must be a mapping or a list of [name, value] pairs", what);
  for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++) {
    const yaml_node_t *pair = reader_node(r, *i);
    if (pair->type != YAML_SEQUENCE_NODE ||
        pair->data.sequence.items.top - pair->data.sequence.items.start != 2)
      return reader_fail(r, pair, "%s: each entry must be a [name, value] pair", what);
    if (!add_pair(r, pair, what, out,
                  reader_scalar(reader_node(r, pair->data.sequence.items.start[0])),
                  reader_scalar(reader_node(r, pair->data.sequence.items.start[1]))))
      return false;
  }
  return true;
}

/* A YAML node as JSON (scalars stay strings: expectations compare as text). NULL, with the
 * reader failed, past the depth or node budget (a cyclic or exploding alias). */
static cJSON *to_json(reader *r, const yaml_node_t *n, unsigned depth) {
  if (depth > MAX_JSON_DEPTH || ++r->json_nodes > MAX_JSON_NODES) {
    reader_fail(r, n, "nested deeper than %d or larger than %d nodes (a YAML alias?)",
                MAX_JSON_DEPTH, MAX_JSON_NODES);
    return NULL;
  }
  if (n->type == YAML_SCALAR_NODE) {
    if (!reader_scalar(n)) reader_fail(r, n, "a NUL byte in a value");
    return reader_scalar(n) ? cJSON_CreateString(reader_scalar(n)) : NULL;
  }
  const bool list = n->type == YAML_SEQUENCE_NODE;
  cJSON *j = list ? cJSON_CreateArray() : cJSON_CreateObject();
  if (list) {
    for (yaml_node_item_t *i = n->data.sequence.items.start; j && i < n->data.sequence.items.top;
         i++) {
      cJSON *item = to_json(r, reader_node(r, *i), depth + 1);
      if (!item) break;
      cJSON_AddItemToArray(j, item);
    }
  } else {
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; j && p < n->data.mapping.pairs.top;
         p++) {
      const char *key = reader_scalar(reader_node(r, p->key));
      cJSON *item = key ? to_json(r, reader_node(r, p->value), depth + 1) : NULL;
      if (!item) break;
      cJSON_AddItemToObject(j, key, item);
    }
  }
  if (r->failed || !j) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

bool reader_json(reader *r, const yaml_node_t *n, const char *what, char **out) {
  if (n->type != YAML_MAPPING_NODE) return reader_fail(r, n, "%s must be a mapping", what);
  cJSON *j = to_json(r, n, 0);
  if (!j) return reader_fail(r, n, "%s: out of memory", what); /* unless it failed already */
  *out = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return *out || reader_fail(r, n, "out of memory");
}
