/* The messages of each shape, as Envoy's ext_proc filter sends them: header values in raw_value
 * only, protocol_config on the first message, end_of_stream where Envoy sets it. */
#include "script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;
typedef Envoy__Service__ExtProc__V3__HttpHeaders HttpHeaders;
typedef Envoy__Service__ExtProc__V3__HttpBody HttpBody;
typedef Envoy__Service__ExtProc__V3__HttpTrailers HttpTrailers;
typedef Envoy__Service__ExtProc__V3__ProtocolConfiguration ProtocolConfiguration;
typedef Envoy__Config__Core__V3__HeaderMap HeaderMap;
typedef Envoy__Config__Core__V3__HeaderValue HeaderValue;

typedef Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode__BodySendMode BodySendMode;

static const BodySendMode MODE_NONE =
    ENVOY__EXTENSIONS__FILTERS__HTTP__EXT_PROC__V3__PROCESSING_MODE__BODY_SEND_MODE__NONE;
static const BodySendMode MODE_STREAMED =
    ENVOY__EXTENSIONS__FILTERS__HTTP__EXT_PROC__V3__PROCESSING_MODE__BODY_SEND_MODE__STREAMED;
static const BodySendMode MODE_BUFFERED =
    ENVOY__EXTENSIONS__FILTERS__HTTP__EXT_PROC__V3__PROCESSING_MODE__BODY_SEND_MODE__BUFFERED;

enum { MAX_HEADERS = 16 };

/* Placeholder for the per-stream x-request-id; found in the encoded message, then patched. */
static const char REQUEST_ID_MARK[] = "ffffffff-ffff-4fff-bfff-ffffffffffff";

typedef struct kv {
  const char *key, *value;
} kv;

/* What Envoy forwards for a GET through a typical HTTP connection manager. */
static const kv GET_REQUEST[] = {
    {":authority", "api.example.com"},
    {":path", "/api/v1/items/42?expand=owner"},
    {":method", "GET"},
    {":scheme", "https"},
    {"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"},
    {"accept", "application/json"},
    {"accept-encoding", "gzip, deflate, br"},
    {"x-forwarded-proto", "https"},
    {"x-request-id", REQUEST_ID_MARK},
    {"x-envoy-expected-rq-timeout-ms", "15000"},
};

static const kv POST_REQUEST[] = {
    {":authority", "api.example.com"},
    {":path", "/api/v1/items"},
    {":method", "POST"},
    {":scheme", "https"},
    {"user-agent", "example-client/2.3.1"},
    {"content-type", "application/octet-stream"},
    {"content-length", NULL}, /* the body size; Envoy drops it in STREAMED mode */
    {"x-forwarded-proto", "https"},
    {"x-request-id", REQUEST_ID_MARK},
    {"x-envoy-expected-rq-timeout-ms", "15000"},
};

static const kv RESPONSE[] = {
    {":status", "200"},
    {"content-type", "application/json"},
    {"content-length", NULL}, /* the body size */
    {"date", "Sun, 29 Nov 2026 18:58:51 GMT"},
    {"server", "envoy"},
    {"cache-control", "private, max-age=0"},
    {"vary", "accept-encoding"},
    {"etag", "\"5f2b9c1e-1d5\""},
    {"x-envoy-upstream-service-time", "3"},
    {"strict-transport-security", "max-age=63072000"},
};

static const kv REQUEST_TRAILERS[] = {{"x-checksum", "sha256=2c26b46b68ffc68ff99b453c1d304134"}};
static const kv RESPONSE_TRAILERS[] = {{"x-checksum", "sha256=fcde2b2edba56bf408601fb721fe9b5c"},
                                       {"x-processing-time-ms", "12"}};

const char *shape_name(lg_shape shape) {
  switch (shape) {
  case SHAPE_HEADERS: return "headers";
  case SHAPE_FULL: return "full";
  case SHAPE_STREAMED: return "streamed";
  }
  return "?";
}

/* The header map of `n` pairs (a NULL value becomes `length`, or the pair is left out when
 * length_text is NULL), values in raw_value only. */
typedef struct header_set {
  HeaderMap map;
  HeaderValue values[MAX_HEADERS];
  HeaderValue *ptrs[MAX_HEADERS];
} header_set;

static void header_set_init(header_set *h, const kv *pairs, size_t n, const char *length_text) {
  envoy__config__core__v3__header_map__init(&h->map);
  h->map.headers = h->ptrs;
  for (size_t i = 0; i < n && h->map.n_headers < MAX_HEADERS; i++) {
    const char *value = pairs[i].value ? pairs[i].value : length_text;
    if (!value) continue;
    HeaderValue *v = &h->values[h->map.n_headers];
    envoy__config__core__v3__header_value__init(v);
    v->key = (char *)pairs[i].key;
    v->raw_value.data = (uint8_t *)value;
    v->raw_value.len = strlen(value);
    h->ptrs[h->map.n_headers++] = v;
  }
}

/* Encodes msg behind a gRPC prefix into s->messages[s->count++]. */
static bool add_message(lg_script *s, const ProcessingRequest *msg, int expect, const char *phase) {
  const size_t body = envoy__service__ext_proc__v3__processing_request__get_packed_size(msg);
  uint8_t *data = malloc(5 + body);
  if (!data) return false;
  data[0] = 0;
  data[1] = (uint8_t)(body >> 24);
  data[2] = (uint8_t)(body >> 16);
  data[3] = (uint8_t)(body >> 8);
  data[4] = (uint8_t)body;
  envoy__service__ext_proc__v3__processing_request__pack(msg, data + 5);
  s->messages[s->count++] = (lg_message){data, 5 + body, expect, phase};
  return true;
}

static bool add_headers(lg_script *s, bool response, const kv *pairs, size_t n,
                        const char *length_text, bool end_of_stream,
                        ProtocolConfiguration *config) {
  header_set set;
  header_set_init(&set, pairs, n, length_text);
  HttpHeaders headers = ENVOY__SERVICE__EXT_PROC__V3__HTTP_HEADERS__INIT;
  headers.headers = &set.map;
  headers.end_of_stream = end_of_stream;
  ProcessingRequest msg = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  msg.protocol_config = config;
  if (response) {
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS;
    msg.response_headers = &headers;
    return add_message(s, &msg,
                       ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS,
                       "response_headers");
  }
  msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS;
  msg.request_headers = &headers;
  return add_message(s, &msg,
                     ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS,
                     "request_headers");
}

static bool add_body(lg_script *s, bool response, const uint8_t *data, size_t len,
                     bool end_of_stream) {
  HttpBody body = ENVOY__SERVICE__EXT_PROC__V3__HTTP_BODY__INIT;
  body.body.data = (uint8_t *)data;
  body.body.len = len;
  body.end_of_stream = end_of_stream;
  ProcessingRequest msg = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  if (response) {
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY;
    msg.response_body = &body;
    return add_message(s, &msg,
                       ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY,
                       "response_body");
  }
  msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY;
  msg.request_body = &body;
  return add_message(s, &msg,
                     ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY,
                     "request_body");
}

static bool add_trailers(lg_script *s, bool response, const kv *pairs, size_t n) {
  header_set set;
  header_set_init(&set, pairs, n, NULL);
  HttpTrailers trailers = ENVOY__SERVICE__EXT_PROC__V3__HTTP_TRAILERS__INIT;
  trailers.trailers = &set.map;
  ProcessingRequest msg = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__INIT;
  if (response) {
    msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_TRAILERS;
    msg.response_trailers = &trailers;
    return add_message(
        s, &msg, ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS,
        "response_trailers");
  }
  msg.request_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_TRAILERS;
  msg.request_trailers = &trailers;
  return add_message(s, &msg,
                     ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS,
                     "request_trailers");
}

/* A body of printable, JSON-ish filler. */
static uint8_t *make_body(size_t len) {
  uint8_t *b = malloc(len ? len : 1);
  if (!b) return NULL;
  static const char pattern[] = "{\"id\":42,\"name\":\"widget\",\"tags\":[\"a\",\"b\"]}\n";
  for (size_t i = 0; i < len; i++)
    b[i] = (uint8_t)pattern[i % (sizeof(pattern) - 1)];
  return b;
}

static size_t find_mark(const uint8_t *data, size_t len) {
  const size_t mark = sizeof(REQUEST_ID_MARK) - 1;
  for (size_t i = 0; i + mark <= len; i++)
    if (memcmp(data + i, REQUEST_ID_MARK, mark) == 0) return i;
  return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static bool build(lg_script *s, size_t body_bytes, size_t chunk_bytes, uint8_t *body) {
  ProtocolConfiguration config = ENVOY__SERVICE__EXT_PROC__V3__PROTOCOL_CONFIGURATION__INIT;
  char length_text[24];
  snprintf(length_text, sizeof(length_text), "%zu", body_bytes);
  switch (s->shape) {
  case SHAPE_HEADERS:
    config.request_body_mode = MODE_NONE;
    config.response_body_mode = MODE_NONE;
    return add_headers(s, false, GET_REQUEST, COUNT(GET_REQUEST), NULL, true, &config) &&
           add_headers(s, true, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
  case SHAPE_FULL:
    /* Trailers follow each body, so Envoy sends the buffered body with end_of_stream false
     * and the trailers end the direction. */
    config.request_body_mode = MODE_BUFFERED;
    config.response_body_mode = MODE_BUFFERED;
    return add_headers(s, false, POST_REQUEST, COUNT(POST_REQUEST), length_text, false, &config) &&
           add_body(s, false, body, body_bytes, false) &&
           add_trailers(s, false, REQUEST_TRAILERS, COUNT(REQUEST_TRAILERS)) &&
           add_headers(s, true, RESPONSE, COUNT(RESPONSE), length_text, false, NULL) &&
           add_body(s, true, body, body_bytes, false) &&
           add_trailers(s, true, RESPONSE_TRAILERS, COUNT(RESPONSE_TRAILERS));
  case SHAPE_STREAMED:
    config.request_body_mode = MODE_STREAMED;
    config.response_body_mode = MODE_NONE;
    if (!add_headers(s, false, POST_REQUEST, COUNT(POST_REQUEST), NULL, false, &config))
      return false;
    for (size_t off = 0; off < body_bytes; off += chunk_bytes) {
      const size_t n = body_bytes - off < chunk_bytes ? body_bytes - off : chunk_bytes;
      if (!add_body(s, false, body + off, n, off + n == body_bytes)) return false;
    }
    return add_headers(s, true, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
  }
  return false;
}

bool script_build(lg_script *s, lg_shape shape, size_t body_bytes, size_t chunk_bytes) {
  memset(s, 0, sizeof(*s));
  s->shape = shape;
  if (shape == SHAPE_STREAMED && (body_bytes == 0 || chunk_bytes == 0)) {
    fprintf(stderr, "extproc-load: the streamed shape needs --body-bytes and --chunk-bytes > 0\n");
    return false;
  }
  size_t max = 6;
  if (shape == SHAPE_STREAMED) max = 2 + (body_bytes + chunk_bytes - 1) / chunk_bytes;
  s->messages = calloc(max, sizeof(*s->messages));
  uint8_t *body = make_body(body_bytes);
  const bool ok = s->messages && body && build(s, body_bytes, chunk_bytes, body);
  free(body);
  if (ok) s->request_id_offset = find_mark(s->messages[0].data, s->messages[0].len);
  if (!ok || s->request_id_offset == 0) {
    fprintf(stderr, "extproc-load: out of memory building the messages\n");
    script_free(s);
    return false;
  }
  return true;
}

void script_free(lg_script *s) {
  for (size_t i = 0; i < s->count; i++)
    free(s->messages[i].data);
  free(s->messages);
  memset(s, 0, sizeof(*s));
}

static void hex(char *out, uint64_t v, int digits) {
  static const char digit[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; i--, v >>= 4)
    out[i] = digit[v & 15];
}

void script_request_id(char *out, uint64_t seed, uint64_t n) {
  /* xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx: version 4 layout, the stream number in the tail. */
  const uint64_t mix = seed ^ (n * 0x9e3779b97f4a7c15ull);
  hex(out, mix >> 32, 8);
  out[8] = '-';
  hex(out + 9, mix >> 16, 4);
  out[13] = '-';
  out[14] = '4';
  hex(out + 15, mix, 3);
  out[18] = '-';
  out[19] = '8';
  hex(out + 20, seed >> 52, 3);
  out[23] = '-';
  hex(out + 24, n, 12);
}
