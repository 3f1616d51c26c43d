/* Header helpers: reading raw_value with fallback to value, case-insensitive lookups, and the
 * validation every header write goes through. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/headers.h"
#include "testing/envoy_request.h"

static void test_load_prefers_raw_value(void **state) {
  (void)state;
  arena a;
  arena_init(&a, 1024);
  static const char *const sent[] = {"x-raw", "raw-wins", "x-legacy", "", "x-empty", ""};
  Envoy__Config__Core__V3__HeaderMap *map = envoy_header_map(&a, sent, 3);
  assert_non_null(map);
  map->headers[0]->value = "ignored";    /* both fields: raw_value wins */
  map->headers[1]->value = "from-value"; /* an older sender's: only the legacy field */

  extproc_header *h;
  size_t n;
  assert_true(headers_load(&a, map, &h, &n));
  assert_int_equal(n, 3);
  assert_string_equal(h[0].value, "raw-wins");
  assert_int_equal(h[0].value_len, 8);
  assert_string_equal(h[1].value, "from-value");
  assert_string_equal(h[2].value, "");
  assert_int_equal(h[2].value_len, 0);
  assert_true(headers_load(&a, NULL, &h, &n));
  assert_int_equal(n, 0);
  arena_free(&a);
}

static void test_names(void **state) {
  (void)state;
  assert_true(header_name_equal("Content-Type", "content-type"));
  assert_false(header_name_equal("content-type", "content-typ"));
  assert_true(header_name_valid("x-extra-request-id"));
  assert_true(header_name_valid(":path"));
  assert_true(header_name_valid("X-Upper_Case.1~"));
  assert_false(header_name_valid(""));
  assert_false(header_name_valid(":"));
  assert_false(header_name_valid("bad name"));
  assert_false(header_name_valid("bad:name"));
  assert_false(header_name_valid("x\r\n"));
  assert_false(header_name_valid(NULL));
}

static void test_values(void **state) {
  (void)state;
  assert_true(header_value_valid("plain value, with; punctuation", 30));
  assert_true(header_value_valid("", 0));
  assert_false(header_value_valid("a\r\nb", 4));
  assert_false(header_value_valid("a\0b", 3));
  assert_false(header_value_valid(NULL, 0));
}

static void test_parse_length(void **state) {
  (void)state;
  assert_int_equal(header_parse_length("0", 1), 0);
  assert_int_equal(header_parse_length(" 1234 ", 6), 1234);
  assert_int_equal(header_parse_length("", 0), -1);
  assert_int_equal(header_parse_length("12a", 3), -1);
  assert_int_equal(header_parse_length("-1", 2), -1);
  assert_int_equal(header_parse_length("99999999999999999999999", 23), -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_prefers_raw_value),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_parse_length),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
