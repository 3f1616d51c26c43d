/* The direct reply encoder against protobuf-c's packer: a differential fuzz test.
 *
 * Random ProcessingResponses are built field by field (every field the direct encoder writes,
 * with empty, NULL and negative values, and now and then one it leaves to protobuf-c), and
 * others are unpacked by protobuf-c from mutated encodings, so that whatever protobuf-c can
 * hold is tried. For each, encode_size must equal protobuf_c_message_get_packed_size and
 * encode_pack must write the very same bytes. Replies the engine sends every phase must be
 * encoded directly, so the fast path is really the one tested.
 *
 * EXTPROC_ENCODE_FUZZ_INPUTS sets the number of generated replies (default 20000);
 * EXTPROC_ENCODE_FUZZ_SEED the seed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/arena.h"
#include "engine/encode.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "fuzz_rng.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse ProcessingResponse;
typedef Envoy__Service__ExtProc__V3__CommonResponse CommonResponse;
typedef Envoy__Service__ExtProc__V3__HeaderMutation HeaderMutation;
typedef Envoy__Service__ExtProc__V3__BodyMutation BodyMutation;
typedef Envoy__Config__Core__V3__HeaderValueOption HeaderValueOption;
typedef Envoy__Config__Core__V3__HeaderValue HeaderValue;

enum { MUTANTS_PER_REPLY = 4 };

static void *alloc(arena *a, size_t n) {
  void *p = arena_calloc(a, n);
  assert_non_null(p);
  return p;
}

/* A string: NULL, empty, or letters (some long enough for two-byte lengths). */
static char *random_string(arena *a) {
  if (chance(10)) return NULL;
  const size_t n = chance(5) ? 100 + rnd(200) : rnd(12);
  char *s = alloc(a, n + 1);
  for (size_t i = 0; i < n; i++)
    s[i] = (char)('a' + rnd(26));
  return s;
}

static ProtobufCBinaryData random_bytes(arena *a) {
  ProtobufCBinaryData b = {0, NULL};
  if (chance(15)) return b; /* NULL: left out */
  b.len = chance(5) ? 200 + rnd(300) : rnd(16);
  b.data = alloc(a, b.len + 1); /* with len 0: present but empty */
  for (size_t i = 0; i < b.len; i++)
    b.data[i] = (uint8_t)rnd(256);
  return b;
}

/* An enum value: mostly small, sometimes out of range or negative. */
static int random_enum(void) {
  return chance(5) ? -(int)rnd(5) - 1 : chance(5) ? (int)rnd(100000) : (int)rnd(5);
}

static HeaderMutation *random_mutation(arena *a) {
  HeaderMutation *m = alloc(a, sizeof(*m));
  envoy__service__ext_proc__v3__header_mutation__init(m);
  m->n_set_headers = rnd(chance(5) ? 40 : 4);
  m->set_headers = alloc(a, (m->n_set_headers + 1) * sizeof(*m->set_headers));
  for (size_t i = 0; i < m->n_set_headers; i++) {
    HeaderValueOption *o = alloc(a, sizeof(*o));
    envoy__config__core__v3__header_value_option__init(o);
    if (!chance(5)) {
      HeaderValue *v = alloc(a, sizeof(*v));
      envoy__config__core__v3__header_value__init(v);
      v->key = random_string(a);
      if (chance(20)) v->value = random_string(a);
      v->raw_value = random_bytes(a);
      o->header = v;
    }
    if (chance(70)) {
      Google__Protobuf__BoolValue *b = alloc(a, sizeof(*b));
      google__protobuf__bool_value__init(b);
      b->value = rnd(2);
      o->append = b;
    }
    o->append_action = random_enum();
    o->keep_empty_value = rnd(2);
    m->set_headers[i] = o;
  }
  m->n_remove_headers = rnd(4);
  m->remove_headers = alloc(a, (m->n_remove_headers + 1) * sizeof(char *));
  for (size_t i = 0; i < m->n_remove_headers; i++) {
    char *s = random_string(a);
    m->remove_headers[i] = s ? s : (char *)"";
  }
  return m;
}

static BodyMutation *random_body_mutation(arena *a) {
  BodyMutation *b = alloc(a, sizeof(*b));
  envoy__service__ext_proc__v3__body_mutation__init(b);
  switch (rnd(4)) {
  case 0: break; /* no case set */
  case 1:
    b->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY;
    b->body = random_bytes(a);
    break;
  case 2:
    b->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY;
    b->clear_body = rnd(2);
    break;
  default: {
    b->mutation_case = ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE;
    if (chance(5)) break; /* case set, message NULL */
    Envoy__Service__ExtProc__V3__StreamedBodyResponse *s = alloc(a, sizeof(*s));
    envoy__service__ext_proc__v3__streamed_body_response__init(s);
    s->body = random_bytes(a);
    s->end_of_stream = rnd(2);
    s->end_of_stream_without_message = chance(10);
    s->grpc_message_compressed = chance(10);
    s->drain_complete = chance(10);
    b->streamed_response = s;
  }
  }
  return b;
}

static CommonResponse *random_common(arena *a) {
  CommonResponse *c = alloc(a, sizeof(*c));
  envoy__service__ext_proc__v3__common_response__init(c);
  c->status = chance(50) ? 0 : random_enum();
  if (chance(70)) c->header_mutation = random_mutation(a);
  if (chance(30)) c->body_mutation = random_body_mutation(a);
  if (chance(3)) { /* left to protobuf-c */
    c->trailers = alloc(a, sizeof(*c->trailers));
    envoy__config__core__v3__header_map__init(c->trailers);
  }
  c->clear_route_cache = chance(10);
  return c;
}

/* The replies the engine sends: one phase's reply, maybe a mode override; now and then a field
 * the direct encoder leaves to protobuf-c. `*usual` says whether it is only the former. */
static ProcessingResponse *random_reply(arena *a, bool *usual) {
  ProcessingResponse *r = alloc(a, sizeof(*r));
  envoy__service__ext_proc__v3__processing_response__init(r);
  const unsigned field = 1 + rnd(6);
  r->response_case = (Envoy__Service__ExtProc__V3__ProcessingResponse__ResponseCase)field;
  if (field <= 4) {
    Envoy__Service__ExtProc__V3__HeadersResponse *h = alloc(a, sizeof(*h));
    envoy__service__ext_proc__v3__headers_response__init(h);
    if (!chance(5)) h->response = random_common(a);
    r->request_headers = h; /* the union's members share one pointer */
    if (field >= 3) h->base.descriptor = &envoy__service__ext_proc__v3__body_response__descriptor;
  } else {
    Envoy__Service__ExtProc__V3__TrailersResponse *t = alloc(a, sizeof(*t));
    envoy__service__ext_proc__v3__trailers_response__init(t);
    if (chance(70)) t->header_mutation = random_mutation(a);
    r->request_trailers = t;
  }
  if (chance(20)) {
    Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *m = alloc(a, sizeof(*m));
    envoy__extensions__filters__http__ext_proc__v3__processing_mode__init(m);
    m->request_header_mode = random_enum();
    m->response_header_mode = random_enum();
    m->request_body_mode = random_enum();
    m->response_body_mode = random_enum();
    m->request_trailer_mode = random_enum();
    m->response_trailer_mode = random_enum();
    r->mode_override = m;
  }
  r->request_drain_requests = chance(5);
  r->request_drain_responses = chance(5);
  *usual = true;
  if (chance(3)) {
    *usual = false;
    r->override_message_timeout = alloc(a, sizeof(*r->override_message_timeout));
    google__protobuf__duration__init(r->override_message_timeout);
    r->override_message_timeout->seconds = rnd(100);
  }
  if (chance(2)) {
    *usual = false;
    r->response_case = ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE__NOT_SET;
  }
  return r;
}

typedef struct tally {
  size_t replies, direct;
} tally;

/* Both encoders on one message: same size, same bytes. Returns whether it went directly. */
static bool check_same(const ProtobufCMessage *m, tally *t) {
  encode_plan plan;
  const size_t size = encode_size(m, &plan);
  const size_t expected = protobuf_c_message_get_packed_size(m);
  assert_int_equal(size, expected);
  uint8_t *ours = malloc(size + 1), *theirs = malloc(expected + 1);
  assert_non_null(ours);
  assert_non_null(theirs);
  assert_int_equal(encode_pack(m, &plan, ours), size);
  assert_int_equal(protobuf_c_message_pack(m, theirs), expected);
  assert_memory_equal(ours, theirs, size);
  free(ours);
  free(theirs);
  t->replies++;
  if (plan.direct) t->direct++;
  return plan.direct;
}

static void mutate(uint8_t *b, size_t *len) {
  if (*len == 0) return;
  const size_t at = rnd((uint32_t)*len);
  switch (rnd(3)) {
  case 0: b[at] ^= (uint8_t)(1u << rnd(8)); break;
  case 1: b[at] = (uint8_t)rnd(256); break;
  default: *len = at; break;
  }
}

/* What protobuf-c makes of a mutated encoding, when it takes it, through both encoders. */
static void check_mutants(const ProtobufCMessage *m, tally *t) {
  const size_t size = protobuf_c_message_get_packed_size(m);
  uint8_t *bytes = malloc(size + 1);
  assert_non_null(bytes);
  for (int k = 0; k < MUTANTS_PER_REPLY; k++) {
    size_t len = protobuf_c_message_pack(m, bytes);
    mutate(bytes, &len);
    ProtobufCMessage *back = protobuf_c_message_unpack(
        &envoy__service__ext_proc__v3__processing_response__descriptor, NULL, len, bytes);
    if (!back) continue;
    check_same(back, t);
    protobuf_c_message_free_unpacked(back, NULL);
  }
  free(bytes);
}

static void test_direct_matches_protobuf_c(void **state) {
  (void)state;
  const uint64_t seed = env_size("EXTPROC_ENCODE_FUZZ_SEED", 0xe1c0de5eedULL);
  const size_t replies = env_size("EXTPROC_ENCODE_FUZZ_INPUTS", 20000);
  rng_state = seed ? seed : 1;
  print_message("encode fuzz: seed %llu, %zu replies\n", (unsigned long long)seed, replies);
  tally t = {0}, mutants = {0};
  size_t usual_direct = 0, usual = 0;
  for (size_t i = 0; i < replies; i++) {
    arena a;
    arena_init(&a, 4096);
    bool is_usual;
    ProcessingResponse *r = random_reply(&a, &is_usual);
    const bool direct = check_same(&r->base, &t);
    if (is_usual) {
      usual++;
      if (direct) usual_direct++;
    }
    check_mutants(&r->base, &mutants);
    arena_free(&a);
  }
  print_message("encode fuzz: %zu built (%zu direct), %zu from mutants (%zu direct)\n", t.replies,
                t.direct, mutants.replies, mutants.direct);
  /* The usual replies go directly unless they hold more sub-messages than a plan keeps (the
   * 40-header mutations) or a CommonResponse's trailers. */
  assert_true(usual_direct > usual * 8 / 10);
  assert_true(t.direct < t.replies); /* the fallback was taken too */
  assert_true(mutants.replies > replies / 2);
  assert_true(mutants.direct > mutants.replies / 10);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_direct_matches_protobuf_c),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
