/* The pre-flight wire check: hostile nesting and sub-message floods are refused before
 * protobuf-c's recursive unpacking could overflow the stack or balloon memory; everything Envoy
 * sends passes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"

#include "engine/stream.h"
#include "engine/wire_check.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "testing/envoy_request.h"

static const ProtobufCMessageDescriptor *const REQUEST =
    &envoy__service__ext_proc__v3__processing_request__descriptor;

static void test_depth(void **state) {
  (void)state;
  uint8_t *start;
  size_t len;
  uint8_t *buf = nested_attributes(20, &start, &len);
  assert_int_equal(wire_check(REQUEST, start, len, 64, 100000), WIRE_OK);
  /* protobuf-c agrees it is valid */
  ProtobufCMessage *m = protobuf_c_message_unpack(REQUEST, NULL, len, start);
  assert_non_null(m);
  protobuf_c_message_free_unpacked(m, NULL);
  free(buf);

  buf = nested_attributes(5000, &start, &len); /* crashed unpacking before the check */
  assert_int_equal(wire_check(REQUEST, start, len, 64, 100000), WIRE_TOO_DEEP);
  assert_int_equal(wire_check(REQUEST, start, len, 100000, 1000000), WIRE_TOO_DEEP); /* capped */
  free(buf);
}

/* What Envoy sends passes: headers with every context field set, and a body chunk. */
static void test_envoy_messages_pass(void **state) {
  (void)state;
  static const char *const headers[] = {":method", "POST",         ":path",
                                        "/orders", "x-request-id", "rid-1"};
  static const char *const keys[] = {"request.path", "request.method"};
  static const char *const values[] = {"/orders", "POST"};
  static const char *const namespaces[] = {"envoy.lb", "tenant"};
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  envoy_request *m = envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, headers, 3, false);
  assert_non_null(m);
  assert_true(envoy_request_set_protocol_config(&a, m, EXTPROC_BODY_BUFFERED, EXTPROC_BODY_NONE));
  assert_true(envoy_request_set_attributes(&a, m, keys, values, 2));
  assert_true(envoy_request_set_metadata(&a, m, namespaces, keys, values, 2));
  size_t len;
  const uint8_t *buf = envoy_request_encode(&a, m, &len);
  assert_non_null(buf);
  assert_int_equal(wire_check(REQUEST, buf, len, 64, 100000), WIRE_OK);
  m = envoy_request_body(&a, EXTPROC_REQUEST_BODY, "{\"a\":1}", 7, true);
  assert_non_null(m);
  buf = envoy_request_encode(&a, m, &len);
  assert_non_null(buf);
  assert_int_equal(wire_check(REQUEST, buf, len, 64, 100000), WIRE_OK);
  arena_free(&a);
}

static void test_too_many_messages(void **state) {
  (void)state;
  /* request_headers { headers { headers {} x 200000 } }: tiny, but 200,000 sub-messages. */
  const size_t n = 200000, inner = 2 * n;
  uint8_t *buf = malloc(inner + 32), *p = buf;
  *p++ = 0x12;                          /* request_headers (2) */
  const size_t map_len = 1 + 3 + inner; /* tag + 3-byte varint + entries */
  *p++ = (uint8_t)(0x80 | ((map_len)&0x7f));
  *p++ = (uint8_t)(0x80 | ((map_len >> 7) & 0x7f));
  *p++ = (uint8_t)(map_len >> 14);
  *p++ = 0x0a; /* HttpHeaders.headers (1): the HeaderMap */
  *p++ = (uint8_t)(0x80 | (inner & 0x7f));
  *p++ = (uint8_t)(0x80 | ((inner >> 7) & 0x7f));
  *p++ = (uint8_t)(inner >> 14);
  for (size_t i = 0; i < n; i++) {
    *p++ = 0x0a; /* HeaderMap.headers (1): an empty HeaderValue */
    *p++ = 0;
  }
  assert_int_equal(wire_check(REQUEST, buf, (size_t)(p - buf), 64, 100000), WIRE_TOO_MANY_MESSAGES);
  assert_int_equal(wire_check(REQUEST, buf, (size_t)(p - buf), 64, 300000), WIRE_OK);
  free(buf);
}

static void test_malformed(void **state) {
  (void)state;
  const uint8_t truncated_len[] = {0x12, 0x05, 0x00};
  const uint8_t bad_varint[] = {0x08, 0xff, 0xff};
  const uint8_t group[] = {0x0b};
  assert_int_equal(wire_check(REQUEST, truncated_len, sizeof(truncated_len), 64, 10),
                   WIRE_MALFORMED);
  assert_int_equal(wire_check(REQUEST, bad_varint, sizeof(bad_varint), 64, 10), WIRE_MALFORMED);
  assert_int_equal(wire_check(REQUEST, group, sizeof(group), 64, 10), WIRE_MALFORMED);
  assert_int_equal(wire_check(REQUEST, NULL, 0, 64, 10), WIRE_OK); /* the empty message */
}

static int finished_status = -1;
static int sink_send(void *io, const ProtobufCMessage *m) {
  (void)io, (void)m;
  return 0;
}
static void sink_finish(void *io, uint32_t status, const char *message) {
  (void)io, (void)message;
  finished_status = (int)status;
}
static void sink_resumed(void *io) { (void)io; }

static void test_engine_refuses_deep_messages(void **state) {
  (void)state;
  static const stream_sink sink = {sink_send, sink_finish, sink_resumed};
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "p"), 0);
  extproc_request *req = stream_open(p, &sink, &finished_status, NULL);
  uint8_t *start;
  size_t len;
  uint8_t *buf = nested_attributes(5000, &start, &len);
  stream_on_message(req, start, len);
  assert_int_equal(finished_status, EXTPROC_GRPC_RESOURCE_EXHAUSTED);
  free(buf);
  stream_close(req);
  extproc_processor_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_depth),
      cmocka_unit_test(test_envoy_messages_pass),
      cmocka_unit_test(test_too_many_messages),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_engine_refuses_deep_messages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
