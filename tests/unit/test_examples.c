/* Every example processor, driven through the public testing harness exactly as an author would
 * test their own; plus the harness's own behaviour (deferred answers, observability mode). */
#include <openssl/evp.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "examples.h"
#include "extproc/testing.h"

/* ---- Helpers ----------------------------------------------------------------------------- */

static extproc_processor *make(const char *name) {
  const example *ex = example_find(name);
  assert_non_null(ex);
  extproc_processor *p = example_new(ex);
  assert_non_null(p);
  return p;
}

static void sha256_hex(const char *text, char hex[65]) {
  unsigned char sum[32];
  unsigned int n = 0;
  assert_int_equal(EVP_Digest(text, strlen(text), sum, &n, EVP_sha256(), NULL), 1);
  for (unsigned i = 0; i < n; i++)
    snprintf(hex + 2 * i, 3, "%02x", sum[i]);
}

static void send_headers(extproc_harness *h, extproc_phase phase, const char *const *headers,
                         bool end_of_stream) {
  assert_int_equal(extproc_harness_headers(h, phase, headers, end_of_stream), 0);
}

static void send_body(extproc_harness *h, extproc_phase phase, const char *body) {
  assert_int_equal(extproc_harness_body(h, phase, body, strlen(body), true), 0);
}

static const char *const GET[] = {":method",      "GET",   ":path",      "/things?x=1",
                                  ":scheme",      "http",  ":authority", "shop",
                                  "x-request-id", "rid-7", NULL};
static const char *const RESPONSE_200[] = {":status", "200", "content-type", "application/json",
                                           NULL};

static int setup_env(void **state) {
  (void)state;
  setenv("REVEAL_EXTPROC_CHAIN", "true", 1);
  unsetenv("EXTPROCS_APPLIED_HEADER");
  return 0;
}

/* ---- Trivial and the chain header ------------------------------------------------------- */

static void test_trivial(void **state) {
  (void)state;
  extproc_processor *p = make("trivial");
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
  assert_string_equal(extproc_harness_upstream_header(h, "x-extra-request-id"), "rid-7");
  const char *const response[] = {":status", "200", "x-ext-procs-applied", "Later", NULL};
  send_headers(h, EXTPROC_RESPONSE_HEADERS, response, true);
  assert_string_equal(extproc_harness_client_header(h, "x-extra-request-id"), "rid-7");
  /* Its name goes first, before what the processors nearer the upstream wrote. */
  assert_string_equal(extproc_harness_client_header(h, "x-ext-procs-applied"),
                      "TrivialExtProcService,Later");
  const extproc_harness_header_write *w = extproc_harness_last_reply(h)->header_writes;
  assert_false(w[0].value_field_set); /* raw_value only */
  assert_int_equal(extproc_harness_end(h), 0);
  uint32_t status = 99;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_chain_header_settings(void **state) {
  (void)state;
  setenv("EXTPROCS_APPLIED_HEADER", "x-chain", 1);
  extproc_processor *p = make("BaseExtProcService");
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true);
  assert_string_equal(extproc_harness_client_header(h, "x-chain"), "BaseExtProcService");
  assert_null(extproc_harness_client_header(h, "x-ext-procs-applied"));
  extproc_harness_free(h);
  extproc_processor_free(p);

  setenv("REVEAL_EXTPROC_CHAIN", "TRUE", 1); /* the Python SDK's rule: not a true value */
  p = make("base");
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true);
  assert_null(extproc_harness_client_header(h, "x-chain"));
  assert_int_equal(extproc_harness_last_reply(h)->header_write_count, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
  setup_env(NULL);
}

static void test_base_changes_nothing(void **state) {
  (void)state;
  extproc_processor *p = make("base");
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *const trailers[] = {"x-t", "1", NULL};
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, false);
  send_body(h, EXTPROC_REQUEST_BODY, "abc");
  send_headers(h, EXTPROC_REQUEST_TRAILERS, trailers, false);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, false);
  send_body(h, EXTPROC_RESPONSE_BODY, "{}");
  send_headers(h, EXTPROC_RESPONSE_TRAILERS, trailers, false);
  assert_int_equal(extproc_harness_reply_count(h), 6);
  for (size_t i = 0; i < 6; i++) {
    const extproc_harness_reply *r = extproc_harness_reply_at(h, i);
    assert_int_equal(r->kind, EXTPROC_HARNESS_PHASE_REPLY);
    assert_int_equal(r->body_change, EXTPROC_HARNESS_BODY_UNCHANGED);
    /* Only the chain header, on the response headers. */
    assert_int_equal(r->header_write_count, r->phase == EXTPROC_RESPONSE_HEADERS ? 1 : 0);
  }
  extproc_harness_free(h);
  extproc_processor_free(p);
}

/* ---- Timer ------------------------------------------------------------------------------ */

static void assert_rfc3339_micros(const char *s) {
  assert_non_null(s);
  /* 2026-11-29T17:22:26.123456Z */
  assert_int_equal(strlen(s), 27);
  const char *shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
  for (size_t i = 0; i < 27; i++) {
    if (shape[i] == 'd')
      assert_true(s[i] >= '0' && s[i] <= '9');
    else
      assert_int_equal(s[i], shape[i]);
  }
}

static long long positive_integer(const char *s) {
  assert_non_null(s);
  char *end;
  const long long n = strtoll(s, &end, 10);
  assert_true(*s && *end == '\0');
  assert_true(n > 0);
  return n;
}

static void test_timer_with_and_without_body(void **state) {
  (void)state;
  extproc_processor *p = make("timer");
  for (int with_body = 0; with_body < 2; with_body++) {
    extproc_harness *h;
    assert_int_equal(extproc_harness_new(&h, p), 0);
    send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
    const char *started = extproc_harness_upstream_header(h, "x-request-started");
    assert_rfc3339_micros(started);
    char copy[40];
    snprintf(copy, sizeof(copy), "%s", started);
    send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, !with_body);
    if (with_body) {
      /* Stamped on the last response phase: not yet. */
      assert_null(extproc_harness_client_header(h, "x-duration-ns"));
      send_body(h, EXTPROC_RESPONSE_BODY, "{}");
    }
    assert_string_equal(extproc_harness_client_header(h, "x-request-started"), copy);
    positive_integer(extproc_harness_client_header(h, "x-duration-ns"));
    extproc_harness_free(h);
  }
  extproc_processor_free(p);
}

/* ---- Digest and Decorated --------------------------------------------------------------- */

static void check_digest(const char *name, bool on_response) {
  extproc_processor *p = make(name);
  char want[65];

  /* A GET without body and without tenant: set at request_headers already. */
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
  sha256_hex("unknownGET/things?x=1", want);
  assert_string_equal(extproc_harness_upstream_header(h, "x-request-digest"), want);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true);
  if (on_response)
    assert_string_equal(extproc_harness_client_header(h, "x-request-digest"), want);
  else
    assert_null(extproc_harness_client_header(h, "x-request-digest"));
  extproc_harness_free(h);

  /* A PUT with a tenant and a JSON body: set once the body is seen. */
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *const put[] = {":method",     "PUT",  ":path",        "/orders/1",
                             "x-tenant-id", "acme", "content-type", "application/json",
                             NULL};
  send_headers(h, EXTPROC_REQUEST_HEADERS, put, false);
  assert_null(extproc_harness_reply_header(extproc_harness_last_reply(h), "x-request-digest"));
  send_body(h, EXTPROC_REQUEST_BODY, "{\"hello\":\"hi\"}");
  sha256_hex("acmePUT/orders/1{\"hello\":\"hi\"}", want);
  assert_string_equal(extproc_harness_upstream_header(h, "x-request-digest"), want);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true);
  if (on_response) assert_string_equal(extproc_harness_client_header(h, "x-request-digest"), want);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_digest(void **state) {
  (void)state;
  check_digest("DigestExtProcService", true);
}

static void test_decorated(void **state) {
  (void)state;
  check_digest("decorated", false);
}

/* ---- Echo ------------------------------------------------------------------------------- */

static void test_echo(void **state) {
  (void)state;
  extproc_processor *p = make("echo");
  const char *const post[] = {
      ":method",    "POST",           ":path", "/e",  "x-echo-only", "YES", "content-type",
      "text/plain", "content-length", "5",     "x-a", "1",           NULL};
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, post, false);
  assert_null(extproc_harness_immediate_response(h));
  send_body(h, EXTPROC_REQUEST_BODY, "hello");
  const extproc_harness_reply *im = extproc_harness_immediate_response(h);
  assert_non_null(im);
  assert_int_equal(im->immediate_status, 200);
  assert_int_equal(im->body_len, 5);
  assert_memory_equal(im->body, "hello", 5);
  assert_string_equal(extproc_harness_client_header(h, "x-a"), "1");
  assert_string_equal(extproc_harness_client_header(h, "x-echo-only"), "YES");
  assert_string_equal(extproc_harness_client_header(h, "content-type"), "text/plain");
  assert_null(extproc_harness_client_header(h, "content-length")); /* Envoy frames it */
  assert_null(extproc_harness_client_header(h, ":path"));
  assert_string_equal(extproc_harness_client_header(h, "x-ext-procs-applied"),
                      "EchoExtProcService");
  extproc_harness_free(h);

  /* Without a body: answered at request_headers, with an empty body. */
  const char *const get[] = {":method", "GET", ":path", "/e", "x-echo-only", "t", NULL};
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, get, true);
  im = extproc_harness_immediate_response(h);
  assert_non_null(im);
  assert_int_equal(im->body_len, 0);
  extproc_harness_free(h);

  /* Not truthy: the request goes on untouched. */
  const char *const no[] = {":method", "GET", ":path", "/e", "x-echo-only", "no", NULL};
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, no, true);
  assert_null(extproc_harness_immediate_response(h));
  assert_int_equal(extproc_harness_last_reply(h)->kind, EXTPROC_HARNESS_PHASE_REPLY);
  extproc_harness_free(h);
  extproc_processor_free(p);

  assert_true(example_truthy_any_case("True"));
  assert_true(example_truthy_any_case("y"));
  assert_false(example_truthy_any_case("1"));
  assert_false(example_truthy_any_case("yess"));
  assert_false(example_truthy_any_case(NULL));
}

/* ---- Context ---------------------------------------------------------------------------- */

static void test_context(void **state) {
  (void)state;
  extproc_processor *p = make("context");
  const char *const post[] = {":method",      "POST", ":path", "/ctx?id=9",
                              "x-context-id", "id-9", NULL};
  /* Body and the upstream's path match: the client gets the id back. */
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, post, false);
  assert_string_equal(extproc_harness_upstream_header(h, "x-context-id"), "id-9");
  send_body(h, EXTPROC_REQUEST_BODY, "id-9");
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, false);
  send_body(h, EXTPROC_RESPONSE_BODY, "{\"path\": \"/ctx?id=9\", \"body\": \"id-9\"}");
  assert_string_equal(extproc_harness_client_header(h, "x-context-id"), "id-9");
  assert_false(extproc_harness_stream_ended(h, NULL, NULL));
  extproc_harness_free(h);

  /* A body that differs fails the stream. */
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, post, false);
  send_body(h, EXTPROC_REQUEST_BODY, "id-10");
  uint32_t status = 0;
  const char *message = NULL;
  assert_true(extproc_harness_stream_ended(h, &status, &message));
  assert_int_equal(status, EXTPROC_GRPC_FAILED_PRECONDITION);
  assert_non_null(strstr(message, "x-context-id"));
  assert_null(extproc_harness_last_reply(h));
  extproc_harness_free(h);

  /* An upstream answer about another path fails the stream too. */
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, post, false);
  send_body(h, EXTPROC_REQUEST_BODY, "id-9");
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, false);
  send_body(h, EXTPROC_RESPONSE_BODY, "{\"path\": \"/elsewhere\"}");
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, EXTPROC_GRPC_FAILED_PRECONDITION);
  extproc_harness_free(h);

  /* Without x-context-id nothing is checked. */
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, false);
  send_body(h, EXTPROC_RESPONSE_BODY, "not json");
  assert_false(extproc_harness_stream_ended(h, NULL, NULL));
  assert_null(extproc_harness_client_header(h, "x-context-id"));
  extproc_harness_free(h);
  extproc_processor_free(p);
}

/* ---- Protocol ----------------------------------------------------------------------------- */

static void test_protocol_example(void **state) {
  (void)state;
  extproc_processor *p = make("protocol");
  const char *const post[] = {":method",
                              "POST",
                              ":path",
                              "/p",
                              "content-length",
                              "3",
                              "x-a",
                              "old",
                              "x-test-header-op",
                              "set:x-a=new;remove:x-b",
                              "x-test-body",
                              "upper",
                              "x-b",
                              "gone",
                              NULL};
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_BUFFERED, EXTPROC_BODY_BUFFERED);
  send_headers(h, EXTPROC_REQUEST_HEADERS, post, false);
  assert_string_equal(extproc_harness_upstream_header(h, "x-a"), "new");
  assert_null(extproc_harness_upstream_header(h, "x-b"));
  send_body(h, EXTPROC_REQUEST_BODY, "abc");
  assert_memory_equal(extproc_harness_last_reply(h)->body, "ABC", 3);
  send_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true);
  assert_string_equal(extproc_harness_client_header(h, "x-test-request-body"), "3");
  assert_string_equal(extproc_harness_client_header(h, "x-test-modes"), "BUFFERED,BUFFERED");
  extproc_harness_free(h);

  const char *const deny[] = {":method",         "GET", ":path", "/p", "x-test-immediate",
                              "request_headers", NULL};
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, deny, true);
  const extproc_harness_reply *im = extproc_harness_immediate_response(h);
  assert_non_null(im);
  assert_int_equal(im->immediate_status, 403);
  assert_memory_equal(im->body, "denied at request_headers", 25);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

/* ---- The harness itself ----------------------------------------------------------------- */

static void *resume_later(void *arg) {
  extproc_request *req = arg;
  extproc_header_set(req, "x-async", "yes");
  extproc_request_resume(req, EXTPROC_CONTINUE);
  return NULL;
}

static extproc_result defer_to_thread(extproc_request *req, void *ctx) {
  (void)ctx;
  pthread_t t;
  extproc_request_defer(req);
  pthread_create(&t, NULL, resume_later, req);
  pthread_detach(t);
  return EXTPROC_DEFER;
}

static void test_harness_waits_for_deferred_answers(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "async"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, defer_to_thread);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
  assert_string_equal(extproc_harness_upstream_header(h, "x-async"), "yes");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_request *parked_request;

static extproc_result park(extproc_request *req, void *ctx) {
  (void)ctx;
  parked_request = req;
  return EXTPROC_DEFER;
}

static void test_harness_times_out(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "parked"), 0);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, park);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_timeout_ms(h, 50);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, GET, true),
                   EXTPROC_ETIMEDOUT);
  assert_null(extproc_harness_last_reply(h));
  assert_int_equal(extproc_request_resume(parked_request, EXTPROC_CONTINUE), 0);
  extproc_harness_free(h); /* completes the late answer, then frees */
  extproc_processor_free(p);
}

static void test_harness_observability_mode(void **state) {
  (void)state;
  extproc_processor *p = make("trivial");
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_observability_mode(h, true);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, true);
  assert_int_equal(extproc_harness_reply_count(h), 0);
  assert_null(extproc_harness_upstream_header(h, "x-extra-request-id"));
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_harness_rejects_bad_input(void **state) {
  (void)state;
  extproc_processor *p = make("trivial");
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *const odd[] = {":method", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, odd, true), EXTPROC_EINVAL);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_BODY, GET, true), EXTPROC_EINVAL);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_HEADERS, "x", 1, true), EXTPROC_EINVAL);
  /* Request headers twice: the engine refuses and ends the stream; later sends are refused. */
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, false);
  send_headers(h, EXTPROC_REQUEST_HEADERS, GET, false);
  uint32_t status = 0;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, EXTPROC_GRPC_FAILED_PRECONDITION);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE_200, true),
                   EXTPROC_ESTATE);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_trivial),
      cmocka_unit_test(test_chain_header_settings),
      cmocka_unit_test(test_base_changes_nothing),
      cmocka_unit_test(test_timer_with_and_without_body),
      cmocka_unit_test(test_digest),
      cmocka_unit_test(test_decorated),
      cmocka_unit_test(test_echo),
      cmocka_unit_test(test_context),
      cmocka_unit_test(test_protocol_example),
      cmocka_unit_test(test_harness_waits_for_deferred_answers),
      cmocka_unit_test(test_harness_times_out),
      cmocka_unit_test(test_harness_observability_mode),
      cmocka_unit_test(test_harness_rejects_bad_input),
  };
  return cmocka_run_group_tests(tests, setup_env, NULL);
}
