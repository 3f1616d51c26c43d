/* AccessLogExtProcService (processors/access_log): the writer (rotation, a full queue, a full
 * disk) and the processor through the in-process harness (fields, redaction, bodies, an
 * exchange ended early, bad settings). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "access_log.h"
#include "extproc/testing.h"
#include "test_util.h"
#include "writer.h"

static char dir[] = "/tmp/access-log-test-XXXXXX";

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 20);
  assert_non_null(buf);
  *len = fread(buf, 1, (1 << 20) - 1, f);
  buf[*len] = '\0';
  fclose(f);
  return buf;
}

static void path_of(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static char *line_of(char c, size_t len) {
  char *s = malloc(len + 1);
  assert_non_null(s);
  memset(s, c, len);
  s[len] = '\0';
  return s;
}

/* ---------------------------------------------------------------- the writer */

/* 50 lines of 100 bytes into files of at most 1000: 5 files made, the newest 3 kept. */
static void test_rotation(void **state) {
  (void)state;
  char path[256], name[300];
  path_of(path, sizeof(path), "rotate.log");
  al_writer *w;
  al_writer_options o = {
      .path = path, .max_bytes = 1000, .keep = 2, .queue_lines = 100, .queue_bytes = 1 << 20};
  assert_int_equal(al_writer_new(&w, &o), 0);
  for (int i = 0; i < 50; i++) {
    char *line = line_of((char)('a' + i / 10), 99);
    assert_true(al_writer_push(w, line, 99));
  }
  al_writer_flush(w);
  al_writer_stats st;
  al_writer_stats_get(w, &st);
  assert_int_equal(st.written, 50);
  assert_int_equal(st.rotations, 4);
  assert_int_equal(st.dropped_queue + st.dropped_write, 0);
  const char *suffix[] = {"", ".1", ".2"};
  const char expect[] = {'e', 'd', 'c'}; /* newest first */
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof(name), "%s%s", path, suffix[i]);
    size_t len;
    char *text = read_file(name, &len);
    assert_non_null(text);
    assert_int_equal(len, 1000);
    for (size_t k = 0; k < len; k++)
      assert_int_equal(text[k], k % 100 == 99 ? '\n' : expect[i]);
    free(text);
    unlink(name);
  }
  snprintf(name, sizeof(name), "%s.3", path);
  assert_int_equal(access(name, F_OK), -1); /* keep = 2: the oldest are gone */
  al_writer_free(w);
}

/* A writer stuck on a full pipe: the queue fills, further lines are dropped and counted at
 * once, and what was accepted is written whole once the pipe is read. */
static void test_queue_full_drops(void **state) {
  (void)state;
  char path[256];
  path_of(path, sizeof(path), "fifo");
  assert_int_equal(mkfifo(path, 0600), 0);
  int rd = open(path, O_RDWR | O_NONBLOCK); /* a reader, so the writer's open succeeds */
  assert_true(rd >= 0);
  al_writer *w;
  al_writer_options o = {
      .path = path, .max_bytes = 0, .keep = 1, .queue_lines = 4, .queue_bytes = 1 << 20};
  assert_int_equal(al_writer_new(&w, &o), 0);
  enum { LINES = 100, LEN = 16 * 1024 - 1 };
  int accepted = 0;
  for (int i = 0; i < LINES; i++)
    accepted += al_writer_push(w, line_of('x', LEN), LEN);
  /* At most: a pipe's 64 KiB, the batch being written, a full queue. */
  assert_true(accepted <= 12);
  size_t got = 0;
  char buf[65536];
  al_writer_stats st = {0};
  int64_t deadline = now_ms() + 10000;
  while (now_ms() < deadline) {
    ssize_t n = read(rd, buf, sizeof(buf));
    if (n > 0) {
      for (ssize_t k = 0; k < n; k++)
        got += buf[k] == '\n';
      continue;
    }
    al_writer_stats_get(w, &st);
    if (st.written + st.dropped_queue == LINES && got == st.written) break;
    sleep_ms(5);
  }
  assert_int_equal(st.written + st.dropped_queue, LINES);
  assert_int_equal(st.written, (uint64_t)accepted);
  assert_int_equal(st.dropped_queue, (uint64_t)(LINES - accepted));
  assert_int_equal(st.dropped_write, 0);
  assert_int_equal(got, st.written);
  al_writer_free(w);
  close(rd);
  unlink(path);
}

/* Every write fails (ENOSPC): the lines are counted as lost, nothing blocks or fails. */
static void test_full_disk(void **state) {
  (void)state;
  al_writer *w;
  al_writer_options o = {
      .path = "/dev/full", .max_bytes = 0, .keep = 1, .queue_lines = 100, .queue_bytes = 1 << 20};
  assert_int_equal(al_writer_new(&w, &o), 0);
  for (int i = 0; i < 20; i++)
    assert_true(al_writer_push(w, line_of('y', 10), 10));
  al_writer_flush(w);
  al_writer_stats st;
  al_writer_stats_get(w, &st);
  assert_int_equal(st.written, 0);
  assert_int_equal(st.dropped_write, 20);
  al_writer_free(w);
}

/* ---------------------------------------------------------------- the processor */

static const char *const settings[] = {
    "EXTPROC_ACCESS_LOG_PATH",           "EXTPROC_ACCESS_LOG_MAX_BYTES",
    "EXTPROC_ACCESS_LOG_KEEP",           "EXTPROC_ACCESS_LOG_HEADERS",
    "EXTPROC_ACCESS_LOG_REDACT_HEADERS", "EXTPROC_ACCESS_LOG_REDACT_FIELDS",
    "EXTPROC_ACCESS_LOG_BODY_CAP",       "EXTPROC_ACCESS_LOG_QUEUE",
    "EXTPROC_ACCESS_LOG_QUEUE_BYTES"};

static void clear_settings(void) {
  for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++)
    unsetenv(settings[i]);
}

/* A processor logging to `name` in the test directory, bodies up to 64 bytes. */
static extproc_processor *processor_to(const char *name, char *path, size_t cap) {
  clear_settings();
  path_of(path, cap, name);
  setenv("EXTPROC_ACCESS_LOG_PATH", path, 1);
  setenv("EXTPROC_ACCESS_LOG_HEADERS", "x-client, Authorization,content-type", 1);
  setenv("EXTPROC_ACCESS_LOG_REDACT_FIELDS", "password,token", 1);
  setenv("EXTPROC_ACCESS_LOG_BODY_CAP", "64", 1);
  extproc_processor *p = access_log_processor_new();
  assert_non_null(p);
  return p;
}

/* The log's lines, each parsed (the test fails on a line that is not JSON). */
static size_t read_lines(const char *path, cJSON **lines, size_t max) {
  access_log_flush();
  size_t len, n = 0;
  char *text = read_file(path, &len);
  assert_non_null(text);
  for (char *p = text, *nl; (nl = strchr(p, '\n')); p = nl + 1) {
    *nl = '\0';
    assert_true(n < max);
    lines[n] = cJSON_Parse(p);
    if (!lines[n]) fail_msg("not JSON: %s", p);
    n++;
  }
  free(text);
  return n;
}

static const char *str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  assert_true(cJSON_IsNumber(v));
  return v->valuedouble;
}

static bool is_null(const cJSON *o, const char *key) {
  return cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, key));
}

static void free_lines(cJSON **lines, size_t n) {
  for (size_t i = 0; i < n; i++)
    cJSON_Delete(lines[i]);
}

#define LOGIN "{\"user\":\"ann\",\"password\":\"hunter2\",\"deep\":[{\"Token\":7}],\"n\":1}"

static void test_buffered_exchange(void **state) {
  (void)state;
  char path[256];
  extproc_processor *p = processor_to("buffered.log", path, sizeof(path));
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *req[] = {":method",
                       "POST",
                       ":path",
                       "/login?x=1",
                       ":authority",
                       "api.test",
                       "x-request-id",
                       "rid-1",
                       "authorization",
                       "Bearer secret",
                       "x-client",
                       "c1",
                       "x-client",
                       "c2",
                       "content-type",
                       "application/json",
                       "x-other",
                       "not logged",
                       NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, req, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, LOGIN, strlen(LOGIN), true), 0);
  sleep_ms(2); /* the upstream's time */
  const char *resp[] = {":status", "201", "content-type", "text/plain", "set-cookie", "s=1", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, resp, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "done", 4, true), 0);
  cJSON *lines[4];
  /* The line is written at the response's end, before the stream closes. */
  assert_int_equal(read_lines(path, lines, 4), 1);
  extproc_harness_free(h);
  const cJSON *l = lines[0];
  assert_string_equal(str(l, "method"), "POST");
  assert_string_equal(str(l, "path"), "/login?x=1");
  assert_string_equal(str(l, "authority"), "api.test");
  assert_string_equal(str(l, "request_id"), "rid-1");
  assert_int_equal(num(l, "status"), 201);
  assert_int_equal(num(l, "request_bytes"), strlen(LOGIN));
  assert_int_equal(num(l, "response_bytes"), 4);
  assert_true(num(l, "upstream_ms") >= 2.0);
  assert_true(num(l, "duration_ms") >= num(l, "upstream_ms"));
  assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "complete")));
  assert_int_equal(strlen(str(l, "start_time")), strlen("2026-01-01T00:00:00.000000Z"));
  const cJSON *rh = cJSON_GetObjectItemCaseSensitive(l, "request_headers");
  assert_string_equal(str(rh, "authorization"), "[REDACTED]");
  assert_string_equal(str(rh, "x-client"), "c1, c2");
  assert_string_equal(str(rh, "content-type"), "application/json");
  assert_null(str(rh, "x-other"));
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(l, "response_headers");
  assert_string_equal(str(sh, "content-type"), "text/plain");
  assert_null(str(sh, "set-cookie")); /* not chosen: redaction does not add headers */
  /* Fields redacted at any depth, any case; the rest kept. */
  cJSON *body = cJSON_Parse(str(l, "request_body"));
  assert_non_null(body);
  assert_string_equal(str(body, "password"), "[REDACTED]");
  assert_string_equal(str(body, "user"), "ann");
  const cJSON *deep = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(body, "deep"), 0);
  assert_string_equal(str(deep, "Token"), "[REDACTED]");
  cJSON_Delete(body);
  assert_string_equal(str(l, "response_body"), "done");
  free_lines(lines, 1);
  size_t len;
  char *raw = read_file(path, &len);
  assert_null(strstr(raw, "hunter2"));
  assert_null(strstr(raw, "Bearer"));
  free(raw);
  extproc_processor_free(p);
}

/* Chunks (STREAMED, FULL_DUPLEX_STREAMED): every byte counted, the first 64 kept; a binary
 * body as base64; a truncated JSON body cannot be redacted and is left out. */
static void test_streamed_chunks(void **state) {
  (void)state;
  char path[256];
  extproc_processor *p = processor_to("streamed.log", path, sizeof(path));
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_STREAMED, EXTPROC_BODY_STREAMED);
  const char *req[] = {":method", "PUT", ":path", "/up", ":authority", "a", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, req, false), 0);
  char chunk[50];
  memset(chunk, ' ', sizeof(chunk));
  chunk[0] = '{'; /* JSON, 150 bytes over 3 chunks: cut at 64 */
  for (int i = 0; i < 3; i++)
    assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, chunk, 50, i == 2), 0);
  const char *resp[] = {":status", "200", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, resp, false), 0);
  const uint8_t bin[] = {0xff, 0x00, 0x01, 0x02};
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, bin, 4, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, bin, 4, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "", 0, true), 0);
  extproc_harness_free(h);
  cJSON *lines[4];
  assert_int_equal(read_lines(path, lines, 4), 1);
  const cJSON *l = lines[0];
  assert_int_equal(num(l, "request_bytes"), 150);
  assert_int_equal(num(l, "response_bytes"), 8);
  assert_null(str(l, "request_body"));
  assert_string_equal(str(l, "request_body_omitted"), "truncated JSON body cannot be redacted");
  assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "request_body_truncated")));
  assert_string_equal(str(l, "response_body_base64"), "/wABAv8AAQI=");
  assert_null(cJSON_GetObjectItemCaseSensitive(l, "response_body_truncated"));
  free_lines(lines, 1);
  extproc_processor_free(p);
}

/* Envoy ends the stream after the request: the line is still written, marked incomplete. A
 * text body cut inside a character loses the partial character; invalid UTF-8 in a header
 * becomes U+FFFD and the line stays valid JSON. */
static void test_ended_early(void **state) {
  (void)state;
  char path[256];
  extproc_processor *p = processor_to("early.log", path, sizeof(path));
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *req[] = {":method", "POST", ":path", "/p", "x-client", "bad\xff", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, req, false), 0);
  char body[80];
  memset(body, 'a', sizeof(body));
  memcpy(body + 63, "\xc3\xa9", 2); /* "é" across the 64-byte cap */
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, body, 63, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, body + 63, 17, true), 0);
  extproc_harness_free(h); /* a reset before any response */
  cJSON *lines[4];
  assert_int_equal(read_lines(path, lines, 4), 1);
  const cJSON *l = lines[0];
  assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(l, "complete")));
  assert_true(is_null(l, "status"));
  assert_true(is_null(l, "response_bytes"));
  assert_true(is_null(l, "upstream_ms"));
  assert_true(is_null(l, "authority"));
  assert_int_equal(num(l, "request_bytes"), 80);
  assert_int_equal(strlen(str(l, "request_body")), 63);
  const cJSON *rh = cJSON_GetObjectItemCaseSensitive(l, "request_headers");
  assert_string_equal(str(rh, "x-client"), "bad\xef\xbf\xbd");
  free_lines(lines, 1);
  extproc_processor_free(p);
}

static void test_bad_settings(void **state) {
  (void)state;
  const char *bad[][2] = {{"EXTPROC_ACCESS_LOG_KEEP", "0"},
                          {"EXTPROC_ACCESS_LOG_KEEP", "5x"},
                          {"EXTPROC_ACCESS_LOG_BODY_CAP", "2MiB"},
                          {"EXTPROC_ACCESS_LOG_MAX_BYTES", "10kb"},
                          {"EXTPROC_ACCESS_LOG_QUEUE", "0"},
                          {"EXTPROC_ACCESS_LOG_QUEUE_BYTES", "1KiB"},
                          {"EXTPROC_ACCESS_LOG_HEADERS", "user agent"},
                          {"EXTPROC_ACCESS_LOG_PATH", "/nonexistent-dir/x.log"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    clear_settings();
    setenv("EXTPROC_ACCESS_LOG_PATH", "/dev/null", 1);
    setenv(bad[i][0], bad[i][1], 1);
    extproc_processor *p = access_log_processor_new();
    if (p) fail_msg("%s=%s was accepted", bad[i][0], bad[i][1]);
  }
  clear_settings();
  setenv("EXTPROC_ACCESS_LOG_PATH", "/dev/null", 1);
  setenv("EXTPROC_ACCESS_LOG_MAX_BYTES", "10MiB", 1);
  setenv("EXTPROC_ACCESS_LOG_HEADERS", "*", 1);
  extproc_processor *p = access_log_processor_new();
  assert_non_null(p);
  extproc_processor_free(p);
  clear_settings();
}

int main(void) {
  extproc_log_set_level(EXTPROC_LOG_OFF);
  if (!mkdtemp(dir)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rotation),        cmocka_unit_test(test_queue_full_drops),
      cmocka_unit_test(test_full_disk),       cmocka_unit_test(test_buffered_exchange),
      cmocka_unit_test(test_streamed_chunks), cmocka_unit_test(test_ended_early),
      cmocka_unit_test(test_bad_settings),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  const char *made[] = {"buffered.log", "streamed.log", "early.log"};
  for (size_t i = 0; i < sizeof(made) / sizeof(made[0]); i++) {
    char path[256];
    path_of(path, sizeof(path), made[i]);
    unlink(path);
  }
  rmdir(dir);
  return failed;
}
