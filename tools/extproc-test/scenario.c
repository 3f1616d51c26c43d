/* Scenario files (docs/scenarios.md) read with libyaml's document API: the whole file is
 * loaded as a node graph, then each scenario's keys are checked and copied into a `scenario`.
 * Every unknown key or ill-typed value is an error naming the file and line, so a typo never
 * silently turns an expectation off. */
#include "scenario.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* ---- Small containers ------------------------------------------------------------------ */

bool pair_list_add(pair_list *l, const char *name, const char *value) {
  if (l->count == l->cap) {
    const size_t cap = l->cap ? 2 * l->cap : 8;
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

void pair_list_remove(pair_list *l, const char *name) {
  size_t kept = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (strcasecmp(l->names[i], name) == 0) {
      free(l->names[i]);
      free(l->values[i]);
      continue;
    }
    l->names[kept] = l->names[i];
    l->values[kept++] = l->values[i];
  }
  l->count = kept;
}

const char *pair_list_get(const pair_list *l, const char *name) {
  for (size_t i = 0; i < l->count; i++)
    if (strcasecmp(l->names[i], name) == 0) return l->values[i];
  return NULL;
}

void pair_list_clear(pair_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->names[i]);
    free(l->values[i]);
  }
  free(l->names);
  free(l->values);
  *l = (pair_list){0};
}

bool pair_list_copy(pair_list *to, const pair_list *from) {
  for (size_t i = 0; i < from->count; i++)
    if (!pair_list_add(to, from->names[i], from->values[i])) return false;
  return true;
}

bool byte_buf_reserve(byte_buf *b, size_t extra) {
  if (b->len + extra + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
      cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return false;
    b->data = d;
    b->cap = cap;
  }
  return true;
}

bool byte_buf_append(byte_buf *b, const void *data, size_t len) {
  if (!byte_buf_reserve(b, len)) return false;
  if (len) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = 0; /* always a C string too, for messages and JSON */
  return true;
}

void byte_buf_free(byte_buf *b) {
  free(b->data);
  *b = (byte_buf){0};
}

bool http_message_body(const http_message *m, byte_buf *out) {
  if (!byte_buf_append(out, "", 0)) return false;
  for (size_t i = 0; i < m->chunk_count; i++)
    if (!byte_buf_append(out, m->chunks[i].data, m->chunks[i].len)) return false;
  return true;
}

const char *header_mode_name(extproc_header_mode m) {
  static const char *const names[] = {"DEFAULT", "SEND", "SKIP"};
  return (unsigned)m < 3 ? names[m] : NULL;
}

const char *body_mode_name(extproc_body_mode m) {
  static const char *const names[] = {
      "NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED", "GRPC"};
  return (unsigned)m < 6 ? names[m] : NULL;
}

/* ---- Reading nodes --------------------------------------------------------------------- */

/* What one file may expand to: YAML aliases let a few bytes stand for a lot (or for a cycle). */
enum {
  MAX_FILE_BYTES = 16 << 20,  /* the file itself */
  MAX_BODY_BYTES = 256 << 20, /* body chunks, over the whole file, aliases expanded */
  MAX_JSON_NODES = 100000,    /* nodes of expected metadata or overrides, over the whole file */
  MAX_JSON_DEPTH = 32,        /* their nesting */
};

typedef struct reader {
  yaml_document_t doc;
  const char *path;
  char *err;
  size_t errlen;
  bool failed;
  size_t body_bytes; /* chunk bytes read so far */
  size_t json_nodes; /* expected-JSON nodes read so far */
} reader;

static bool fail(reader *r, const yaml_node_t *at, const char *fmt, ...) {
  if (r->failed) return false;
  r->failed = true;
  const int n = snprintf(r->err, r->errlen, "%s:%zu: ", r->path, at ? at->start_mark.line + 1 : 0);
  va_list ap;
  va_start(ap, fmt);
  if (n >= 0 && (size_t)n < r->errlen) vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
  va_end(ap);
  return false;
}

static yaml_node_t *node(reader *r, int index) { return yaml_document_get_node(&r->doc, index); }

/* A scalar's text; NULL for another node, and for a scalar holding a NUL byte ("\0" in YAML),
 * which no header, body or name of ours may contain. */
static const char *scalar(const yaml_node_t *n) {
  if (!n || n->type != YAML_SCALAR_NODE) return NULL;
  const char *text = (const char *)n->data.scalar.value;
  return strlen(text) == n->data.scalar.length ? text : NULL;
}

/* The value under `key` in mapping `map`, or NULL. */
static yaml_node_t *get(reader *r, const yaml_node_t *map, const char *key) {
  if (!map || map->type != YAML_MAPPING_NODE) return NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const char *k = scalar(node(r, p->key));
    if (k && strcmp(k, key) == 0) return node(r, p->value);
  }
  return NULL;
}

/* Fails on a key of `map` not in `known` (NULL-terminated). */
static bool only_keys(reader *r, const yaml_node_t *map, const char *what,
                      const char *const *known) {
  if (!map) return true;
  if (map->type != YAML_MAPPING_NODE) return fail(r, map, "%s must be a mapping", what);
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    const yaml_node_t *kn = node(r, p->key);
    const char *k = scalar(kn);
    bool ok = false;
    for (size_t i = 0; k && known[i]; i++)
      ok = ok || strcmp(k, known[i]) == 0;
    if (!ok) return fail(r, kn, "unknown key '%s' in %s", k ? k : "?", what);
  }
  return true;
}

static bool is_null(const yaml_node_t *n) {
  const char *s = scalar(n);
  return n && n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
         (strcmp(s, "null") == 0 || strcmp(s, "~") == 0 || *s == 0);
}

static bool read_string(reader *r, const yaml_node_t *n, const char *what, char **out) {
  const char *s = scalar(n);
  if (!s) return fail(r, n, "%s must be a string", what);
  free(*out);
  *out = strdup(s);
  return *out != NULL;
}

static bool read_bool(reader *r, const yaml_node_t *n, const char *what, bool *out) {
  const char *s = scalar(n);
  if (s && strcmp(s, "true") == 0)
    *out = true;
  else if (s && strcmp(s, "false") == 0)
    *out = false;
  else
    return fail(r, n, "%s must be true or false", what);
  return true;
}

static bool read_uint(reader *r, const yaml_node_t *n, const char *what, uint64_t max,
                      uint64_t *out) {
  const char *s = scalar(n);
  char *end = (char *)s;
  errno = 0;
  const unsigned long long v = s && *s != '-' ? strtoull(s, &end, 10) : 0;
  if (!s || end == s || *end || errno || v > max)
    return fail(r, n, "%s must be a whole number from 0 to %llu", what, (unsigned long long)max);
  *out = v;
  return true;
}

static bool read_u32(reader *r, const yaml_node_t *n, const char *what, uint32_t *out) {
  uint64_t v;
  if (!read_uint(r, n, what, UINT32_MAX, &v)) return false;
  *out = (uint32_t)v;
  return true;
}

/* A name and value a client or Envoy could send: no CR or LF (nor NUL: see scalar()). */
static bool add_pair(reader *r, const yaml_node_t *at, const char *what, pair_list *out,
                     const char *k, const char *v) {
  if (!k || !v) return fail(r, at, "%s: names and values must be strings, without NUL", what);
  if (strpbrk(k, "\r\n") || strpbrk(v, "\r\n"))
    return fail(r, at, "%s: a name or value with CR or LF cannot be sent", what);
  return pair_list_add(out, k, v) || fail(r, at, "out of memory");
}

/* Headers, trailers or attributes: a mapping, or a list of [name, value] pairs. */
static bool read_pairs(reader *r, const yaml_node_t *n, const char *what, pair_list *out) {
  if (n->type == YAML_MAPPING_NODE) {
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++)
      if (!add_pair(r, node(r, p->key), what, out, scalar(node(r, p->key)),
                    scalar(node(r, p->value))))
        return false;
    return true;
  }
  if (n->type != YAML_SEQUENCE_NODE)
    return fail(r, n, "%s must be a mapping or a list of [name, value] pairs", what);
  for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++) {
    const yaml_node_t *pair = node(r, *i);
    if (pair->type != YAML_SEQUENCE_NODE ||
        pair->data.sequence.items.top - pair->data.sequence.items.start != 2)
      return fail(r, pair, "%s: each entry must be a [name, value] pair", what);
    if (!add_pair(r, pair, what, out, scalar(node(r, pair->data.sequence.items.start[0])),
                  scalar(node(r, pair->data.sequence.items.start[1]))))
      return false;
  }
  return true;
}

/* One chunk: a string, or {repeat: TEXT, bytes: N}. */
static bool read_chunk(reader *r, const yaml_node_t *n, byte_buf *out) {
  if (!byte_buf_append(out, "", 0)) return fail(r, n, "out of memory");
  uint64_t bytes = 0;
  const char *text = scalar(n);
  if (text) {
    bytes = strlen(text);
  } else {
    static const char *const keys[] = {"repeat", "bytes", NULL};
    if (n->type != YAML_MAPPING_NODE || !only_keys(r, n, "a body chunk", keys))
      return fail(r, n, "a body chunk must be a string (without NUL) or {repeat: TEXT, bytes: N}");
    text = scalar(get(r, n, "repeat"));
    if (!text || !*text || !get(r, n, "bytes"))
      return fail(r, n, "a repeated chunk needs a non-empty repeat and bytes");
    if (!read_uint(r, get(r, n, "bytes"), "bytes", MAX_BODY_BYTES, &bytes)) return false;
  }
  if (bytes > MAX_BODY_BYTES - r->body_bytes)
    return fail(r, n, "the file's bodies add up to more than %d MiB", MAX_BODY_BYTES >> 20);
  r->body_bytes += bytes;
  /* The text once, then what is there copied after itself, doubling. */
  const size_t tl = strlen(text), total = (size_t)bytes;
  if (!byte_buf_append(out, text, tl < total ? tl : total) ||
      !byte_buf_reserve(out, total - out->len))
    return fail(r, n, "out of memory");
  while (out->len < total) {
    const size_t take = out->len < total - out->len ? out->len : total - out->len;
    memcpy(out->data + out->len, out->data, take);
    out->len += take;
  }
  out->data[out->len] = 0;
  return true;
}

static bool read_body(reader *r, const yaml_node_t *n, http_message *m) {
  const bool list = n->type == YAML_SEQUENCE_NODE;
  const size_t count =
      list ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start) : 1;
  m->chunks = calloc(count ? count : 1, sizeof(*m->chunks));
  if (!m->chunks) return fail(r, n, "out of memory");
  m->chunk_count = count;
  for (size_t i = 0; i < count; i++)
    if (!read_chunk(r, list ? node(r, n->data.sequence.items.start[i]) : n, &m->chunks[i]))
      return false;
  return true;
}

static bool read_message(reader *r, const yaml_node_t *n, const char *what, http_message *m,
                         bool is_request) {
  static const char *const keys[] = {"headers", "body", "trailers", NULL};
  if (n && !only_keys(r, n, what, keys)) return false;
  const yaml_node_t *h = get(r, n, "headers"), *b = get(r, n, "body"), *t = get(r, n, "trailers");
  if (h && !read_pairs(r, h, "headers", &m->headers)) return false;
  if (b && !read_body(r, b, m)) return false;
  if (t) {
    m->has_trailers = true;
    if (!read_pairs(r, t, "trailers", &m->trailers)) return false;
  }
  /* No client or upstream could send a body its content-length contradicts. */
  const char *cl = pair_list_get(&m->headers, "content-length");
  size_t total = 0;
  for (size_t i = 0; i < m->chunk_count; i++)
    total += m->chunks[i].len;
  char want[32];
  snprintf(want, sizeof(want), "%zu", total);
  if (cl && strcmp(cl, want) != 0)
    return fail(r, h, "%s: content-length is %s but the body has %zu bytes", what, cl, total);
  /* What Envoy always sends, where the scenario left it out. */
  static const char *const request_defaults[] = {":method", "GET",  ":path",      "/",
                                                 ":scheme", "http", ":authority", "localhost"};
  static const char *const response_defaults[] = {":status", "200"};
  const char *const *d = is_request ? request_defaults : response_defaults;
  const size_t nd = is_request ? 4 : 1;
  pair_list filled = {0};
  bool ok = true;
  for (size_t i = 0; i < nd; i++)
    if (!pair_list_get(&m->headers, d[2 * i]))
      ok = ok && pair_list_add(&filled, d[2 * i], d[2 * i + 1]);
  ok = ok && pair_list_copy(&filled, &m->headers);
  pair_list_clear(&m->headers);
  m->headers = filled;
  return ok || fail(r, n, "out of memory");
}

static bool read_header_mode(reader *r, const yaml_node_t *n, const char *what,
                             extproc_header_mode *out) {
  for (int m = 0; m < 3; m++)
    if (scalar(n) && strcmp(scalar(n), header_mode_name(m)) == 0) {
      *out = m;
      return true;
    }
  return fail(r, n, "%s must be SEND, SKIP or DEFAULT", what);
}

static bool read_body_mode(reader *r, const yaml_node_t *n, const char *what,
                           extproc_body_mode *out) {
  for (int m = 0; m < 6; m++)
    if (scalar(n) && strcmp(scalar(n), body_mode_name(m)) == 0) {
      *out = m;
      return true;
    }
  return fail(r, n,
              "%s must be NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED or GRPC",
              what);
}

static const char *const mode_keys[] = {"request_header_mode",
                                        "response_header_mode",
                                        "request_body_mode",
                                        "response_body_mode",
                                        "request_trailer_mode",
                                        "response_trailer_mode",
                                        NULL};

static bool read_mode(reader *r, const yaml_node_t *n, extproc_processing_mode *m) {
  if (!only_keys(r, n, "processing_mode", mode_keys)) return false;
  extproc_header_mode *hm[] = {&m->request_header_mode,  &m->response_header_mode, NULL, NULL,
                               &m->request_trailer_mode, &m->response_trailer_mode};
  extproc_body_mode *bm[] = {NULL, NULL, &m->request_body_mode, &m->response_body_mode};
  for (int i = 0; i < 6; i++) {
    const yaml_node_t *v = get(r, n, mode_keys[i]);
    if (!v) continue;
    if (hm[i] ? !read_header_mode(r, v, mode_keys[i], hm[i])
              : !read_body_mode(r, v, mode_keys[i], bm[i]))
      return false;
  }
  return true;
}

/* A YAML node as JSON (scalars stay strings: expectations compare as text). NULL, with the
 * reader failed, past the depth or node budget (a cyclic or exploding alias). */
static cJSON *to_json(reader *r, const yaml_node_t *n, unsigned depth) {
  if (depth > MAX_JSON_DEPTH || ++r->json_nodes > MAX_JSON_NODES) {
    fail(r, n, "nested deeper than %d or larger than %d nodes (a YAML alias?)", MAX_JSON_DEPTH,
         MAX_JSON_NODES);
    return NULL;
  }
  if (n->type == YAML_SCALAR_NODE) {
    if (!scalar(n)) fail(r, n, "a NUL byte in a value");
    return scalar(n) ? cJSON_CreateString(scalar(n)) : NULL;
  }
  const bool list = n->type == YAML_SEQUENCE_NODE;
  cJSON *j = list ? cJSON_CreateArray() : cJSON_CreateObject();
  if (list) {
    for (yaml_node_item_t *i = n->data.sequence.items.start; j && i < n->data.sequence.items.top;
         i++) {
      cJSON *item = to_json(r, node(r, *i), depth + 1);
      if (!item) break;
      cJSON_AddItemToArray(j, item);
    }
  } else {
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; j && p < n->data.mapping.pairs.top;
         p++) {
      const char *key = scalar(node(r, p->key));
      cJSON *item = key ? to_json(r, node(r, p->value), depth + 1) : NULL;
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

static bool read_json(reader *r, const yaml_node_t *n, const char *what, char **out) {
  if (n->type != YAML_MAPPING_NODE) return fail(r, n, "%s must be a mapping", what);
  cJSON *j = to_json(r, n, 0);
  if (!j) return fail(r, n, "%s: out of memory", what); /* unless it failed already */
  *out = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return *out || fail(r, n, "out of memory");
}

static bool read_header_expects(reader *r, const yaml_node_t *n, const char *what,
                                header_expects *out) {
  if (n->type != YAML_MAPPING_NODE) return fail(r, n, "%s must be a mapping", what);
  const size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  out->items = calloc(count ? count : 1, sizeof(*out->items));
  if (!out->items) return fail(r, n, "out of memory");
  for (size_t i = 0; i < count; i++) {
    const yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
    header_expect *e = &out->items[out->count++];
    const yaml_node_t *v = node(r, p->value);
    if (!read_string(r, node(r, p->key), what, &e->name)) return false;
    if (is_null(v)) {
      e->absent = true;
      continue;
    }
    const bool list = v->type == YAML_SEQUENCE_NODE;
    const size_t nv =
        list ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) : 1;
    e->values = calloc(nv ? nv : 1, sizeof(char *));
    if (!e->values) return fail(r, v, "out of memory");
    for (size_t k = 0; k < nv; k++, e->value_count++)
      if (!read_string(r, list ? node(r, v->data.sequence.items.start[k]) : v, e->name,
                       &e->values[k]))
        return false;
  }
  return true;
}

static bool read_side(reader *r, const yaml_node_t *n, const char *what, side_expect *s,
                      bool is_client) {
  s->given = true;
  if (scalar(n) && strcmp(scalar(n), "none") == 0) {
    s->not_reached = true;
    return true;
  }
  static const char *const upstream_keys[] = {"headers", "body", "trailers", NULL};
  static const char *const client_keys[] = {"status", "headers", "body", "trailers", NULL};
  if (!only_keys(r, n, what, is_client ? client_keys : upstream_keys)) return false;
  const yaml_node_t *v;
  if (is_client && (v = get(r, n, "status"))) {
    uint64_t status;
    if (!read_uint(r, v, "status", 999, &status)) return false;
    s->status = (int)status;
  }
  if ((v = get(r, n, "headers")) && !read_header_expects(r, v, "headers", &s->headers))
    return false;
  if ((v = get(r, n, "trailers")) && !read_header_expects(r, v, "trailers", &s->trailers))
    return false;
  if ((v = get(r, n, "body"))) {
    s->has_body = true;
    if (!read_chunk(r, v, &s->body)) return false;
  }
  return true;
}

static bool read_expect(reader *r, const yaml_node_t *n, scenario_expect *e) {
  static const char *const keys[] = {"upstream",      "client",      "dynamic_metadata",
                                     "mode_override", "grpc_status", "keeps_serving",
                                     "envoy_says",    NULL};
  if (!only_keys(r, n, "expect", keys)) return false;
  const yaml_node_t *v;
  if ((v = get(r, n, "upstream")) && !read_side(r, v, "expect.upstream", &e->upstream, false))
    return false;
  if ((v = get(r, n, "client")) && !read_side(r, v, "expect.client", &e->client, true))
    return false;
  if ((v = get(r, n, "dynamic_metadata")) &&
      !read_json(r, v, "dynamic_metadata", &e->dynamic_metadata_json))
    return false;
  if ((v = get(r, n, "mode_override"))) {
    if (!only_keys(r, v, "mode_override", mode_keys)) return false;
    if (!read_json(r, v, "mode_override", &e->mode_override_json)) return false;
  }
  if ((v = get(r, n, "grpc_status"))) {
    const char *s = scalar(v);
    uint64_t code = 0;
    e->has_grpc_status = true;
    if (s && strcmp(s, "-1") == 0)
      e->grpc_status = -1;
    else if (read_uint(r, v, "grpc_status", 16, &code))
      e->grpc_status = (int)code;
    else
      return false;
  }
  if ((v = get(r, n, "keeps_serving"))) {
    e->has_keeps_serving = true;
    if (!read_bool(r, v, "keeps_serving", &e->keeps_serving)) return false;
  }
  if ((v = get(r, n, "envoy_says"))) {
    if (v->type != YAML_SEQUENCE_NODE) return fail(r, v, "envoy_says must be a list of codes");
    const size_t count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    e->envoy_says = calloc(count ? count : 1, sizeof(char *));
    if (!e->envoy_says) return fail(r, v, "out of memory");
    for (size_t i = 0; i < count; i++, e->envoy_says_count++)
      if (!read_string(r, node(r, v->data.sequence.items.start[i]), "envoy_says",
                       &e->envoy_says[i]))
        return false;
  }
  return true;
}

static bool read_fault(reader *r, const yaml_node_t *n, scenario *s) {
  if (scalar(n) && strcmp(scalar(n), "malformed") == 0) {
    s->fault = FAULT_MALFORMED;
    return true;
  }
  static const char *const keys[] = {"cancel_after", "reset_connection_after", "oversize",
                                     "silent_ms", NULL};
  static const fault_kind kinds[] = {FAULT_CANCEL_AFTER, FAULT_RESET_CONNECTION_AFTER,
                                     FAULT_OVERSIZE, FAULT_SILENT};
  if (n->type != YAML_MAPPING_NODE || !only_keys(r, n, "fault", keys) ||
      n->data.mapping.pairs.top - n->data.mapping.pairs.start != 1)
    return fail(r, n,
                "fault must be malformed, or one of {cancel_after: N}, "
                "{reset_connection_after: N}, {oversize: BYTES}, {silent_ms: MS}");
  for (int i = 0; keys[i]; i++) {
    const yaml_node_t *v = get(r, n, keys[i]);
    if (!v) continue;
    s->fault = kinds[i];
    return read_uint(r, v, keys[i], 1ull << 31, &s->fault_arg);
  }
  return false;
}

static bool read_metadata(reader *r, const yaml_node_t *n, scenario *s) {
  if (n->type != YAML_MAPPING_NODE) return fail(r, n, "metadata_context must be a mapping");
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    const char *ns = scalar(node(r, p->key));
    const yaml_node_t *entries = node(r, p->value);
    if (!ns || entries->type != YAML_MAPPING_NODE)
      return fail(r, entries, "metadata_context: {namespace: {key: value}}");
    for (yaml_node_pair_t *q = entries->data.mapping.pairs.start;
         q < entries->data.mapping.pairs.top; q++) {
      const char *k = scalar(node(r, q->key)), *v = scalar(node(r, q->value));
      if (!k || !v) return fail(r, entries, "metadata_context values must be strings");
      if (!pair_list_add(&s->metadata_keys, ns, k) || !pair_list_add(&s->metadata_values, k, v))
        return fail(r, entries, "out of memory");
    }
  }
  return true;
}

static const char *const scenario_keys[] = {"name",
                                            "processing_mode",
                                            "allow_mode_override",
                                            "failure_mode_allow",
                                            "observability_mode",
                                            "message_timeout_ms",
                                            "max_message_timeout_ms",
                                            "request_attributes",
                                            "response_attributes",
                                            "metadata_context",
                                            "request",
                                            "response",
                                            "pause_ms",
                                            "fault",
                                            "expect",
                                            "golden",
                                            "envoy",
                                            NULL};

/* The scenario at `n`, its missing keys taken from `defaults` (may be NULL). */
static bool read_scenario(reader *r, const yaml_node_t *n, const yaml_node_t *defaults,
                          scenario *s) {
  if (!only_keys(r, n, "a scenario", scenario_keys)) return false;
#define FIELD(key) (get(r, n, key) ? get(r, n, key) : get(r, defaults, key))
  s->line = (int)n->start_mark.line + 1;
  s->mode = (extproc_processing_mode){
      .struct_size = sizeof(s->mode),
      .request_header_mode = EXTPROC_HEADER_SEND,
      .response_header_mode = EXTPROC_HEADER_SEND,
      .request_body_mode = EXTPROC_BODY_NONE,
      .response_body_mode = EXTPROC_BODY_NONE,
      .request_trailer_mode = EXTPROC_HEADER_SKIP,
      .response_trailer_mode = EXTPROC_HEADER_SKIP,
  };
  s->message_timeout_ms = 200;
  const yaml_node_t *v;
  if (!(v = get(r, n, "name"))) return fail(r, n, "a scenario needs a name");
  if (!read_string(r, v, "name", &s->name)) return false;
  if ((v = FIELD("processing_mode")) && !read_mode(r, v, &s->mode)) return false;
  if ((v = FIELD("allow_mode_override")) &&
      !read_bool(r, v, "allow_mode_override", &s->allow_mode_override))
    return false;
  if ((v = FIELD("failure_mode_allow")) &&
      !read_bool(r, v, "failure_mode_allow", &s->failure_mode_allow))
    return false;
  if ((v = FIELD("observability_mode")) &&
      !read_bool(r, v, "observability_mode", &s->observability_mode))
    return false;
  if ((v = FIELD("message_timeout_ms")) &&
      !read_u32(r, v, "message_timeout_ms", &s->message_timeout_ms))
    return false;
  if ((v = FIELD("max_message_timeout_ms")) &&
      !read_u32(r, v, "max_message_timeout_ms", &s->max_message_timeout_ms))
    return false;
  if ((v = FIELD("pause_ms")) && !read_u32(r, v, "pause_ms", &s->pause_ms)) return false;
  if ((v = FIELD("request_attributes")) &&
      !read_pairs(r, v, "request_attributes", &s->request_attributes))
    return false;
  if ((v = FIELD("response_attributes")) &&
      !read_pairs(r, v, "response_attributes", &s->response_attributes))
    return false;
  if ((v = FIELD("metadata_context")) && !read_metadata(r, v, s)) return false;
  if (!read_message(r, FIELD("request"), "request", &s->request, true)) return false;
  if (!read_message(r, FIELD("response"), "response", &s->response, false)) return false;
  if ((v = FIELD("fault")) && !read_fault(r, v, s)) return false;
  if ((v = FIELD("expect")) && !read_expect(r, v, &s->expect)) return false;
  if ((v = FIELD("golden"))) {
    char *rel = NULL;
    if (!read_string(r, v, "golden", &rel)) return false;
    char *dir_copy = strdup(r->path);
    const char *dir = dir_copy ? dirname(dir_copy) : ".";
    const size_t len = strlen(dir) + strlen(rel) + 2;
    s->golden_path = malloc(len);
    if (s->golden_path) snprintf(s->golden_path, len, "%s/%s", rel[0] == '/' ? "" : dir, rel);
    if (s->golden_path && rel[0] == '/') snprintf(s->golden_path, len, "%s", rel);
    free(dir_copy);
    free(rel);
    if (!s->golden_path) return fail(r, v, "out of memory");
  }
  if ((v = FIELD("envoy"))) {
    /* For this project's suite: the tool checks the shape and otherwise ignores it. */
    static const char *const keys[] = {"skip", "differs", NULL};
    const yaml_node_t *skip = get(r, v, "skip"), *differs = get(r, v, "differs");
    pair_list versions = {0};
    const bool ok =
        (scalar(v) && strcmp(scalar(v), "same") == 0) ||
        (v->type == YAML_MAPPING_NODE && only_keys(r, v, "envoy", keys) && (skip || differs) &&
         (!skip || read_string(r, skip, "envoy.skip", &s->envoy_skip)) &&
         (!differs || read_pairs(r, differs, "envoy.differs", &versions)));
    pair_list_clear(&versions);
    if (!ok)
      return fail(r, v,
                  "envoy must be same, or {skip: \"why\"} and/or {differs: {\"1.36\": \"how\"}}");
  }
#undef FIELD
  if (s->mode.request_header_mode == EXTPROC_HEADER_DEFAULT)
    s->mode.request_header_mode = EXTPROC_HEADER_SEND;
  if (s->mode.response_header_mode == EXTPROC_HEADER_DEFAULT)
    s->mode.response_header_mode = EXTPROC_HEADER_SEND;
  if (s->mode.request_trailer_mode == EXTPROC_HEADER_DEFAULT)
    s->mode.request_trailer_mode = EXTPROC_HEADER_SKIP;
  if (s->mode.response_trailer_mode == EXTPROC_HEADER_DEFAULT)
    s->mode.response_trailer_mode = EXTPROC_HEADER_SKIP;
  /* Envoy refuses such a filter configuration, so no exchange could ever look like this. */
  if (s->mode.request_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED &&
      s->mode.request_trailer_mode != EXTPROC_HEADER_SEND)
    return fail(r, n,
                "FULL_DUPLEX_STREAMED request bodies need request_trailer_mode SEND "
                "(Envoy refuses the filter otherwise)");
  if (s->mode.response_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED &&
      s->mode.response_trailer_mode != EXTPROC_HEADER_SEND)
    return fail(r, n,
                "FULL_DUPLEX_STREAMED response bodies need response_trailer_mode SEND "
                "(Envoy refuses the filter otherwise)");
  s->file = strdup(r->path);
  return !r->failed && (s->file || fail(r, n, "out of memory"));
}

static void message_free(http_message *m) {
  pair_list_clear(&m->headers);
  pair_list_clear(&m->trailers);
  for (size_t i = 0; i < m->chunk_count; i++)
    byte_buf_free(&m->chunks[i]);
  free(m->chunks);
}

static void header_expects_free(header_expects *h) {
  for (size_t i = 0; i < h->count; i++) {
    for (size_t k = 0; k < h->items[i].value_count; k++)
      free(h->items[i].values[k]);
    free(h->items[i].values);
    free(h->items[i].name);
  }
  free(h->items);
}

static void side_free(side_expect *s) {
  header_expects_free(&s->headers);
  header_expects_free(&s->trailers);
  byte_buf_free(&s->body);
}

void scenario_free(scenario *s) {
  free(s->file);
  free(s->name);
  pair_list_clear(&s->request_attributes);
  pair_list_clear(&s->response_attributes);
  pair_list_clear(&s->metadata_keys);
  pair_list_clear(&s->metadata_values);
  message_free(&s->request);
  message_free(&s->response);
  side_free(&s->expect.upstream);
  side_free(&s->expect.client);
  free(s->expect.dynamic_metadata_json);
  free(s->expect.mode_override_json);
  for (size_t i = 0; i < s->expect.envoy_says_count; i++)
    free(s->expect.envoy_says[i]);
  free(s->expect.envoy_says);
  free(s->golden_path);
  free(s->envoy_skip);
}

FILE *open_regular_file(const char *path, const char *mode, size_t max_bytes, char *err,
                        size_t errlen) {
  const bool write = mode[0] == 'w';
  /* O_NONBLOCK: a FIFO must not block the open; it is refused just after. */
  const int fd = open(path,
                      write ? O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC
                            : O_RDONLY | O_NONBLOCK | O_CLOEXEC,
                      0666);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > max_bytes) {
    snprintf(err, errlen, "%s: not a regular file of at most %zu MiB", path, max_bytes >> 20);
    close(fd);
    return NULL;
  }
  fcntl(fd, F_SETFL, 0); /* blocking again, for stdio */
  FILE *f = fdopen(fd, mode);
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    close(fd);
  }
  return f;
}

int scenario_file_load(const char *path, scenario **list, size_t *count, char *err, size_t errlen) {
  reader r = {.path = path, .err = err, .errlen = errlen};
  FILE *f = open_regular_file(path, "rb", MAX_FILE_BYTES, err, errlen);
  if (!f) return -1;
  yaml_parser_t parser;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  const int loaded = yaml_parser_load(&parser, &r.doc);
  if (!loaded) {
    snprintf(err, errlen, "%s:%zu: malformed YAML: %s %s", path, parser.problem_mark.line + 1,
             parser.problem ? parser.problem : "", parser.context ? parser.context : "");
  }
  yaml_parser_delete(&parser);
  fclose(f);
  if (!loaded) return -1;

  const size_t had = *count;
  const yaml_node_t *root = yaml_document_get_root_node(&r.doc);
  static const char *const top_keys[] = {"scenarios", "defaults", "service", NULL};
  const yaml_node_t *items = root ? get(&r, root, "scenarios") : NULL;
  if (!root)
    fail(&r, NULL, "the file is empty");
  else if (only_keys(&r, root, "the file", top_keys) &&
           (!items || items->type != YAML_SEQUENCE_NODE ||
            items->data.sequence.items.top == items->data.sequence.items.start))
    fail(&r, root, "the file needs a non-empty list under `scenarios`");
  const yaml_node_t *defaults = root ? get(&r, root, "defaults") : NULL;
  if (defaults && !r.failed) {
    if (defaults->type != YAML_MAPPING_NODE)
      fail(&r, defaults, "defaults must be a mapping");
    else
      only_keys(&r, defaults, "defaults", scenario_keys + 1); /* every key but name */
  }
  for (yaml_node_item_t *i = r.failed ? NULL : items->data.sequence.items.start;
       i && i < items->data.sequence.items.top && !r.failed; i++) {
    scenario *grown = realloc(*list, (*count + 1) * sizeof(**list));
    if (!grown) {
      fail(&r, NULL, "out of memory");
      break;
    }
    *list = grown;
    scenario *s = &grown[*count];
    *s = (scenario){0};
    const bool ok = read_scenario(&r, node(&r, *i), defaults, s);
    for (size_t k = had; ok && k < *count; k++)
      if (strcmp((*list)[k].name, s->name) == 0)
        fail(&r, node(&r, *i), "two scenarios are named '%s'", s->name);
    if (!ok || r.failed) {
      scenario_free(s);
      break;
    }
    (*count)++;
  }
  yaml_document_delete(&r.doc);
  if (!r.failed) return 0;
  while (*count > had)
    scenario_free(&(*list)[--*count]);
  return -1;
}
