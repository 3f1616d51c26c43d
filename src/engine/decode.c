/* The two ProcessingRequest decoders (decode.h).
 *
 * decode_direct walks the message once: it checks that every field is one it reads, once,
 * with its wire type, one-byte tag and well-formed length, and notes where each header's name
 * and value lie; then it copies the headers into one block. Anything else goes to protobuf-c. What
 * it accepts, protobuf-c 1.4 accepts with the same meaning:
 *   - scalars: a bool is true when any of its varint's bytes has a low-7-bit set (protobuf-c's
 *     parse_boolean); an enum is the varint's low 32 bits as int32;
 *   - lengths: a varint of at most 5 bytes, at most INT_MAX and within the message;
 *   - a string (key, value) becomes a C string, so the view cuts it at its first NUL; bytes
 *     (raw_value, body) keep their length. */
#include "engine/decode.h"

#include "engine/headers.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Field numbers (external_processor.proto, base.proto). */
enum {
  PR_REQUEST_HEADERS = 2,
  PR_RESPONSE_TRAILERS = 7,
  PR_OBSERVABILITY_MODE = 10,
  PR_PROTOCOL_CONFIG = 11,
  HTTP_HEADERS_HEADERS = 1,
  HTTP_HEADERS_END_OF_STREAM = 3,
  HTTP_BODY_BODY = 1,
  HTTP_BODY_END_OF_STREAM = 2,
  HEADER_MAP_HEADERS = 1,
  HEADER_VALUE_KEY = 1,
  HEADER_VALUE_VALUE = 2,
  HEADER_VALUE_RAW_VALUE = 3,
  PC_REQUEST_BODY_MODE = 1,
  PC_RESPONSE_BODY_MODE = 2,
  PC_SEND_BODY_WITHOUT_WAITING = 3,
};

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

/* Envoy sends at most a few hundred headers; a message with more goes through protobuf-c,
 * behind intake's sub-message bound. */
enum { DIRECT_MAX_HEADERS = 10000 };

typedef struct cursor {
  const uint8_t *p, *end;
} cursor;

/* A varint of at most `max` bytes: its bytes in [*start, *start + *n). */
static bool read_varint_bytes(cursor *c, unsigned max, const uint8_t **start, unsigned *n) {
  const size_t left = (size_t)(c->end - c->p);
  const unsigned limit = left < max ? (unsigned)left : max;
  for (unsigned i = 0; i < limit; i++) {
    if (!(c->p[i] & 0x80)) {
      *start = c->p;
      *n = i + 1;
      c->p += i + 1;
      return true;
    }
  }
  return false;
}

static bool read_bool(cursor *c, bool *out) {
  const uint8_t *b;
  unsigned n;
  if (!read_varint_bytes(c, 10, &b, &n)) return false;
  *out = false;
  for (unsigned i = 0; i < n; i++)
    if (b[i] & 0x7f) *out = true;
  return true;
}

static bool read_enum(cursor *c, int32_t *out) {
  const uint8_t *b;
  unsigned n;
  if (!read_varint_bytes(c, 5, &b, &n)) return false; /* longer ones: protobuf-c's business */
  uint32_t v = 0;
  for (unsigned i = 0; i < n; i++)
    v |= (uint32_t)(b[i] & 0x7f) << (7 * i);
  *out = (int32_t)v;
  return true;
}

/* A length-delimited field's contents. */
static bool read_len(cursor *c, cursor *sub) {
  if (c->p < c->end && *c->p < 0x80) { /* the usual one-byte length */
    const size_t v = *c->p++;
    if (v > (size_t)(c->end - c->p)) return false;
    sub->p = c->p;
    sub->end = c->p + v;
    c->p += v;
    return true;
  }
  const uint8_t *b;
  unsigned n;
  if (!read_varint_bytes(c, 5, &b, &n)) return false;
  uint64_t v = 0;
  for (unsigned i = 0; i < n; i++)
    v |= (uint64_t)(b[i] & 0x7f) << (7 * i);
  if (v > INT_MAX || v > (uint64_t)(c->end - c->p)) return false;
  sub->p = c->p;
  sub->end = c->p + v;
  c->p += v;
  return true;
}

/* A one-byte tag with a field number below 16: all the fields read here. */
static bool read_tag(cursor *c, unsigned *field, unsigned *wire) {
  if (c->p == c->end || (*c->p & 0x80) || (*c->p >> 3) == 0) return false;
  *field = *c->p >> 3;
  *wire = *c->p & 7;
  c->p++;
  return true;
}

/* Marks field `f` seen; false when it was already (protobuf-c would merge or replace). */
static bool first_time(unsigned *seen, unsigned f) {
  if (*seen & (1u << f)) return false;
  *seen |= 1u << f;
  return true;
}

/* ---- Headers ------------------------------------------------------------------------------ */

/* One header as the view will hold it: where its name and value lie in the input, and their
 * lengths (a string cut at its first NUL, as a C string is; raw_value, unless empty, taken
 * whole). */
typedef struct header_span {
  const uint8_t *name, *value;
  size_t name_len, value_len;
} header_span;

static size_t string_len(const cursor *c) {
  const size_t len = (size_t)(c->end - c->p);
  return len ? strnlen((const char *)c->p, len) : 0;
}

/* A HeaderValue: key (1) and value (2) strings, raw_value (3) bytes, each at most once. */
/* Envoy's own encoding of a HeaderValue: key, then a non-empty raw_value, one-byte lengths
 * (0x0a LEN key 0x1a LEN raw_value). Read without the general loop; false when it is not
 * exactly that, and the general reading decides. */
static bool scan_usual_header_value(cursor c, header_span *h) {
  const size_t len = (size_t)(c.end - c.p);
  if (len < 4 || c.p[0] != 0x0a || c.p[1] >= 0x80) return false;
  const size_t key_len = c.p[1];
  if (key_len + 4 > len) return false;
  const uint8_t *raw = c.p + 2 + key_len;
  if (raw[0] != 0x1a || raw[1] == 0 || raw[1] >= 0x80 || raw + 2 + raw[1] != c.end) return false;
  h->name = c.p + 2;
  h->name_len = key_len ? strnlen((const char *)h->name, key_len) : 0;
  h->value = raw + 2;
  h->value_len = raw[1];
  return true;
}

static bool scan_header_value(cursor c, header_span *h) {
  if (scan_usual_header_value(c, h)) return true;
  cursor field_of[4] = {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}, {NULL, NULL}};
  unsigned seen = 0, field, wire;
  while (c.p < c.end) {
    if (!read_tag(&c, &field, &wire) || wire != WIRE_LEN || field > HEADER_VALUE_RAW_VALUE ||
        !first_time(&seen, field) || !read_len(&c, &field_of[field]))
      return false;
  }
  const cursor *raw = &field_of[HEADER_VALUE_RAW_VALUE];
  h->name = field_of[HEADER_VALUE_KEY].p;
  h->name_len = string_len(&field_of[HEADER_VALUE_KEY]);
  if (raw->end != raw->p) {
    h->value = raw->p;
    h->value_len = (size_t)(raw->end - raw->p);
  } else {
    h->value = field_of[HEADER_VALUE_VALUE].p;
    h->value_len = string_len(&field_of[HEADER_VALUE_VALUE]);
  }
  return true;
}

/* Headers are found in batches of this many on the stack, then copied; the copying pass reads
 * each later batch from where the previous one ended, so a map is read twice in all. */
enum { HEADER_BATCH = 32 };

/* Walks a HeaderMap: checks its shape, and stores its first headers (up to a batch) in `batch`.
 * Returns the number of headers in the map, or SIZE_MAX when it is not a shape read here.
 * `*text_bytes` receives what the names and values take with their NULs; `*rest` where the
 * headers after the first batch begin. */
static size_t walk_header_map(cursor c, header_span *batch, size_t *text_bytes, cursor *rest) {
  size_t count = 0;
  *text_bytes = 0;
  *rest = c;
  unsigned field, wire;
  while (c.p < c.end) {
    cursor hv;
    header_span h;
    if (!read_tag(&c, &field, &wire) || field != HEADER_MAP_HEADERS || wire != WIRE_LEN ||
        !read_len(&c, &hv) || !scan_header_value(hv, &h) || count == DIRECT_MAX_HEADERS)
      return SIZE_MAX;
    if (count < HEADER_BATCH) {
      batch[count] = h;
      *rest = c;
    }
    *text_bytes += h.name_len + 1 + h.value_len + 1;
    count++;
  }
  return count;
}

/* The next batch of a map walk_header_map has checked: up to HEADER_BATCH headers from *c,
 * which moves past them. */
static void next_header_batch(cursor *c, header_span *batch) {
  unsigned field, wire;
  for (size_t n = 0; n < HEADER_BATCH && c->p < c->end; n++) {
    cursor hv;
    (void)read_tag(c, &field, &wire);
    (void)read_len(c, &hv);
    (void)scan_header_value(hv, &batch[n]);
  }
}

/* Copies `len` bytes and a NUL to *text; returns where they went. */
static const char *put_text(char **text, const uint8_t *p, size_t len) {
  char *at = *text;
  if (len) memcpy(at, p, len);
  at[len] = '\0';
  *text += len + 1;
  return at;
}

/* Copies the map's `count` headers into the arena, a batch at a time: the first is in `batch`,
 * the rest follow from `rest`. */
static decode_result load_headers(arena *a, cursor rest, size_t count, size_t text_bytes,
                                  header_span *batch, decoded_request *out) {
  extproc_header *headers = arena_alloc(a, count * sizeof(*headers));
  char *text = arena_alloc(a, text_bytes);
  if (!headers || !text) return DECODE_NO_MEMORY;
  for (size_t i = 0; i < count; i++) {
    if (i > 0 && i % HEADER_BATCH == 0) next_header_batch(&rest, batch);
    const header_span *h = &batch[i % HEADER_BATCH];
    headers[i].name_len = h->name_len;
    headers[i].name = put_text(&text, h->name, h->name_len);
    headers[i].value_len = h->value_len;
    headers[i].value = put_text(&text, h->value, h->value_len);
  }
  out->headers = headers;
  out->header_count = count;
  return DECODE_OK;
}

/* HttpHeaders or HttpTrailers: both hold their HeaderMap at field 1 (headers, trailers), and only
 * HttpHeaders has end_of_stream (field 3). */
static bool scan_headers_phase(cursor c, bool trailers, cursor *map, bool *end_of_stream) {
  unsigned seen = 0, field, wire;
  *map = (cursor){NULL, NULL};
  while (c.p < c.end) {
    if (!read_tag(&c, &field, &wire) || !first_time(&seen, field)) return false;
    if (field == HTTP_HEADERS_HEADERS && wire == WIRE_LEN) {
      if (!read_len(&c, map)) return false;
    } else if (!trailers && field == HTTP_HEADERS_END_OF_STREAM && wire == WIRE_VARINT) {
      if (!read_bool(&c, end_of_stream)) return false;
    } else {
      return false; /* the deprecated attributes map, or an unknown field */
    }
  }
  return true;
}

static bool scan_body(cursor c, decoded_request *out) {
  unsigned seen = 0, field, wire;
  cursor body = {NULL, NULL};
  while (c.p < c.end) {
    if (!read_tag(&c, &field, &wire) || !first_time(&seen, field)) return false;
    if (field == HTTP_BODY_BODY && wire == WIRE_LEN) {
      if (!read_len(&c, &body)) return false;
    } else if (field == HTTP_BODY_END_OF_STREAM && wire == WIRE_VARINT) {
      if (!read_bool(&c, &out->end_of_stream)) return false;
    } else {
      return false; /* end_of_stream_without_message and the rest: not in Envoy's shapes yet */
    }
  }
  out->body = body.p && body.end != body.p ? body.p : (const uint8_t *)"";
  out->body_len = (size_t)(body.end - body.p);
  out->body_in_input = out->body_len > 0;
  return true;
}

static bool scan_protocol_config(cursor c, decoded_request *out) {
  unsigned seen = 0, field, wire;
  out->has_protocol_config = true;
  while (c.p < c.end) {
    if (!read_tag(&c, &field, &wire) || wire != WIRE_VARINT || !first_time(&seen, field))
      return false;
    bool ok;
    if (field == PC_REQUEST_BODY_MODE)
      ok = read_enum(&c, &out->request_body_mode);
    else if (field == PC_RESPONSE_BODY_MODE)
      ok = read_enum(&c, &out->response_body_mode);
    else if (field == PC_SEND_BODY_WITHOUT_WAITING)
      ok = read_bool(&c, &out->send_body_without_waiting_for_header_response);
    else
      ok = false;
    if (!ok) return false;
  }
  return true;
}

/* The phase's contents; a headers phase leaves its HeaderMap in *map. */
static bool scan_phase(unsigned field, cursor c, decoded_request *out, cursor *map) {
  switch (field) {
  case 2:
  case 3: return scan_headers_phase(c, false, map, &out->end_of_stream);
  case 4:
  case 5: return scan_body(c, out);
  default: return scan_headers_phase(c, true, map, &out->end_of_stream);
  }
}

/* ---- The decoders ---------------------------------------------------------------------- */

decode_result decode_direct(arena *a, const uint8_t *data, size_t len, decoded_request *out) {
  *out = (decoded_request){.phase_field = 0};
  cursor c = {data, data + len}, map = {NULL, NULL};
  unsigned seen = 0, field, wire;
  while (c.p < c.end) {
    cursor sub;
    if (!read_tag(&c, &field, &wire) || !first_time(&seen, field)) return DECODE_INDIRECT;
    if (field >= PR_REQUEST_HEADERS && field <= PR_RESPONSE_TRAILERS && wire == WIRE_LEN) {
      if (out->phase_field) return DECODE_INDIRECT; /* a second member of the oneof */
      out->phase_field = field;
      out->end_of_stream = false;
      if (!read_len(&c, &sub) || !scan_phase(field, sub, out, &map)) return DECODE_INDIRECT;
    } else if (field == PR_OBSERVABILITY_MODE && wire == WIRE_VARINT) {
      if (!read_bool(&c, &out->observability_mode)) return DECODE_INDIRECT;
    } else if (field == PR_PROTOCOL_CONFIG && wire == WIRE_LEN) {
      if (!read_len(&c, &sub) || !scan_protocol_config(sub, out)) return DECODE_INDIRECT;
    } else {
      return DECODE_INDIRECT; /* metadata_context, attributes, flow control, unknown */
    }
  }
  if (!map.p) return DECODE_OK;
  header_span batch[HEADER_BATCH];
  size_t text_bytes;
  cursor rest;
  const size_t count = walk_header_map(map, batch, &text_bytes, &rest);
  if (count == SIZE_MAX) return DECODE_INDIRECT;
  return count ? load_headers(a, rest, count, text_bytes, batch, out) : DECODE_OK;
}

bool decode_unpacked(arena *a, const ProcessingRequest *msg, decoded_request *out) {
  *out = (decoded_request){.phase_field = (unsigned)msg->request_case,
                           .observability_mode = msg->observability_mode,
                           .metadata_context = msg->metadata_context,
                           .attributes = msg->attributes,
                           .attribute_count = msg->n_attributes};
  const Envoy__Service__ExtProc__V3__ProtocolConfiguration *pc = msg->protocol_config;
  if (pc) {
    out->has_protocol_config = true;
    out->request_body_mode = (int32_t)pc->request_body_mode;
    out->response_body_mode = (int32_t)pc->response_body_mode;
    out->send_body_without_waiting_for_header_response =
        pc->send_body_without_waiting_for_header_response;
  }
  const Envoy__Config__Core__V3__HeaderMap *map = NULL;
  const Envoy__Service__ExtProc__V3__HttpBody *body = NULL;
  switch (msg->request_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_HEADERS:
    map = msg->request_headers->headers;
    out->end_of_stream = msg->request_headers->end_of_stream;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_HEADERS:
    map = msg->response_headers->headers;
    out->end_of_stream = msg->response_headers->end_of_stream;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_BODY:
    body = msg->request_body;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_BODY:
    body = msg->response_body;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_REQUEST_TRAILERS:
    map = msg->request_trailers->trailers;
    break;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_REQUEST__REQUEST_RESPONSE_TRAILERS:
    map = msg->response_trailers->trailers;
    break;
  default: break;
  }
  if (body) {
    /* protobuf-c leaves data NULL for an empty field. */
    out->body = body->body.data ? body->body.data : (const uint8_t *)"";
    out->body_len = body->body.len;
    out->end_of_stream = body->end_of_stream;
  }
  return headers_load(a, map, &out->headers, &out->header_count);
}
