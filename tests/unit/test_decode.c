/* The direct ProcessingRequest decoder against protobuf-c: a differential fuzz test.
 *
 * Random ProcessingRequests are written field by field (Envoy's shapes, and odd ones: repeated
 * and unknown fields, padded varints, wrong wire types, NULs in strings), then mutated (bits
 * flipped, bytes changed, inserted, removed, cut off). Each input goes through both decoders:
 * whenever decode_direct answers, protobuf-c must unpack the same input to the same view; when
 * protobuf-c refuses an input, decode_direct must not have taken it. Every plain Envoy-shaped
 * message must be decoded directly, so the fast path is really the one tested.
 *
 * EXTPROC_DECODE_FUZZ_INPUTS sets the number of generated messages (default 20000, each with
 * mutants); EXTPROC_DECODE_FUZZ_SEED the seed (default: a fixed one, printed on failure). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/decode.h"
#include "fuzz_rng.h"

enum { MUTANTS_PER_MESSAGE = 6, INPUT_CAP = 8192 };

/* ---- Writing protobuf by hand, canonically or not ------------------------------------------ */

typedef struct buf {
  uint8_t data[INPUT_CAP];
  size_t len;
  bool overflow;
  bool plain; /* only what Envoy sends, canonically encoded */
} buf;

static void put(buf *b, uint8_t byte) {
  if (b->len == INPUT_CAP) {
    b->overflow = true;
    return;
  }
  b->data[b->len++] = byte;
}

/* A varint, sometimes padded with redundant 0x80 groups (still valid, not canonical). */
static void put_varint(buf *b, uint64_t v) {
  const unsigned pad = chance(1) ? 1 + rnd(3) : 0;
  if (pad) b->plain = false;
  do {
    const uint8_t low = v & 0x7f;
    v >>= 7;
    put(b, (uint8_t)(low | (v || pad ? 0x80 : 0)));
  } while (v);
  for (unsigned i = 0; i < pad; i++)
    put(b, i + 1 < pad ? 0x80 : 0x00);
}

static void put_tag(buf *b, unsigned field, unsigned wire) { put_varint(b, field << 3 | wire); }

static void put_bytes(buf *b, unsigned field, const uint8_t *p, size_t n) {
  put_tag(b, field, 2);
  put_varint(b, n);
  for (size_t i = 0; i < n; i++)
    put(b, p[i]);
}

static void put_sub(buf *b, unsigned field, const buf *sub) {
  if (!sub->plain) b->plain = false;
  if (sub->overflow) b->overflow = true;
  put_bytes(b, field, sub->data, sub->len);
}

/* A bool or enum: usually a plain varint; sometimes a long or odd encoding. */
static void put_scalar(buf *b, unsigned field, uint64_t v) {
  if (chance(3)) { /* a wrong wire type: length-delimited */
    b->plain = false;
    const uint8_t one = (uint8_t)v;
    put_bytes(b, field, &one, 1);
    return;
  }
  if (chance(3)) { /* a 10-byte negative value */
    b->plain = false;
    put_tag(b, field, 0);
    for (int i = 0; i < 9; i++)
      put(b, 0xff);
    put(b, 0x01);
    return;
  }
  put_tag(b, field, 0);
  put_varint(b, v);
}

/* Letters, with now and then a NUL (a string is cut there) or a byte above 0x7f. */
static void random_text(uint8_t *out, size_t *n, size_t max) {
  *n = rnd((uint32_t)max + 1);
  for (size_t i = 0; i < *n; i++) {
    const uint32_t k = rnd(40);
    out[i] = k == 0 ? 0 : k == 1 ? (uint8_t)(0x80 + rnd(128)) : (uint8_t)('a' + rnd(26));
  }
}

static void gen_header_value(buf *b) {
  const unsigned fields[3] = {1, 2, 3};
  unsigned order[3] = {0, 1, 2};
  for (int i = 2; i > 0; i--) { /* any order */
    const uint32_t j = rnd((uint32_t)i + 1);
    const unsigned t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (int i = 0; i < 3; i++) {
    if (chance(25)) continue;
    uint8_t text[24];
    size_t n;
    random_text(text, &n, sizeof(text));
    put_bytes(b, fields[order[i]], text, n);
    if (chance(2)) { /* the field again: protobuf-c takes the last */
      b->plain = false;
      put_bytes(b, fields[order[i]], text, n / 2);
    }
  }
  if (chance(2)) { /* an unknown field */
    b->plain = false;
    put_tag(b, 4 + rnd(20), 0);
    put_varint(b, rnd(1000));
  }
}

static void gen_header_map(buf *b) {
  const uint32_t n = rnd(14);
  for (uint32_t i = 0; i < n; i++) {
    buf hv = {.plain = true};
    gen_header_value(&hv);
    put_sub(b, 1, &hv);
  }
}

static void gen_phase(buf *b, unsigned field) {
  if (field <= 3 || field >= 6) {
    buf map = {.plain = true};
    gen_header_map(&map);
    if (!chance(5)) put_sub(b, 1, &map);
    if (field <= 3 && chance(60)) put_scalar(b, 3, rnd(2));
    if (field <= 3 && chance(2)) { /* the deprecated attributes map */
      b->plain = false;
      put_bytes(b, 2, (const uint8_t *)"", 0);
    }
    return;
  }
  uint8_t body[64];
  size_t n;
  random_text(body, &n, sizeof(body));
  if (!chance(5)) put_bytes(b, 1, body, n);
  if (chance(60)) put_scalar(b, 2, rnd(2));
  if (chance(3)) { /* end_of_stream_without_message and later fields */
    b->plain = false;
    put_scalar(b, 3 + rnd(3), 1);
  }
}

static void gen_protocol_config(buf *b) {
  buf pc = {.plain = true};
  if (chance(80)) put_scalar(&pc, 1, rnd(6));
  if (chance(80)) put_scalar(&pc, 2, rnd(6));
  if (chance(50)) put_scalar(&pc, 3, rnd(2));
  if (chance(3)) {
    pc.plain = false;
    put_scalar(&pc, 4, 1);
  }
  put_sub(b, 11, &pc);
}

static void gen_request(buf *b) {
  *b = (buf){.plain = true};
  /* metadata_context, attributes, flow control, and fields unknown to this proto. */
  static const unsigned others[] = {8, 9, 12, 13, 14, 15};
  unsigned fields[7];
  size_t n = 0;
  fields[n++] = 2 + rnd(6);                 /* the phase */
  if (chance(40)) fields[n++] = 11;         /* protocol_config */
  if (chance(20)) fields[n++] = 10;         /* observability_mode */
  if (chance(3)) fields[n++] = 2 + rnd(6);  /* a second phase */
  if (chance(2)) fields[n++] = 10 + rnd(2); /* observability_mode or protocol_config again */
  if (chance(3)) fields[n++] = others[rnd(6)];
  for (size_t i = n - 1; i > 0; i--) { /* any order */
    const uint32_t j = rnd((uint32_t)i + 1);
    const unsigned t = fields[i];
    fields[i] = fields[j];
    fields[j] = t;
  }
  unsigned written = 0;
  for (size_t i = 0; i < n; i++) {
    const unsigned f = fields[i];
    if (written & (1u << f) || (f <= 7 && (written & 0xfc))) b->plain = false; /* again */
    written |= 1u << f;
    if (f >= 2 && f <= 7) {
      buf phase = {.plain = true};
      gen_phase(&phase, f);
      put_sub(b, f, &phase);
    } else if (f == 11) {
      gen_protocol_config(b);
    } else if (f == 10) {
      put_scalar(b, 10, rnd(2));
    } else {
      b->plain = false;
      put_bytes(b, f, (const uint8_t *)"", 0); /* an empty sub-message of that field */
    }
  }
}

static void mutate(buf *b) {
  if (b->len == 0) return;
  const size_t at = rnd((uint32_t)b->len);
  switch (rnd(5)) {
  case 0: b->data[at] ^= (uint8_t)(1u << rnd(8)); break;
  case 1: b->data[at] = (uint8_t)rnd(256); break;
  case 2: b->len = at; break;
  case 3:
    if (b->len < INPUT_CAP) {
      memmove(b->data + at + 1, b->data + at, b->len - at);
      b->data[at] = (uint8_t)rnd(256);
      b->len++;
    }
    break;
  default:
    memmove(b->data + at, b->data + at + 1, b->len - at - 1);
    b->len--;
    break;
  }
}

/* ---- The comparison ----------------------------------------------------------------------- */

static void assert_same_text(const char *a, size_t alen, const char *b, size_t blen) {
  assert_int_equal(alen, blen);
  assert_memory_equal(a, b, alen + 1); /* the terminating NUL too */
}

static void assert_same_view(const decoded_request *d, const decoded_request *u) {
  assert_int_equal(d->phase_field, u->phase_field);
  assert_int_equal(d->end_of_stream, u->end_of_stream);
  assert_int_equal(d->observability_mode, u->observability_mode);
  assert_int_equal(d->has_protocol_config, u->has_protocol_config);
  if (u->has_protocol_config) {
    assert_int_equal(d->request_body_mode, u->request_body_mode);
    assert_int_equal(d->response_body_mode, u->response_body_mode);
    assert_int_equal(d->send_body_without_waiting_for_header_response,
                     u->send_body_without_waiting_for_header_response);
  }
  assert_int_equal(d->header_count, u->header_count);
  for (size_t i = 0; i < u->header_count; i++) {
    assert_same_text(d->headers[i].name, d->headers[i].name_len, u->headers[i].name,
                     u->headers[i].name_len);
    assert_same_text(d->headers[i].value, d->headers[i].value_len, u->headers[i].value,
                     u->headers[i].value_len);
  }
  assert_int_equal(d->body == NULL, u->body == NULL);
  assert_int_equal(d->body_len, u->body_len);
  if (u->body_len) assert_memory_equal(d->body, u->body, u->body_len);
  assert_null(u->metadata_context); /* the direct decoder leaves those to protobuf-c */
  assert_int_equal(u->attribute_count, 0);
}

typedef struct tally {
  size_t inputs, direct, indirect, refused;
} tally;

/* One input through both decoders. Returns decode_direct's answer. */
static decode_result check_input(const buf *b, tally *t) {
  arena a, ua;
  arena_init(&a, 4096);
  arena_init(&ua, 4096);
  decoded_request d, u;
  const decode_result r = decode_direct(&a, b->data, b->len, &d);
  ProtobufCAllocator alloc = arena_protobuf_allocator(&ua);
  ProcessingRequest *msg =
      envoy__service__ext_proc__v3__processing_request__unpack(&alloc, b->len, b->data);
  t->inputs++;
  if (!msg) t->refused++;
  assert_int_not_equal(r, DECODE_NO_MEMORY);
  if (r == DECODE_OK) {
    t->direct++;
    assert_non_null(msg); /* decode_direct took what protobuf-c refuses */
    assert_true(decode_unpacked(&ua, msg, &u));
    assert_same_view(&d, &u);
    if (d.body_len) { /* the chunk is read where it lies */
      assert_true(d.body_in_input);
      assert_true(d.body >= b->data && d.body + d.body_len <= b->data + b->len);
    }
  } else {
    t->indirect++;
  }
  arena_free(&a);
  arena_free(&ua);
  return r;
}

static void test_direct_matches_protobuf_c(void **state) {
  (void)state;
  const uint64_t seed = env_size("EXTPROC_DECODE_FUZZ_SEED", 0x5eed1234abcdULL);
  const size_t messages = env_size("EXTPROC_DECODE_FUZZ_INPUTS", 20000);
  rng_state = seed ? seed : 1;
  print_message("decode fuzz: seed %llu, %zu messages\n", (unsigned long long)seed, messages);
  tally t = {0};
  size_t plain = 0;
  for (size_t i = 0; i < messages; i++) {
    buf b;
    gen_request(&b);
    if (b.overflow) continue;
    const decode_result r = check_input(&b, &t);
    if (b.plain) {
      plain++;
      assert_int_equal(r, DECODE_OK); /* every Envoy-shaped message takes the fast path */
    }
    for (int m = 0; m < MUTANTS_PER_MESSAGE; m++) {
      buf mutant = b;
      for (uint32_t k = 1 + rnd(3); k > 0; k--)
        mutate(&mutant);
      check_input(&mutant, &t);
    }
  }
  print_message("decode fuzz: %zu inputs, %zu plain, %zu direct, %zu indirect, %zu refused by "
                "protobuf-c\n",
                t.inputs, plain, t.direct, t.indirect, t.refused);
  /* Both paths and refusals must really occur, or the test proves little. */
  assert_true(plain > messages / 4);
  assert_true(t.direct > t.inputs / 10);
  assert_true(t.indirect > t.inputs / 10);
  assert_true(t.refused > t.inputs / 20);
}

/* Hand-written cases at the edges the fuzzer reaches only by luck. */
static decode_result direct(const uint8_t *data, size_t len, decoded_request *d, arena *a) {
  return decode_direct(a, data, len, d);
}

static void test_edges(void **state) {
  (void)state;
  arena a;
  arena_init(&a, 1024);
  decoded_request d;
  /* request_headers {headers {key "a" raw_value "b"}} end_of_stream true. */
  static const uint8_t hdr[] = {0x12, 0x0c, 0x0a, 0x08, 0x0a, 0x06, 0x0a,
                                0x01, 'a',  0x1a, 0x01, 'b',  0x18, 0x01};
  assert_int_equal(direct(hdr, sizeof(hdr), &d, &a), DECODE_OK);
  assert_int_equal(d.phase_field, 2);
  assert_true(d.end_of_stream);
  assert_int_equal(d.header_count, 1);
  assert_string_equal(d.headers[0].name, "a");
  assert_string_equal(d.headers[0].value, "b");
  /* An empty message: no phase, decoded (intake refuses it). */
  assert_int_equal(direct(hdr, 0, &d, &a), DECODE_OK);
  assert_int_equal(d.phase_field, 0);
  /* request_body {body "xyz"}: the chunk stays in the input. */
  static const uint8_t body[] = {0x22, 0x05, 0x0a, 0x03, 'x', 'y', 'z'};
  assert_int_equal(direct(body, sizeof(body), &d, &a), DECODE_OK);
  assert_ptr_equal(d.body, body + 4);
  assert_int_equal(d.body_len, 3);
  assert_false(d.end_of_stream);
  /* A length running past the end, a two-byte tag, metadata_context: not direct. */
  static const uint8_t past[] = {0x22, 0x09, 0x0a, 0x03, 'x'};
  assert_int_equal(direct(past, sizeof(past), &d, &a), DECODE_INDIRECT);
  static const uint8_t long_tag[] = {0x92, 0x00, 0x00};
  assert_int_equal(direct(long_tag, sizeof(long_tag), &d, &a), DECODE_INDIRECT);
  static const uint8_t metadata[] = {0x42, 0x00, 0x22, 0x00};
  assert_int_equal(direct(metadata, sizeof(metadata), &d, &a), DECODE_INDIRECT);
  arena_free(&a);
}

/* A length-delimited field into `out` (large enough): tag, varint length, bytes. */
static size_t put_field(uint8_t *out, unsigned field, const uint8_t *p, size_t n) {
  size_t k = 0;
  out[k++] = (uint8_t)(field << 3 | 2);
  size_t v = n;
  for (; v >= 0x80; v >>= 7)
    out[k++] = (uint8_t)(v | 0x80);
  out[k++] = (uint8_t)v;
  memmove(out + k, p, n);
  return k + n;
}

/* request_headers with `n` distinct headers, every third one with `value` rather than Envoy's
 * raw_value: the direct decoder copies them a batch at a time, and must neither lose nor
 * reorder one across a batch's edge. Returns the message's length in `out`. */
static size_t many_headers(uint8_t *out, size_t cap, unsigned n) {
  uint8_t *map = malloc(cap), *hv = malloc(64);
  assert_non_null(map);
  assert_non_null(hv);
  size_t len = 0;
  for (unsigned i = 0; i < n; i++) {
    char name[16], value[16];
    const int nl = snprintf(name, sizeof(name), "h%u", i);
    const int vl = snprintf(value, sizeof(value), "v%u", i);
    uint8_t tmp[32];
    size_t k = put_field(hv, 1, (const uint8_t *)name, (size_t)nl);
    memcpy(tmp, value, (size_t)vl);
    k += put_field(hv + k, i % 3 == 0 ? 2 : 3, tmp, (size_t)vl);
    assert_true(len + k + 8 < cap);
    len += put_field(map + len, 1, hv, k);
  }
  const size_t inner = put_field(out, 1, map, len); /* HttpHeaders.headers */
  memmove(map, out, inner);
  const size_t total = put_field(out, 2, map, inner); /* ProcessingRequest.request_headers */
  assert_true(total <= cap);
  free(map);
  free(hv);
  return total;
}

static void test_many_headers(void **state) {
  (void)state;
  static const unsigned counts[] = {31, 32, 33, 64, 65, 1000, 10000, 10001};
  const size_t cap = 10001 * 32;
  uint8_t *msg = malloc(cap);
  assert_non_null(msg);
  for (size_t c = 0; c < sizeof(counts) / sizeof(counts[0]); c++) {
    const size_t len = many_headers(msg, cap, counts[c]);
    arena a, ua;
    arena_init(&a, 4096);
    arena_init(&ua, 4096);
    decoded_request d, u;
    const decode_result r = decode_direct(&a, msg, len, &d);
    ProtobufCAllocator alloc = arena_protobuf_allocator(&ua);
    ProcessingRequest *m =
        envoy__service__ext_proc__v3__processing_request__unpack(&alloc, len, msg);
    assert_non_null(m);
    assert_true(decode_unpacked(&ua, m, &u));
    assert_int_equal(u.header_count, counts[c]);
    if (counts[c] > 10000) { /* past the direct decoder's bound: protobuf-c's business */
      assert_int_equal(r, DECODE_INDIRECT);
    } else {
      assert_int_equal(r, DECODE_OK);
      assert_same_view(&d, &u);
    }
    arena_free(&a);
    arena_free(&ua);
  }
  free(msg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_edges),
      cmocka_unit_test(test_many_headers),
      cmocka_unit_test(test_direct_matches_protobuf_c),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
