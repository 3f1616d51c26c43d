/* The messages of each shape, as Envoy's ext_proc filter sends them: header values in raw_value
 * only, protocol_config on the first message, end_of_stream where Envoy sets it. */
#include "script.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/arena.h"
#include "testing/envoy_request.h"
#include "transport/grpc_frame.h"

enum { MAX_HEADERS = 16 };

typedef struct kv {
  const char *key, *value;
} kv;

/* Placeholder for the per-stream x-request-id; found in the encoded message, then patched. */
static const char REQUEST_ID_MARK[] = "ffffffff-ffff-4fff-bfff-ffffffffffff";

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

/* The ProcessingResponse oneof case that answers each phase. */
static const int ANSWER[EXTPROC_PHASE_COUNT] = {
    [EXTPROC_REQUEST_HEADERS] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS,
    [EXTPROC_REQUEST_BODY] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY,
    [EXTPROC_REQUEST_TRAILERS] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS,
    [EXTPROC_RESPONSE_HEADERS] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS,
    [EXTPROC_RESPONSE_BODY] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY,
    [EXTPROC_RESPONSE_TRAILERS] =
        ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS,
};

/* The body modes a first message announces in its protocol_config. */
typedef struct body_modes {
  extproc_body_mode request, response;
} body_modes;

/* Encodes `msg` (NULL: building it ran out of memory) behind a gRPC prefix into
 * s->messages[s->count++]. */
static bool add_message(lg_script *s, arena *a, extproc_phase phase, const envoy_request *msg) {
  size_t len;
  const uint8_t *bytes = msg ? envoy_request_encode(a, msg, &len) : NULL;
  uint8_t *data = bytes ? malloc(GRPC_PREFIX_BYTES + len) : NULL;
  if (!data) return false;
  grpc_write_prefix(data, (uint32_t)len);
  memcpy(data + GRPC_PREFIX_BYTES, bytes, len);
  s->messages[s->count++] =
      (lg_message){data, GRPC_PREFIX_BYTES + len, ANSWER[phase], extproc_phase_name(phase)};
  return true;
}

/* Headers or trailers of `n` pairs: a NULL value becomes `length_text`, or the pair is left out
 * when length_text is NULL. `modes` (may be NULL) goes in protocol_config. */
static bool add_headers(lg_script *s, arena *a, extproc_phase phase, const kv *pairs, size_t n,
                        const char *length_text, bool end_of_stream, const body_modes *modes) {
  const char *flat[2 * MAX_HEADERS];
  size_t kept = 0;
  for (size_t i = 0; i < n && kept < MAX_HEADERS; i++) {
    const char *value = pairs[i].value ? pairs[i].value : length_text;
    if (!value) continue;
    flat[2 * kept] = pairs[i].key;
    flat[2 * kept++ + 1] = value;
  }
  envoy_request *msg = envoy_request_headers(a, phase, flat, kept, end_of_stream);
  if (msg && modes && !envoy_request_set_protocol_config(a, msg, modes->request, modes->response))
    return false;
  return add_message(s, a, phase, msg);
}

static bool add_body(lg_script *s, arena *a, extproc_phase phase, const uint8_t *data, size_t len,
                     bool end_of_stream) {
  return add_message(s, a, phase, envoy_request_body(a, phase, data, len, end_of_stream));
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

static bool build(lg_script *s, arena *a, size_t body_bytes, size_t chunk_bytes, uint8_t *body) {
  char length_text[24];
  snprintf(length_text, sizeof(length_text), "%zu", body_bytes);
  switch (s->shape) {
  case SHAPE_HEADERS: {
    const body_modes modes = {EXTPROC_BODY_NONE, EXTPROC_BODY_NONE};
    return add_headers(s, a, EXTPROC_REQUEST_HEADERS, GET_REQUEST, COUNT(GET_REQUEST), NULL, true,
                       &modes) &&
           add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
  }
  case SHAPE_FULL: {
    /* Trailers follow each body, so Envoy sends the buffered body with end_of_stream false
     * and the trailers end the direction. */
    const body_modes modes = {EXTPROC_BODY_BUFFERED, EXTPROC_BODY_BUFFERED};
    return add_headers(s, a, EXTPROC_REQUEST_HEADERS, POST_REQUEST, COUNT(POST_REQUEST),
                       length_text, false, &modes) &&
           add_body(s, a, EXTPROC_REQUEST_BODY, body, body_bytes, false) &&
           add_headers(s, a, EXTPROC_REQUEST_TRAILERS, REQUEST_TRAILERS, COUNT(REQUEST_TRAILERS),
                       NULL, false, NULL) &&
           add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), length_text,
                       false, NULL) &&
           add_body(s, a, EXTPROC_RESPONSE_BODY, body, body_bytes, false) &&
           add_headers(s, a, EXTPROC_RESPONSE_TRAILERS, RESPONSE_TRAILERS, COUNT(RESPONSE_TRAILERS),
                       NULL, false, NULL);
  }
  case SHAPE_STREAMED: {
    const body_modes modes = {EXTPROC_BODY_STREAMED, EXTPROC_BODY_NONE};
    if (!add_headers(s, a, EXTPROC_REQUEST_HEADERS, POST_REQUEST, COUNT(POST_REQUEST), NULL, false,
                     &modes))
      return false;
    for (size_t off = 0; off < body_bytes; off += chunk_bytes) {
      const size_t n = body_bytes - off < chunk_bytes ? body_bytes - off : chunk_bytes;
      if (!add_body(s, a, EXTPROC_REQUEST_BODY, body + off, n, off + n == body_bytes)) return false;
    }
    return add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
  }
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
  arena a; /* the messages before they are encoded */
  arena_init(&a, ARENA_CACHED_BLOCK);
  const bool ok = s->messages && body && build(s, &a, body_bytes, chunk_bytes, body);
  arena_free(&a);
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
