/* extproc-test's C library (tools/extproc-test/extproc_test.h) used directly, against a server
 * in this process: loading files (and their errors), running in parallel, results, the filter
 * and the three reports. The tool's picture of Envoy is checked elsewhere, against real Envoy
 * (tests/e2e/test_scenarios_envoy.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "extproc/extproc.h"
#include "extproc/server.h"
#include "extproc_test.h"
#include "test_util.h"

/* Copies x-request-id into x-copied-id on the request, and answers 418 to x-teapot: yes. */
static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  const char *teapot = extproc_header_get(req, "x-teapot");
  if (teapot && strcmp(teapot, "yes") == 0)
    return extproc_immediate_response(req, 418) == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
  const char *id = extproc_header_get(req, "x-request-id");
  if (id && extproc_header_set(req, "x-copied-id", id) != 0) return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

typedef struct fixture {
  extproc_processor *proc;
  extproc_server *srv;
  char target[64];
  char dir[64];
  char path[128];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof(*f));
  if (!f || extproc_processor_new(&f->proc, "scenario-test") != 0 ||
      extproc_processor_on(f->proc, EXTPROC_REQUEST_HEADERS, on_request_headers) != 0)
    return -1;
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  opts.drain_delay_ms = 0;
  if (extproc_server_new(&f->srv, &opts) != 0) return -1;
  const int index = extproc_server_listen(f->srv, "127.0.0.1:0", f->proc);
  if (index < 0 || extproc_server_start(f->srv) != 0) return -1;
  snprintf(f->target, sizeof(f->target), "127.0.0.1:%d", extproc_server_port(f->srv, index));
  snprintf(f->dir, sizeof(f->dir), "/tmp/extproc-scenarios-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  snprintf(f->path, sizeof(f->path), "%s/s.yaml", f->dir);
  *state = f;
  return watchdog_setup(state) == 0 ? 0 : -1;
}

static int teardown(void **state) {
  fixture *f = *state;
  extproc_server_stop_now(f->srv);
  extproc_server_wait(f->srv);
  extproc_server_free(f->srv);
  extproc_processor_free(f->proc);
  unlink(f->path);
  rmdir(f->dir);
  free(f);
  watchdog_teardown(state);
  return 0;
}

static void write_file(const char *path, const char *text) {
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  assert_true(fputs(text, file) >= 0);
  assert_int_equal(fclose(file), 0);
}

static const char SCENARIOS[] = "scenarios:\n"
                                "  - name: the id is copied\n"
                                "    request: {headers: {x-request-id: abc}}\n"
                                "    expect:\n"
                                "      upstream: {headers: {x-copied-id: abc}}\n"
                                "      client: {status: 200}\n"
                                "  - name: a teapot is answered at once\n"
                                "    request: {headers: {x-teapot: \"yes\"}}\n"
                                "    expect: {upstream: none, client: {status: 418}}\n"
                                "  - name: this one expects what does not happen\n"
                                "    request: {headers: {x-request-id: def}}\n"
                                "    expect: {upstream: {headers: {x-copied-id: xyz}}}\n";

static const extest_result *by_name(const extest_suite *s, const char *name) {
  for (size_t i = 0; i < extest_suite_count(s); i++)
    if (strcmp(extest_suite_result(s, i)->name, name) == 0) return extest_suite_result(s, i);
  fail_msg("no scenario named %s", name);
  return NULL;
}

/* Everything a report wrote, as a string (caller frees). */
static char *report_text(int (*report)(const extest_suite *, FILE *), const extest_suite *s) {
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  assert_non_null(mem);
  assert_int_equal(report(s, mem), 0);
  assert_int_equal(fclose(mem), 0);
  return text;
}

static int text_report(const extest_suite *s, FILE *f) { return extest_report_text(s, f, false); }

/* The suite of SCENARIOS, written to the fixture's file. */
static extest_suite *load_scenarios(fixture *f) {
  write_file(f->path, SCENARIOS);
  extest_suite *suite;
  char err[256];
  const char *paths[] = {f->path};
  assert_int_equal(extest_suite_load(&suite, paths, 1, err, sizeof(err)), 0);
  return suite;
}

static void test_runs_and_reports(void **state) {
  fixture *f = *state;
  extest_suite *suite = load_scenarios(f);
  assert_int_equal(extest_suite_count(suite), 3);
  assert_int_equal(extest_suite_result(suite, 0)->status, EXTEST_SKIPPED); /* not run yet */
  const extest_target target = {.address = f->target};
  const extest_options options = {.jobs = 3};
  assert_int_equal(extest_suite_run(suite, &target, &options), 1);

  assert_int_equal(by_name(suite, "the id is copied")->status, EXTEST_PASSED);
  assert_non_null(
      strstr(by_name(suite, "the id is copied")->outcome_json, "[\"x-copied-id\",\"abc\"]"));
  assert_int_equal(by_name(suite, "a teapot is answered at once")->status, EXTEST_PASSED);
  const extest_result *wrong = by_name(suite, "this one expects what does not happen");
  assert_int_equal(wrong->status, EXTEST_FAILED);
  assert_int_equal(wrong->failure_count, 1);
  assert_string_equal(wrong->failures[0],
                      "upstream header x-copied-id: expected \"xyz\", got \"def\"");
  assert_int_equal(wrong->judgment_count, 0);

  char *text = report_text(text_report, suite);
  assert_non_null(strstr(text, "2 passed, 1 failed, 0 errors, 0 skipped"));
  free(text);
  char *json = report_text(extest_report_json, suite);
  assert_non_null(strstr(json, "\"passed\":\t2"));
  assert_non_null(strstr(json, "\"failed\":\t1"));
  free(json);
  char *xml = report_text(extest_report_junit, suite);
  assert_non_null(strstr(xml, "tests=\"3\" failures=\"1\" errors=\"0\""));
  assert_non_null(strstr(xml, "expected &quot;xyz&quot;"));
  free(xml);

  /* A second run, filtered: the rest is skipped, and results start afresh. */
  const extest_options only_teapot = {.jobs = 1, .filter = "teapot"};
  assert_int_equal(extest_suite_run(suite, &target, &only_teapot), 0);
  assert_int_equal(by_name(suite, "a teapot is answered at once")->status, EXTEST_PASSED);
  assert_int_equal(by_name(suite, "the id is copied")->status, EXTEST_SKIPPED);
  assert_ptr_equal(by_name(suite, "this one expects what does not happen"), wrong);
  assert_int_equal(wrong->status, EXTEST_SKIPPED);
  assert_int_equal(wrong->failure_count, 0);
  extest_suite_free(suite);
}

static void test_load_errors_name_file_and_line(void **state) {
  fixture *f = *state;
  write_file(f->path, "scenarios:\n  - name: a\n    reqeust: {}\n");
  extest_suite *suite = (extest_suite *)1;
  char err[256];
  const char *paths[] = {f->path};
  assert_int_equal(extest_suite_load(&suite, paths, 1, err, sizeof(err)), -1);
  assert_null(suite);
  char want[200];
  snprintf(want, sizeof(want), "%s:3: unknown key 'reqeust' in a scenario", f->path);
  assert_string_equal(err, want);
  const char *missing[] = {"/nonexistent/scenarios.yaml"};
  assert_int_equal(extest_suite_load(&suite, missing, 1, err, sizeof(err)), -1);
  assert_string_equal(err, "/nonexistent/scenarios.yaml: No such file or directory");
}

static void test_nothing_listening_is_an_error(void **state) {
  extest_suite *suite = load_scenarios(*state);
  const extest_target nowhere = {.address = "unix:/nonexistent/extproc.sock"};
  assert_int_equal(extest_suite_run(suite, &nowhere, NULL), 3);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(extest_suite_result(suite, i)->status, EXTEST_ERROR);
  extest_suite_free(suite);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_runs_and_reports, setup, teardown),
      cmocka_unit_test_setup_teardown(test_load_errors_name_file_and_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nothing_listening_is_an_error, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
