/* The library's contract with compiled callers: the version they link against, structs that
 * grow without breaking older or newer callers, constructors that tell a bad argument from
 * out-of-memory, calls Envoy would never apply refused with EXTPROC_ESTATE, and a server whose
 * start failed still freed cleanly. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include "extproc/server.h"
#include "extproc/testing.h"

static void test_version_of_headers_and_library_agree(void **state) {
  (void)state;
  const char *text = NULL;
  assert_int_equal(extproc_version(&text), EXTPROC_VERSION_NUMBER);
  assert_string_equal(text, EXTPROC_VERSION_STRING);
  assert_int_equal(extproc_version(NULL), EXTPROC_VERSION_NUMBER);
}

static extproc_result noop(extproc_request *req, void *ctx) {
  (void)req, (void)ctx;
  return EXTPROC_CONTINUE;
}

/* ---- Structs a caller fills -------------------------------------------------------------- */

static void test_struct_size_must_be_set(void **state) {
  (void)state;
  extproc_processor *p = (extproc_processor *)&p; /* not NULL: must be cleared on error */
  const extproc_processor_def unset = {.name = "x"};
  assert_int_equal(extproc_processor_new_from_def(&p, &unset), EXTPROC_EINVAL);
  assert_null(p);
  extproc_server_options opts = {0};
  extproc_server *srv = (extproc_server *)&srv;
  assert_int_equal(extproc_server_new(&srv, &opts), EXTPROC_EINVAL);
  assert_null(srv);
  extproc_processing_mode mode = {0};
  assert_int_equal(extproc_request_processing_mode(NULL, &mode), EXTPROC_EINVAL);
}

/* A caller compiled against an older header passes a shorter struct: the fields it lacks take
 * their defaults, and nothing past its struct_size is read. */
static void test_an_older_caller_gets_defaults_for_new_fields(void **state) {
  (void)state;
  /* The older version ended before on_error: its bytes after that are garbage here. */
  extproc_processor_def def;
  memset(&def, 0xA5, sizeof(def));
  def.struct_size = offsetof(extproc_processor_def, on_error);
  def.name = "older";
  def.context_size = 0;
  def.context_init = NULL;
  def.context_cleanup = NULL;
  def.request_headers = noop;
  def.request_body = def.request_trailers = NULL;
  def.response_headers = def.response_body = def.response_trailers = NULL;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new_from_def(&p, &def), 0);
  assert_string_equal(extproc_processor_name(p), "older");
  extproc_processor_free(p);

  extproc_server_options opts;
  extproc_server_options_init(&opts);
  memset(&opts.workers, 0xA5, sizeof(opts) - offsetof(extproc_server_options, workers));
  opts.struct_size = offsetof(extproc_server_options, workers); /* only max_message_bytes */
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  extproc_server_free(srv);
}

/* A caller compiled against a newer header passes a longer struct: accepted while the fields
 * this library does not know are zero (unused), refused when one is set. */
static void test_a_newer_caller_is_refused_only_if_it_uses_unknown_fields(void **state) {
  (void)state;
  struct {
    extproc_processor_def def;
    uint64_t added_later;
  } newer = {.def = {.name = "newer"}};
  newer.def.struct_size = sizeof(newer);
  extproc_processor *p;
  assert_int_equal(extproc_processor_new_from_def(&p, &newer.def), 0);
  extproc_processor_free(p);
  newer.added_later = 1;
  assert_int_equal(extproc_processor_new_from_def(&p, &newer.def), EXTPROC_EINVAL);
  assert_null(p);
}

static int user_data_frees;
static void count_user_data_free(void *user_data) {
  assert_ptr_equal(user_data, &user_data_frees);
  user_data_frees++;
}

/* A processor owns its user_data once given a free function, and frees it exactly once. */
static void test_processor_frees_its_user_data_when_asked(void **state) {
  (void)state;
  assert_int_equal(extproc_processor_set_user_data_free(NULL, count_user_data_free),
                   EXTPROC_EINVAL);
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "owner"), 0);
  extproc_processor_set_user_data(p, &user_data_frees);
  assert_int_equal(extproc_processor_set_user_data_free(p, count_user_data_free), 0);
  extproc_processor_free(p);
  assert_int_equal(user_data_frees, 1);
  /* Without user_data there is nothing to free. */
  assert_int_equal(extproc_processor_new(&p, "empty"), 0);
  assert_int_equal(extproc_processor_set_user_data_free(p, count_user_data_free), 0);
  extproc_processor_free(p);
  assert_int_equal(user_data_frees, 1);
}

static void test_constructors_tell_a_bad_argument(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(NULL, "x"), EXTPROC_EINVAL);
  assert_int_equal(extproc_processor_new(&p, NULL), EXTPROC_EINVAL);
  assert_null(p);
  assert_int_equal(extproc_processor_new_from_def(&p, NULL), EXTPROC_EINVAL);
  const extproc_processor_def bad_status = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "x",
                                            .on_error = EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE,
                                            .error_http_status = 99};
  assert_int_equal(extproc_processor_new_from_def(&p, &bad_status), EXTPROC_EINVAL);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, NULL), EXTPROC_EINVAL);
  assert_null(h);
  extproc_server *srv;
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.max_message_bytes = (size_t)3 << 30;
  assert_int_equal(extproc_server_new(&srv, &opts), EXTPROC_EINVAL);
  /* A buffer budget that could not hold one whole message is refused; left 0, it grows to one. */
  opts.max_message_bytes = (size_t)1 << 30;
  opts.max_buffered_bytes = (size_t)512 << 20;
  assert_int_equal(extproc_server_new(&srv, &opts), EXTPROC_EINVAL);
  opts.max_buffered_bytes = 0;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  extproc_server_free(srv);
  assert_int_equal(extproc_server_new(NULL, NULL), EXTPROC_EINVAL);
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  extproc_server_free(srv);
}

/* ---- Calls Envoy would never apply -------------------------------------------------------- */

static int header_rv, clear_rv, body_rv, metadata_null;

static extproc_result try_writes(extproc_request *req, void *ctx) {
  (void)ctx;
  header_rv = extproc_header_set(req, "x-a", "1");
  clear_rv = extproc_clear_route_cache(req);
  body_rv = extproc_body_replace(req, "b", 1);
  metadata_null = extproc_dynamic_metadata(req, "ns") == NULL;
  return EXTPROC_CONTINUE;
}

static extproc_processor *processor_with(const char *name, extproc_phase phase,
                                         extproc_phase_fn fn) {
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, name), 0);
  assert_int_equal(extproc_processor_on(p, phase, fn), 0);
  return p;
}

static extproc_harness *harness_for(extproc_processor *p, extproc_body_mode request,
                                    extproc_body_mode response) {
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, request, response);
  return h;
}

static const char *const POST[] = {":method", "POST", ":path", "/x", NULL};
static const char *const RESPONSE[] = {":status", "200", NULL};

static void test_header_writes_in_a_full_duplex_body_phase_are_refused(void **state) {
  (void)state;
  extproc_processor *p = processor_with("duplex", EXTPROC_REQUEST_BODY, try_writes);
  extproc_harness *h =
      harness_for(p, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_FULL_DUPLEX_STREAMED);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "a", 1, true), 0);
  assert_int_equal(header_rv, EXTPROC_ESTATE);
  assert_int_equal(clear_rv, EXTPROC_ESTATE);
  assert_int_equal(body_rv, 0); /* a body replacement is sent on as a streamed piece */
  assert_false(metadata_null);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_non_null(r);
  assert_true(r->streamed_body);
  assert_int_equal(r->header_write_count, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_nothing_is_recorded_in_observability_mode(void **state) {
  (void)state;
  extproc_processor *p = processor_with("observer", EXTPROC_REQUEST_HEADERS, try_writes);
  extproc_harness *h = harness_for(p, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  extproc_harness_set_observability_mode(h, true);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true), 0);
  assert_int_equal(header_rv, EXTPROC_ESTATE);
  assert_int_equal(clear_rv, EXTPROC_ESTATE);
  assert_int_equal(body_rv, EXTPROC_ESTATE);
  assert_true(metadata_null);
  assert_int_equal(extproc_harness_reply_count(h), 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result answer_immediately_then_write(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_immediate_body(req, "x", 1), EXTPROC_ESTATE); /* none started */
  assert_int_equal(extproc_immediate_response(req, 403), 0);
  header_rv = extproc_header_set(req, "x-a", "1");
  body_rv = extproc_body_replace(req, "b", 1);
  return EXTPROC_CONTINUE;
}

static extproc_result clear_in_response(extproc_request *req, void *ctx) {
  (void)ctx;
  clear_rv = extproc_clear_route_cache(req);
  return EXTPROC_CONTINUE;
}

static void test_writes_after_an_immediate_response_and_response_route_cache(void **state) {
  (void)state;
  extproc_processor *p =
      processor_with("immediate", EXTPROC_REQUEST_HEADERS, answer_immediately_then_write);
  extproc_harness *h = harness_for(p, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true), 0);
  assert_int_equal(header_rv, EXTPROC_ESTATE);
  assert_int_equal(body_rv, EXTPROC_ESTATE);
  assert_non_null(extproc_harness_immediate_response(h));
  extproc_harness_free(h);
  extproc_processor_free(p);

  p = processor_with("route-cache", EXTPROC_RESPONSE_HEADERS, clear_in_response);
  h = harness_for(p, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, true), 0);
  assert_int_equal(clear_rv, EXTPROC_ESTATE); /* Envoy ignores it in the response direction */
  assert_false(extproc_harness_last_reply(h)->clear_route_cache);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static int resume_rv, defer_rv;
static extproc_request *declared;

static extproc_result resume_without_deferral(extproc_request *req, void *ctx) {
  (void)ctx;
  resume_rv = extproc_request_resume(req, EXTPROC_CONTINUE);
  return EXTPROC_CONTINUE;
}

static void test_resume_without_a_deferral_is_refused(void **state) {
  (void)state;
  extproc_processor *p =
      processor_with("no-defer", EXTPROC_REQUEST_HEADERS, resume_without_deferral);
  extproc_harness *h = harness_for(p, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true), 0);
  assert_int_equal(resume_rv, EXTPROC_ESTATE);
  assert_int_equal(extproc_harness_reply_count(h), 1); /* answered once, by the callback */
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result defer_then_forget_to_return_defer(extproc_request *req, void *ctx) {
  (void)ctx;
  defer_rv = extproc_request_defer(req);
  declared = req;
  return EXTPROC_CONTINUE; /* declared: the phase still waits for the resume */
}

static void test_a_declared_deferral_waits_whatever_the_callback_returns(void **state) {
  (void)state;
  extproc_processor *p =
      processor_with("declared", EXTPROC_REQUEST_HEADERS, defer_then_forget_to_return_defer);
  extproc_harness *h = harness_for(p, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  extproc_harness_set_timeout_ms(h, 50);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true),
                   EXTPROC_ETIMEDOUT);
  assert_int_equal(defer_rv, 0);
  assert_int_equal(extproc_harness_reply_count(h), 0);
  assert_int_equal(extproc_request_resume(declared, EXTPROC_CONTINUE), 0);
  assert_int_equal(extproc_request_resume(declared, EXTPROC_CONTINUE), EXTPROC_ESTATE);
  extproc_harness_free(h); /* completes the resumed phase, then ends the exchange */
  extproc_processor_free(p);
  assert_int_equal(extproc_request_defer(NULL), EXTPROC_EINVAL);
}

static bool fcntl_is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

/* ---- A failed start --------------------------------------------------------------------- */

/* With the open-file limit at what is already open, the worker loops cannot be created: start
 * fails, and the server is still stopped, waited for and freed without a crash or a leak. */
static void test_a_failed_start_is_freed_cleanly(void **state) {
  (void)state;
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, "start"), 0);
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, &opts), 0);
  assert_true(extproc_server_listen(srv, "127.0.0.1:0", p) >= 0);
  struct rlimit saved, tight;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
  int highest = 0;
  for (int fd = 0; fd < 4096; fd++)
    if (fcntl_is_open(fd)) highest = fd;
  tight = saved;
  tight.rlim_cur = (rlim_t)highest + 1;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &tight), 0);
  int fillers[4096], filled = 0; /* take the free slots below the limit too */
  while (filled < 4096 && (fillers[filled] = open("/dev/null", O_RDONLY)) >= 0)
    filled++;
  const int rv = extproc_server_start(srv);
  while (filled > 0)
    close(fillers[--filled]);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
  assert_int_equal(rv, EXTPROC_EIO);
  assert_int_equal(extproc_server_start(srv), EXTPROC_ESTATE); /* a server runs once */
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_of_headers_and_library_agree),
      cmocka_unit_test(test_struct_size_must_be_set),
      cmocka_unit_test(test_an_older_caller_gets_defaults_for_new_fields),
      cmocka_unit_test(test_a_newer_caller_is_refused_only_if_it_uses_unknown_fields),
      cmocka_unit_test(test_constructors_tell_a_bad_argument),
      cmocka_unit_test(test_processor_frees_its_user_data_when_asked),
      cmocka_unit_test(test_header_writes_in_a_full_duplex_body_phase_are_refused),
      cmocka_unit_test(test_nothing_is_recorded_in_observability_mode),
      cmocka_unit_test(test_writes_after_an_immediate_response_and_response_route_cache),
      cmocka_unit_test(test_resume_without_a_deferral_is_refused),
      cmocka_unit_test(test_a_declared_deferral_waits_whatever_the_callback_returns),
      cmocka_unit_test(test_a_failed_start_is_freed_cleanly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
