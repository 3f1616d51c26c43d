/* The idempotency processor (processors/idempotency/) where no Redis is involved: its settings,
 * the stored-record format, and, through the in-process harness (which has no event loop, so
 * extproc_request_loop() is NULL there), what it lets through, refuses, and how its Redis
 * policy answers when it cannot reach Redis. The Redis paths are tested behind Envoy with a real
 * redis-server (tests/e2e/test_idempotency_envoy.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "extproc/testing.h"
#include "idempotency.h"
#include "internal.h"

static const char *const SETTINGS[] = {
    "EXTPROC_IDEMPOTENCY_REDIS",          "EXTPROC_IDEMPOTENCY_TTL",
    "EXTPROC_IDEMPOTENCY_IN_FLIGHT_TTL",  "EXTPROC_IDEMPOTENCY_TIMEOUT",
    "EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR", "EXTPROC_IDEMPOTENCY_HEADER"};

static void clear_settings(void) {
  for (size_t i = 0; i < sizeof(SETTINGS) / sizeof(SETTINGS[0]); i++)
    unsetenv(SETTINGS[i]);
}

static void test_settings_defaults(void **state) {
  (void)state;
  clear_settings();
  idem_settings s;
  assert_int_equal(idem_settings_load(&s), 0);
  assert_string_equal(s.host, "127.0.0.1");
  assert_int_equal(s.port, 6379);
  assert_int_equal(s.ttl_ms, 24ULL * 3600 * 1000);
  assert_int_equal(s.in_flight_ttl_ms, 60 * 1000);
  assert_int_equal(s.timeout_ms, 100);
  assert_int_equal(s.on_error, IDEM_REJECT);
  assert_string_equal(s.header, "idempotency-key");
}

static void test_settings_parsed(void **state) {
  (void)state;
  clear_settings();
  setenv("EXTPROC_IDEMPOTENCY_REDIS", "unix:/run/redis.sock", 1);
  setenv("EXTPROC_IDEMPOTENCY_TTL", "2h", 1);
  setenv("EXTPROC_IDEMPOTENCY_IN_FLIGHT_TTL", "45", 1);
  setenv("EXTPROC_IDEMPOTENCY_TIMEOUT", "250ms", 1);
  setenv("EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR", "fail-open", 1);
  setenv("EXTPROC_IDEMPOTENCY_HEADER", "X-Request-Key", 1);
  idem_settings s;
  assert_int_equal(idem_settings_load(&s), 0);
  assert_string_equal(s.unix_path, "/run/redis.sock");
  assert_int_equal(s.ttl_ms, 2ULL * 3600 * 1000);
  assert_int_equal(s.in_flight_ttl_ms, 45 * 1000);
  assert_int_equal(s.timeout_ms, 250);
  assert_int_equal(s.on_error, IDEM_FAIL_OPEN);
  assert_string_equal(s.header, "x-request-key");
  setenv("EXTPROC_IDEMPOTENCY_REDIS", "[::1]:7000", 1);
  assert_int_equal(idem_settings_load(&s), 0);
  assert_string_equal(s.host, "::1");
  assert_int_equal(s.port, 7000);
  clear_settings();
}

static void test_bad_settings_make_no_processor(void **state) {
  (void)state;
  static const char *const bad[][2] = {
      {"EXTPROC_IDEMPOTENCY_REDIS", "localhost"},
      {"EXTPROC_IDEMPOTENCY_REDIS", "h:0"},
      {"EXTPROC_IDEMPOTENCY_REDIS", "h:70000"},
      {"EXTPROC_IDEMPOTENCY_REDIS", "unix:rel"},
      {"EXTPROC_IDEMPOTENCY_TTL", "0"},
      {"EXTPROC_IDEMPOTENCY_TTL", "10d"},
      {"EXTPROC_IDEMPOTENCY_TTL", "-5"},
      {"EXTPROC_IDEMPOTENCY_IN_FLIGHT_TTL", "s"},
      {"EXTPROC_IDEMPOTENCY_TIMEOUT", "2m"},
      {"EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR", "open"},
      {"EXTPROC_IDEMPOTENCY_HEADER", "bad header"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    clear_settings();
    setenv(bad[i][0], bad[i][1], 1);
    extproc_processor *p = idempotency_processor_new();
    if (p) fail_msg("%s=%s was accepted", bad[i][0], bad[i][1]);
  }
  clear_settings();
}

static void test_record_parse(void **state) {
  (void)state;
  const char fp[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  char value[512];
  int n = snprintf(value, sizeof(value),
                   "done:%s\n201\ncontent-type: text/plain\nlocation: /o/1\n\nbody\nwith", fp);
  memcpy(value + n, "\0nul", 4); /* a body is bytes: a NUL inside must survive */
  n += 4;
  idem_record r;
  assert_int_equal(idem_record_parse(value, (size_t)n, &r), 1);
  assert_string_equal(r.fp, fp);
  assert_int_equal(r.status, 201);
  assert_int_equal(r.headers_len, strlen("content-type: text/plain\nlocation: /o/1\n"));
  assert_memory_equal(r.headers, "content-type: text/plain\n", 25);
  assert_int_equal(r.body_len, 13);
  assert_memory_equal(r.body, "body\nwith\0nul", 13);

  n = snprintf(value, sizeof(value), "done:%s\n204\n\n", fp);
  assert_int_equal(idem_record_parse(value, (size_t)n, &r), 1);
  assert_int_equal(r.status, 204);
  assert_int_equal(r.headers_len, 0);
  assert_int_equal(r.body_len, 0);

  n = snprintf(value, sizeof(value), "in-flight:%s:00ff", fp);
  assert_int_equal(idem_record_parse(value, (size_t)n, &r), 2);
  assert_string_equal(r.fp, fp);

  static const char *const garbage[] = {"",
                                        "done:",
                                        "in-flight:abc",
                                        "hello",
                                        "done:0123456789abcdef0123456789abcdef0123456789abcdef"
                                        "0123456789abcdef\n99\n\n",
                                        "done:0123456789abcdef0123456789abcdef0123456789abcdef"
                                        "0123456789abcdef\n200\nno-end-of-headers\n"};
  for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++)
    assert_int_equal(idem_record_parse(garbage[i], strlen(garbage[i]), &r), 0);
}

static void test_replayed_headers(void **state) {
  (void)state;
  assert_true(idem_header_replayed("content-type"));
  assert_true(idem_header_replayed("location"));
  assert_true(idem_header_replayed("etag"));
  assert_false(idem_header_replayed("set-cookie"));
  assert_false(idem_header_replayed("content-length"));
  assert_false(idem_header_replayed("date"));
}

/* ---- Through the harness: no loop, so Redis is never reached ----------------------------- */

static const extproc_harness_reply *post(extproc_processor *p, const char *method, const char *key,
                                         const char *body, extproc_harness **out) {
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *headers[] = {":method", method, ":path", "/orders", "idempotency-key", key, NULL};
  if (!key) headers[4] = NULL;
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, headers, !body), 0);
  if (body && !extproc_harness_immediate_response(h))
    assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, body, strlen(body), true), 0);
  *out = h;
  return extproc_harness_immediate_response(h);
}

static void test_no_loop_rejects_with_503(void **state) {
  (void)state;
  clear_settings();
  extproc_processor *p = idempotency_processor_new();
  assert_non_null(p);
  extproc_harness *h;
  const extproc_harness_reply *r = post(p, "POST", "k-1", "{}", &h);
  assert_non_null(r);
  assert_int_equal(r->immediate_status, 503);
  assert_string_equal(extproc_harness_client_header(h, "retry-after"), "1");
  assert_string_equal(extproc_harness_client_header(h, "content-type"), "application/problem+json");
  extproc_harness_free(h);
  /* A bodyless POST is claimed at its headers. */
  r = post(p, "PATCH", "k-2", NULL, &h);
  assert_non_null(r);
  assert_int_equal(r->immediate_status, 503);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_no_loop_fails_open(void **state) {
  (void)state;
  clear_settings();
  setenv("EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR", "fail-open", 1);
  extproc_processor *p = idempotency_processor_new();
  assert_non_null(p);
  extproc_harness *h;
  assert_null(post(p, "POST", "k-1", "{}", &h));
  assert_string_equal(extproc_harness_upstream_header(h, "idempotency-key"), "k-1");
  const char *response[] = {":status", "201", "content-type", "text/plain", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, response, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "ok", 2, true), 0);
  assert_null(extproc_harness_immediate_response(h));
  extproc_harness_free(h);
  extproc_processor_free(p);
  clear_settings();
}

static void test_what_is_not_ours_passes_and_bad_keys_get_400(void **state) {
  (void)state;
  clear_settings();
  extproc_processor *p = idempotency_processor_new();
  assert_non_null(p);
  extproc_harness *h;
  assert_null(post(p, "GET", "k-1", NULL, &h)); /* not a non-idempotent method */
  extproc_harness_free(h);
  assert_null(post(p, "PUT", "k-1", "{}", &h));
  extproc_harness_free(h);
  assert_null(post(p, "POST", NULL, "{}", &h)); /* no key */
  extproc_harness_free(h);
  char long_key[300];
  memset(long_key, 'a', sizeof(long_key) - 1);
  long_key[sizeof(long_key) - 1] = '\0';
  const char *bad[] = {long_key, "two words", "\"\"", "q\"uote"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    const extproc_harness_reply *r = post(p, "POST", bad[i], "{}", &h);
    assert_non_null(r);
    assert_int_equal(r->immediate_status, 400);
    extproc_harness_free(h);
  }
  extproc_processor_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_settings_defaults),
      cmocka_unit_test(test_settings_parsed),
      cmocka_unit_test(test_bad_settings_make_no_processor),
      cmocka_unit_test(test_record_parse),
      cmocka_unit_test(test_replayed_headers),
      cmocka_unit_test(test_no_loop_rejects_with_503),
      cmocka_unit_test(test_no_loop_fails_open),
      cmocka_unit_test(test_what_is_not_ours_passes_and_bad_keys_get_400),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
