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
    {"content-length", NULL}, /* the body size; in the streaming body modes Envoy removes it
                               * only after sending the headers to the processor */
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

static const char *const SHAPE_NAMES[] = {[SHAPE_HEADERS] = "headers",
                                          [SHAPE_FULL] = "full",
                                          [SHAPE_STREAMED] = "streamed",
                                          [SHAPE_DUPLEX] = "duplex",
                                          [SHAPE_BUFFERED] = "buffered"};

const char *shape_name(lg_shape shape) {
  return (unsigned)shape < sizeof(SHAPE_NAMES) / sizeof(SHAPE_NAMES[0]) ? SHAPE_NAMES[shape] : "?";
}

bool shape_named(const char *name, lg_shape *out) {
  for (size_t i = 0; i < sizeof(SHAPE_NAMES) / sizeof(SHAPE_NAMES[0]); i++)
    if (strcmp(name, SHAPE_NAMES[i]) == 0) {
      *out = (lg_shape)i;
      return true;
    }
  return false;
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
 * s->messages[s->count++], and returns it (NULL when out of memory). */
static lg_message *add_message(lg_script *s, arena *a, extproc_phase phase,
                               const envoy_request *msg) {
  size_t len;
  const uint8_t *bytes = msg ? envoy_request_encode(a, msg, &len) : NULL;
  uint8_t *data = bytes ? malloc(GRPC_PREFIX_BYTES + len) : NULL;
  if (!data) return NULL;
  grpc_write_prefix(data, (uint32_t)len);
  memcpy(data + GRPC_PREFIX_BYTES, bytes, len);
  lg_message *m = &s->messages[s->count++];
  *m = (lg_message){.data = data,
                    .len = GRPC_PREFIX_BYTES + len,
                    .expect = ANSWER[phase],
                    .phase = extproc_phase_name(phase)};
  return m;
}

/* Headers or trailers of `n` pairs: a NULL value becomes `length_text`, or the pair is left out
 * when length_text is NULL. `modes` (may be NULL) goes in protocol_config. */
static lg_message *add_headers(lg_script *s, arena *a, extproc_phase phase, const kv *pairs,
                               size_t n, const char *length_text, bool end_of_stream,
                               const body_modes *modes) {
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
    return NULL;
  return add_message(s, a, phase, msg);
}

/* One body message: `len` bytes of the body from `off`. */
static lg_message *add_body(lg_script *s, arena *a, extproc_phase phase, size_t off, size_t len,
                            bool end_of_stream) {
  lg_message *m =
      add_message(s, a, phase, envoy_request_body(a, phase, s->body + off, len, end_of_stream));
  if (!m) return NULL;
  m->is_body = true;
  m->body_off = off;
  m->body_len = len;
  s->body_bytes_per_stream += len;
  return m;
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

static uint8_t *make_upper(const uint8_t *body, size_t len) {
  uint8_t *u = malloc(len ? len : 1);
  if (!u) return NULL;
  for (size_t i = 0; i < len; i++)
    u[i] = body[i] >= 'a' && body[i] <= 'z' ? (uint8_t)(body[i] - 32) : body[i];
  return u;
}

static size_t find_mark(const uint8_t *data, size_t len) {
  const size_t mark = sizeof(REQUEST_ID_MARK) - 1;
  for (size_t i = 0; i + mark <= len; i++)
    if (memcmp(data + i, REQUEST_ID_MARK, mark) == 0) return i;
  return 0;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* STREAMED or FULL_DUPLEX_STREAMED: the request body in chunk_bytes chunks. In STREAMED Envoy
 * waits for the headers' reply, then sends every chunk as it has it (here: all at once, flow
 * control permitting), one reply each; in FULL_DUPLEX_STREAMED it does not wait for the headers'
 * reply either, and the replies are streamed pieces. Then the response headers. */
static bool build_chunked(lg_script *s, arena *a, size_t chunk_bytes, const char *length_text) {
  const bool duplex = s->shape == SHAPE_DUPLEX;
  const body_modes modes = {duplex ? EXTPROC_BODY_FULL_DUPLEX_STREAMED : EXTPROC_BODY_STREAMED,
                            EXTPROC_BODY_NONE};
  lg_message *headers = add_headers(s, a, EXTPROC_REQUEST_HEADERS, POST_REQUEST,
                                    COUNT(POST_REQUEST), length_text, false, &modes);
  if (!headers) return false;
  headers->no_wait = duplex;
  const size_t first = s->count, chunks = (s->body_bytes + chunk_bytes - 1) / chunk_bytes;
  for (size_t off = 0; off < s->body_bytes; off += chunk_bytes) {
    const size_t n = s->body_bytes - off < chunk_bytes ? s->body_bytes - off : chunk_bytes;
    const bool last = off + n == s->body_bytes;
    lg_message *m = add_body(s, a, EXTPROC_REQUEST_BODY, off, n, last);
    if (!m) return false;
    m->no_wait = !last;
    m->duplex = duplex;
    m->duplex_end = first + chunks;
  }
  return add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
}

static bool build(lg_script *s, arena *a, size_t chunk_bytes) {
  char length_text[24];
  snprintf(length_text, sizeof(length_text), "%zu", s->body_bytes);
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
           add_body(s, a, EXTPROC_REQUEST_BODY, 0, s->body_bytes, false) &&
           add_headers(s, a, EXTPROC_REQUEST_TRAILERS, REQUEST_TRAILERS, COUNT(REQUEST_TRAILERS),
                       NULL, false, NULL) &&
           add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), length_text,
                       false, NULL) &&
           add_body(s, a, EXTPROC_RESPONSE_BODY, 0, s->body_bytes, false) &&
           add_headers(s, a, EXTPROC_RESPONSE_TRAILERS, RESPONSE_TRAILERS, COUNT(RESPONSE_TRAILERS),
                       NULL, false, NULL);
  }
  case SHAPE_STREAMED:
  case SHAPE_DUPLEX: return build_chunked(s, a, chunk_bytes, length_text);
  case SHAPE_BUFFERED: {
    /* No trailers: the whole body in one message that ends the request. */
    const body_modes modes = {EXTPROC_BODY_BUFFERED, EXTPROC_BODY_NONE};
    return add_headers(s, a, EXTPROC_REQUEST_HEADERS, POST_REQUEST, COUNT(POST_REQUEST),
                       length_text, false, &modes) &&
           add_body(s, a, EXTPROC_REQUEST_BODY, 0, s->body_bytes, true) &&
           add_headers(s, a, EXTPROC_RESPONSE_HEADERS, RESPONSE, COUNT(RESPONSE), "0", true, NULL);
  }
  }
  return false;
}

bool script_build(lg_script *s, lg_shape shape, size_t body_bytes, size_t chunk_bytes) {
  memset(s, 0, sizeof(*s));
  s->shape = shape;
  const bool chunked = shape == SHAPE_STREAMED || shape == SHAPE_DUPLEX;
  if (chunked && (body_bytes == 0 || chunk_bytes == 0)) {
    fprintf(stderr, "extproc-load: the %s shape needs --body-bytes and --chunk-bytes > 0\n",
            shape_name(shape));
    return false;
  }
  size_t max = 6;
  if (chunked) max = 2 + (body_bytes + chunk_bytes - 1) / chunk_bytes;
  s->messages = calloc(max, sizeof(*s->messages));
  s->body_bytes = body_bytes;
  s->body = make_body(body_bytes);
  s->body_upper = s->body ? make_upper(s->body, body_bytes) : NULL;
  arena a; /* the messages before they are encoded */
  arena_init(&a, ARENA_CACHED_BLOCK);
  const bool ok = s->messages && s->body_upper && build(s, &a, chunk_bytes);
  arena_free(&a);
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
  free(s->body);
  free(s->body_upper);
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
