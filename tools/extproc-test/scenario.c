/* Scenario files (docs/scenarios.md) read with libyaml's document API: the whole file is
 * loaded as a node graph, then each scenario's keys are checked and copied into a `scenario`.
 * Every unknown key or ill-typed value is an error naming the file and line, so a typo never
 * silently turns an expectation off. */
#include "scenario.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "reader.h"

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

/* One chunk: a string, or {repeat: TEXT, bytes: N}. */
static bool read_chunk(reader *r, const yaml_node_t *n, byte_buf *out) {
  if (!byte_buf_append(out, "", 0)) return reader_fail(r, n, "out of memory");
  uint64_t bytes = 0;
  const char *text = reader_scalar(n);
  if (text) {
    bytes = strlen(text);
  } else {
    static const char *const keys[] = {"repeat", "bytes", NULL};
    if (n->type != YAML_MAPPING_NODE || !reader_only_keys(r, n, "a body chunk", keys))
      return reader_fail(r, n,
                         "a body chunk must be a string (without NUL) or {repeat: TEXT, bytes: N}");
    text = reader_scalar(reader_get(r, n, "repeat"));
    if (!text || !*text || !reader_get(r, n, "bytes"))
      return reader_fail(r, n, "a repeated chunk needs a non-empty repeat and bytes");
    if (!reader_uint(r, reader_get(r, n, "bytes"), "bytes", MAX_BODY_BYTES, &bytes)) return false;
  }
  if (bytes > MAX_BODY_BYTES - r->body_bytes)
    return reader_fail(r, n, "the file's bodies add up to more than %d MiB", MAX_BODY_BYTES >> 20);
  r->body_bytes += bytes;
  /* The text once, then what is there copied after itself, doubling. */
  const size_t tl = strlen(text), total = (size_t)bytes;
  if (!byte_buf_append(out, text, tl < total ? tl : total) ||
      !byte_buf_reserve(out, total - out->len))
    return reader_fail(r, n, "out of memory");
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
  if (!m->chunks) return reader_fail(r, n, "out of memory");
  m->chunk_count = count;
  for (size_t i = 0; i < count; i++)
    if (!read_chunk(r, list ? reader_node(r, n->data.sequence.items.start[i]) : n, &m->chunks[i]))
      return false;
  return true;
}

static bool read_message(reader *r, const yaml_node_t *n, const char *what, http_message *m,
                         bool is_request) {
  static const char *const keys[] = {"headers", "body", "trailers", NULL};
  if (n && !reader_only_keys(r, n, what, keys)) return false;
  const yaml_node_t *h = reader_get(r, n, "headers"), *b = reader_get(r, n, "body"),
                    *t = reader_get(r, n, "trailers");
  if (h && !reader_pairs(r, h, "headers", &m->headers)) return false;
  if (b && !read_body(r, b, m)) return false;
  if (t) {
    m->has_trailers = true;
    if (!reader_pairs(r, t, "trailers", &m->trailers)) return false;
  }
  /* No client or upstream could send a body its content-length contradicts. */
  const char *cl = pair_list_get(&m->headers, "content-length");
  size_t total = 0;
  for (size_t i = 0; i < m->chunk_count; i++)
    total += m->chunks[i].len;
  char want[32];
  snprintf(want, sizeof(want), "%zu", total);
  if (cl && strcmp(cl, want) != 0)
    return reader_fail(r, h, "%s: content-length is %s but the body has %zu bytes", what, cl,
                       total);
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
  return ok || reader_fail(r, n, "out of memory");
}

static bool read_header_mode(reader *r, const yaml_node_t *n, const char *what,
                             extproc_header_mode *out) {
  for (int m = 0; m < 3; m++)
    if (reader_scalar(n) && strcmp(reader_scalar(n), header_mode_name(m)) == 0) {
      *out = m;
      return true;
    }
  return reader_fail(r, n, "%s must be SEND, SKIP or DEFAULT", what);
}

static bool read_body_mode(reader *r, const yaml_node_t *n, const char *what,
                           extproc_body_mode *out) {
  for (int m = 0; m < 6; m++)
    if (reader_scalar(n) && strcmp(reader_scalar(n), body_mode_name(m)) == 0) {
      *out = m;
      return true;
    }
  return reader_fail(
      r, n, "%s must be NONE, STREAMED, BUFFERED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED or GRPC",
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
  if (!reader_only_keys(r, n, "processing_mode", mode_keys)) return false;
  extproc_header_mode *hm[] = {&m->request_header_mode,  &m->response_header_mode, NULL, NULL,
                               &m->request_trailer_mode, &m->response_trailer_mode};
  extproc_body_mode *bm[] = {NULL, NULL, &m->request_body_mode, &m->response_body_mode};
  for (int i = 0; i < 6; i++) {
    const yaml_node_t *v = reader_get(r, n, mode_keys[i]);
    if (!v) continue;
    if (hm[i] ? !read_header_mode(r, v, mode_keys[i], hm[i])
              : !read_body_mode(r, v, mode_keys[i], bm[i]))
      return false;
  }
  return true;
}

static bool read_header_expects(reader *r, const yaml_node_t *n, const char *what,
                                header_expects *out) {
  if (n->type != YAML_MAPPING_NODE) return reader_fail(r, n, "%s must be a mapping", what);
  const size_t count = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  out->items = calloc(count ? count : 1, sizeof(*out->items));
  if (!out->items) return reader_fail(r, n, "out of memory");
  for (size_t i = 0; i < count; i++) {
    const yaml_node_pair_t *p = &n->data.mapping.pairs.start[i];
    header_expect *e = &out->items[out->count++];
    const yaml_node_t *v = reader_node(r, p->value);
    if (!reader_string(r, reader_node(r, p->key), what, &e->name)) return false;
    if (reader_is_null(v)) {
      e->absent = true;
      continue;
    }
    const bool list = v->type == YAML_SEQUENCE_NODE;
    const size_t nv =
        list ? (size_t)(v->data.sequence.items.top - v->data.sequence.items.start) : 1;
    e->values = calloc(nv ? nv : 1, sizeof(char *));
    if (!e->values) return reader_fail(r, v, "out of memory");
    for (size_t k = 0; k < nv; k++, e->value_count++)
      if (!reader_string(r, list ? reader_node(r, v->data.sequence.items.start[k]) : v, e->name,
                         &e->values[k]))
        return false;
  }
  return true;
}

static bool read_side(reader *r, const yaml_node_t *n, const char *what, side_expect *s,
                      bool is_client) {
  s->given = true;
  if (reader_scalar(n) && strcmp(reader_scalar(n), "none") == 0) {
    s->not_reached = true;
    return true;
  }
  static const char *const upstream_keys[] = {"headers", "body", "trailers", NULL};
  static const char *const client_keys[] = {"status", "headers", "body", "trailers", NULL};
  if (!reader_only_keys(r, n, what, is_client ? client_keys : upstream_keys)) return false;
  const yaml_node_t *v;
  if (is_client && (v = reader_get(r, n, "status"))) {
    uint64_t status;
    if (!reader_uint(r, v, "status", 999, &status)) return false;
    s->status = (int)status;
  }
  if ((v = reader_get(r, n, "headers")) && !read_header_expects(r, v, "headers", &s->headers))
    return false;
  if ((v = reader_get(r, n, "trailers")) && !read_header_expects(r, v, "trailers", &s->trailers))
    return false;
  if ((v = reader_get(r, n, "body"))) {
    s->has_body = true;
    if (!read_chunk(r, v, &s->body)) return false;
  }
  return true;
}

static bool read_expect(reader *r, const yaml_node_t *n, scenario_expect *e) {
  static const char *const keys[] = {"upstream",      "client",      "dynamic_metadata",
                                     "mode_override", "grpc_status", "keeps_serving",
                                     "envoy_says",    NULL};
  if (!reader_only_keys(r, n, "expect", keys)) return false;
  const yaml_node_t *v;
  if ((v = reader_get(r, n, "upstream")) &&
      !read_side(r, v, "expect.upstream", &e->upstream, false))
    return false;
  if ((v = reader_get(r, n, "client")) && !read_side(r, v, "expect.client", &e->client, true))
    return false;
  if ((v = reader_get(r, n, "dynamic_metadata")) &&
      !reader_json(r, v, "dynamic_metadata", &e->dynamic_metadata_json))
    return false;
  if ((v = reader_get(r, n, "mode_override"))) {
    if (!reader_only_keys(r, v, "mode_override", mode_keys)) return false;
    if (!reader_json(r, v, "mode_override", &e->mode_override_json)) return false;
  }
  if ((v = reader_get(r, n, "grpc_status"))) {
    const char *s = reader_scalar(v);
    uint64_t code = 0;
    e->has_grpc_status = true;
    if (s && strcmp(s, "-1") == 0)
      e->grpc_status = -1;
    else if (reader_uint(r, v, "grpc_status", 16, &code))
      e->grpc_status = (int)code;
    else
      return false;
  }
  if ((v = reader_get(r, n, "keeps_serving"))) {
    e->has_keeps_serving = true;
    if (!reader_bool(r, v, "keeps_serving", &e->keeps_serving)) return false;
  }
  if ((v = reader_get(r, n, "envoy_says"))) {
    if (v->type != YAML_SEQUENCE_NODE)
      return reader_fail(r, v, "envoy_says must be a list of codes");
    const size_t count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    e->envoy_says = calloc(count ? count : 1, sizeof(char *));
    if (!e->envoy_says) return reader_fail(r, v, "out of memory");
    for (size_t i = 0; i < count; i++, e->envoy_says_count++)
      if (!reader_string(r, reader_node(r, v->data.sequence.items.start[i]), "envoy_says",
                         &e->envoy_says[i]))
        return false;
  }
  return true;
}

static bool read_fault(reader *r, const yaml_node_t *n, scenario *s) {
  if (reader_scalar(n) && strcmp(reader_scalar(n), "malformed") == 0) {
    s->fault = FAULT_MALFORMED;
    return true;
  }
  static const char *const keys[] = {"cancel_after", "reset_connection_after", "oversize",
                                     "silent_ms", NULL};
  static const fault_kind kinds[] = {FAULT_CANCEL_AFTER, FAULT_RESET_CONNECTION_AFTER,
                                     FAULT_OVERSIZE, FAULT_SILENT};
  if (n->type != YAML_MAPPING_NODE || !reader_only_keys(r, n, "fault", keys) ||
      n->data.mapping.pairs.top - n->data.mapping.pairs.start != 1)
    return reader_fail(r, n,
                       "fault must be malformed, or one of {cancel_after: N}, "
                       "{reset_connection_after: N}, {oversize: BYTES}, {silent_ms: MS}");
  for (int i = 0; keys[i]; i++) {
    const yaml_node_t *v = reader_get(r, n, keys[i]);
    if (!v) continue;
    s->fault = kinds[i];
    return reader_uint(r, v, keys[i], 1ull << 31, &s->fault_arg);
  }
  return false;
}

static bool read_metadata(reader *r, const yaml_node_t *n, scenario *s) {
  if (n->type != YAML_MAPPING_NODE) return reader_fail(r, n, "metadata_context must be a mapping");
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    const char *ns = reader_scalar(reader_node(r, p->key));
    const yaml_node_t *entries = reader_node(r, p->value);
    if (!ns || entries->type != YAML_MAPPING_NODE)
      return reader_fail(r, entries, "metadata_context: {namespace: {key: value}}");
    for (yaml_node_pair_t *q = entries->data.mapping.pairs.start;
         q < entries->data.mapping.pairs.top; q++) {
      const char *k = reader_scalar(reader_node(r, q->key)),
                 *v = reader_scalar(reader_node(r, q->value));
      if (!k || !v) return reader_fail(r, entries, "metadata_context values must be strings");
      if (!pair_list_add(&s->metadata_keys, ns, k) || !pair_list_add(&s->metadata_values, k, v))
        return reader_fail(r, entries, "out of memory");
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
  if (!reader_only_keys(r, n, "a scenario", scenario_keys)) return false;
#define FIELD(key) (reader_get(r, n, key) ? reader_get(r, n, key) : reader_get(r, defaults, key))
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
  if (!(v = reader_get(r, n, "name"))) return reader_fail(r, n, "a scenario needs a name");
  if (!reader_string(r, v, "name", &s->name)) return false;
  if ((v = FIELD("processing_mode")) && !read_mode(r, v, &s->mode)) return false;
  if ((v = FIELD("allow_mode_override")) &&
      !reader_bool(r, v, "allow_mode_override", &s->allow_mode_override))
    return false;
  if ((v = FIELD("failure_mode_allow")) &&
      !reader_bool(r, v, "failure_mode_allow", &s->failure_mode_allow))
    return false;
  if ((v = FIELD("observability_mode")) &&
      !reader_bool(r, v, "observability_mode", &s->observability_mode))
    return false;
  if ((v = FIELD("message_timeout_ms")) &&
      !reader_u32(r, v, "message_timeout_ms", &s->message_timeout_ms))
    return false;
  if ((v = FIELD("max_message_timeout_ms")) &&
      !reader_u32(r, v, "max_message_timeout_ms", &s->max_message_timeout_ms))
    return false;
  if ((v = FIELD("pause_ms")) && !reader_u32(r, v, "pause_ms", &s->pause_ms)) return false;
  if ((v = FIELD("request_attributes")) &&
      !reader_pairs(r, v, "request_attributes", &s->request_attributes))
    return false;
  if ((v = FIELD("response_attributes")) &&
      !reader_pairs(r, v, "response_attributes", &s->response_attributes))
    return false;
  if ((v = FIELD("metadata_context")) && !read_metadata(r, v, s)) return false;
  if (!read_message(r, FIELD("request"), "request", &s->request, true)) return false;
  if (!read_message(r, FIELD("response"), "response", &s->response, false)) return false;
  if ((v = FIELD("fault")) && !read_fault(r, v, s)) return false;
  if ((v = FIELD("expect")) && !read_expect(r, v, &s->expect)) return false;
  if ((v = FIELD("golden"))) {
    char *rel = NULL;
    if (!reader_string(r, v, "golden", &rel)) return false;
    char *dir_copy = strdup(r->path);
    const char *dir = dir_copy ? dirname(dir_copy) : ".";
    const size_t len = strlen(dir) + strlen(rel) + 2;
    s->golden_path = malloc(len);
    if (s->golden_path) snprintf(s->golden_path, len, "%s/%s", rel[0] == '/' ? "" : dir, rel);
    if (s->golden_path && rel[0] == '/') snprintf(s->golden_path, len, "%s", rel);
    free(dir_copy);
    free(rel);
    if (!s->golden_path) return reader_fail(r, v, "out of memory");
  }
  if ((v = FIELD("envoy"))) {
    /* For this project's suite: the tool checks the shape and otherwise ignores it. */
    static const char *const keys[] = {"skip", "differs", NULL};
    const yaml_node_t *skip = reader_get(r, v, "skip"), *differs = reader_get(r, v, "differs");
    pair_list versions = {0};
    const bool ok =
        (reader_scalar(v) && strcmp(reader_scalar(v), "same") == 0) ||
        (v->type == YAML_MAPPING_NODE && reader_only_keys(r, v, "envoy", keys) &&
         (skip || differs) && (!skip || reader_string(r, skip, "envoy.skip", &s->envoy_skip)) &&
         (!differs || reader_pairs(r, differs, "envoy.differs", &versions)));
    pair_list_clear(&versions);
    if (!ok)
      return reader_fail(
          r, v, "envoy must be same, or {skip: \"why\"} and/or {differs: {\"1.36\": \"how\"}}");
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
    return reader_fail(r, n,
                       "FULL_DUPLEX_STREAMED request bodies need request_trailer_mode SEND "
                       "(Envoy refuses the filter otherwise)");
  if (s->mode.response_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED &&
      s->mode.response_trailer_mode != EXTPROC_HEADER_SEND)
    return reader_fail(r, n,
                       "FULL_DUPLEX_STREAMED response bodies need response_trailer_mode SEND "
                       "(Envoy refuses the filter otherwise)");
  s->file = strdup(r->path);
  return !r->failed && (s->file || reader_fail(r, n, "out of memory"));
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

/* libyaml's scanner takes time quadratic in the nesting of flow collections: a 250 KB file of
 * nested `{a: ` would take minutes to load. Its events are walked first, and a file nested
 * deeper than any scenario needs is refused as soon as it is seen. Rewinds `f`. */
static bool nesting_ok(FILE *f, const char *path, char *err, size_t errlen) {
  enum { MAX_NESTING = 64 };
  yaml_parser_t parser;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  bool ok = true, done = false;
  for (int depth = 0; ok && !done;) {
    yaml_event_t event;
    if (!yaml_parser_parse(&parser, &event)) break; /* the loader reports it, with its line */
    if (event.type == YAML_SEQUENCE_START_EVENT || event.type == YAML_MAPPING_START_EVENT)
      depth++;
    else if (event.type == YAML_SEQUENCE_END_EVENT || event.type == YAML_MAPPING_END_EVENT)
      depth--;
    done = event.type == YAML_STREAM_END_EVENT;
    if (depth > MAX_NESTING) {
      snprintf(err, errlen, "%s:%zu: nested deeper than %d levels", path, event.start_mark.line + 1,
               MAX_NESTING);
      ok = false;
    }
    yaml_event_delete(&event);
  }
  yaml_parser_delete(&parser);
  rewind(f);
  return ok;
}

int scenario_file_load(const char *path, scenario **list, size_t *count, char *err, size_t errlen) {
  reader r = {.path = path, .err = err, .errlen = errlen};
  FILE *f = open_regular_file(path, "rb", MAX_FILE_BYTES, err, errlen);
  if (!f) return -1;
  if (!nesting_ok(f, path, err, errlen)) {
    fclose(f);
    return -1;
  }
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
  const yaml_node_t *items = root ? reader_get(&r, root, "scenarios") : NULL;
  if (!root)
    reader_fail(&r, NULL, "the file is empty");
  else if (reader_only_keys(&r, root, "the file", top_keys) &&
           (!items || items->type != YAML_SEQUENCE_NODE ||
            items->data.sequence.items.top == items->data.sequence.items.start))
    reader_fail(&r, root, "the file needs a non-empty list under `scenarios`");
  const yaml_node_t *defaults = root ? reader_get(&r, root, "defaults") : NULL;
  if (defaults && !r.failed) {
    if (defaults->type != YAML_MAPPING_NODE)
      reader_fail(&r, defaults, "defaults must be a mapping");
    else
      reader_only_keys(&r, defaults, "defaults", scenario_keys + 1); /* every key but name */
  }
  for (yaml_node_item_t *i = r.failed ? NULL : items->data.sequence.items.start;
       i && i < items->data.sequence.items.top && !r.failed; i++) {
    scenario *grown = realloc(*list, (*count + 1) * sizeof(**list));
    if (!grown) {
      reader_fail(&r, NULL, "out of memory");
      break;
    }
    *list = grown;
    scenario *s = &grown[*count];
    *s = (scenario){0};
    const bool ok = read_scenario(&r, reader_node(&r, *i), defaults, s);
    for (size_t k = had; ok && k < *count; k++)
      if (strcmp((*list)[k].name, s->name) == 0)
        reader_fail(&r, reader_node(&r, *i), "two scenarios are named '%s'", s->name);
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
