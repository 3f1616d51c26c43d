/* Log lines: the text and JSON formats with their context fields, escaping of peer-supplied
 * text, and the rate limit on repeated warnings with its suppressed count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/log.h"
#include "test_util.h"

/* Lines written to stderr while `capture_start` .. `capture_end` run, in a malloc'd string. */
static int saved_stderr = -1;
static FILE *capture_file;

static void capture_start(void) {
  fflush(stderr);
  capture_file = tmpfile();
  assert_non_null(capture_file);
  saved_stderr = dup(STDERR_FILENO);
  dup2(fileno(capture_file), STDERR_FILENO);
}

static char *capture_end(void) {
  fflush(stderr);
  dup2(saved_stderr, STDERR_FILENO);
  close(saved_stderr);
  const long len = ftell(capture_file);
  char *text = calloc(1, (size_t)len + 1);
  rewind(capture_file);
  assert_int_equal(fread(text, 1, (size_t)len, capture_file), (size_t)len);
  fclose(capture_file);
  return text;
}

static size_t count_of(const char *text, const char *what) {
  size_t n = 0;
  for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
    n++;
  return n;
}

static void test_text_lines_carry_the_context(void **state) {
  (void)state;
  extproc_log_set_format(EXTPROC_LOG_FORMAT_TEXT);
  const log_context ctx = {
      .processor = "P", .phase = "request_headers", .request_id = "r1", .peer = "127.0.0.1:4242"};
  const log_context peer_only = {.peer = "[::1]:7"};
  capture_start();
  log_ctx_line(EXTPROC_LOG_INFO, &ctx, "hello %d", 1);
  log_ctx_line(EXTPROC_LOG_INFO, &peer_only, "bye");
  log_line(EXTPROC_LOG_INFO, "bad\nline\x1b");
  log_line(EXTPROC_LOG_DEBUG, "not shown at info");
  char *text = capture_end();
  assert_non_null(strstr(text, " INFO  processor=P phase=request_headers request_id=r1 "
                               "peer=127.0.0.1:4242: hello 1\n"));
  assert_non_null(strstr(text, " INFO  peer=[::1]:7: bye\n"));
  assert_non_null(strstr(text, " INFO  bad?line?\n")); /* no forged line, no escape code */
  assert_null(strstr(text, "not shown"));
  assert_int_equal(count_of(text, "\n"), 3);
  free(text);
}

static void test_json_lines_escape_everything(void **state) {
  (void)state;
  extproc_log_set_format(EXTPROC_LOG_FORMAT_JSON);
  const log_context ctx = {.processor = "P", .request_id = "id\"\\\x01\xff\xc3\xa9"};
  capture_start();
  log_ctx_line(EXTPROC_LOG_WARN, &ctx, "quote \" tab \t end");
  log_line(EXTPROC_LOG_ERROR, "plain");
  char *text = capture_end();
  extproc_log_set_format(EXTPROC_LOG_FORMAT_TEXT);
  /* Quotes and backslashes escaped, control characters as \u00XX, an invalid byte as U+FFFD,
   * valid UTF-8 (é) kept; unknown fields (phase, peer) left out. */
  assert_non_null(strstr(text, "\"level\":\"WARN\",\"processor\":\"P\",\"request_id\":"
                               "\"id\\\"\\\\\\u0001\\ufffd\xc3\xa9\",\"message\":\"quote \\\" "
                               "tab \\u0009 end\"}\n"));
  assert_non_null(strstr(text, "{\"time\":\""));
  assert_non_null(strstr(text, "\"level\":\"ERROR\",\"message\":\"plain\"}\n"));
  assert_null(strstr(text, "phase"));
  free(text);
}

static void test_format_parse(void **state) {
  (void)state;
  extproc_log_format f;
  assert_int_equal(extproc_log_format_parse("JSON", &f), 0);
  assert_int_equal(f, EXTPROC_LOG_FORMAT_JSON);
  assert_int_equal(extproc_log_format_parse("text", &f), 0);
  assert_int_equal(f, EXTPROC_LOG_FORMAT_TEXT);
  assert_int_equal(extproc_log_format_parse("xml", &f), EXTPROC_EINVAL);
  assert_int_equal(extproc_log_format_parse(NULL, &f), EXTPROC_EINVAL);
}

/* Sums the "(N similar lines suppressed)" counts in `text`. */
static unsigned long suppressed_in(const char *text) {
  unsigned long sum = 0;
  for (const char *p = text; (p = strstr(p, " ("));) {
    unsigned long n;
    char word[16];
    p += 2;
    if (sscanf(p, "%lu %15s", &n, word) == 2 && strcmp(word, "similar") == 0) sum += n;
  }
  return sum;
}

static void test_repeated_warnings_are_limited_and_counted(void **state) {
  (void)state;
  enum { LINES = 1000 };
  capture_start();
  for (int i = 0; i < LINES; i++)
    log_line(EXTPROC_LOG_WARN, "the same warning %d", i);
  sleep_ms(1100); /* a new window: the next line reports what the last one dropped */
  log_line(EXTPROC_LOG_WARN, "the same warning %d", LINES);
  for (int i = 0; i < 3; i++)
    log_line(EXTPROC_LOG_INFO, "info is never limited");
  char *text = capture_end();
  const size_t printed = count_of(text, "the same warning");
  /* However the seconds fall, every line is either printed or counted, and bursts are cut. */
  assert_true(printed >= LOG_BURST + 1);
  assert_true(printed <= 3 * LOG_BURST + 1);
  assert_int_equal(printed - 1 + suppressed_in(text), LINES);
  assert_non_null(strstr(text, "similar lines suppressed)\n"));
  assert_int_equal(count_of(text, "info is never limited"), 3);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_text_lines_carry_the_context),
      cmocka_unit_test(test_json_lines_escape_everything),
      cmocka_unit_test(test_format_parse),
      cmocka_unit_test(test_repeated_warnings_are_limited_and_counted),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
