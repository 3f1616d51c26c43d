/* The protocol beyond headers, through the public testing harness: every body mode, the replies
 * only some modes allow (refused elsewhere, never sent), content-length, CONTINUE_AND_REPLACE,
 * mode_override, override_message_timeout, clear_route_cache, dynamic metadata, attributes and
 * metadata, streamed immediate responses, observability mode. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "extproc/testing.h"

static const char *const POST[] = {":method",    "POST",           ":path", "/up", "content-type",
                                   "text/plain", "content-length", "5",     NULL};
static const char *const CHUNKED_POST[] = {":method", "POST", ":path", "/up", NULL};
static const char *const RESPONSE[] = {":status", "200", "content-length", "4", NULL};

/* ---- Processors under test -------------------------------------------------------------- */

/* Doubles each chunk ("ab" -> "abab"). */
static extproc_result doubler(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  uint8_t out[256];
  assert_true(2 * len <= sizeof(out));
  memcpy(out, body, len);
  memcpy(out + len, body, len);
  return extproc_body_replace(req, out, 2 * len) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static extproc_processor *processor(const char *name, extproc_phase phase, extproc_phase_fn fn) {
  extproc_processor *p;
  assert_int_equal(extproc_processor_new(&p, name), 0);
  assert_non_null(p);
  if (fn) assert_int_equal(extproc_processor_on(p, phase, fn), 0);
  return p;
}

static void test_buffered_body_change_sets_content_length(void **state) {
  (void)state;
  extproc_processor *p = processor("doubler", EXTPROC_REQUEST_BODY, doubler);
  extproc_processor_on(p, EXTPROC_RESPONSE_BODY, doubler);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_BUFFERED, EXTPROC_BODY_BUFFERED);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hello", 5, true), 0);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_int_equal(r->body_change, EXTPROC_HARNESS_BODY_REPLACED);
  assert_memory_equal(r->body, "hellohello", 10);
  /* Envoy keeps content-length in BUFFERED mode: the SDK keeps it true. */
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "10");
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "resp", 4, true), 0);
  assert_string_equal(extproc_harness_client_header(h, "content-length"), "8");
  extproc_harness_free(h);

  /* Without a content-length (chunked), none is invented. */
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_BUFFERED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hi", 2, true);
  assert_null(extproc_harness_upstream_header(h, "content-length"));
  extproc_harness_free(h);
  extproc_processor_free(p);
}

/* ---- content-length when the mode Envoy uses is not known ------------------------------ */

/* At request_headers, asks for STREAMED request and response bodies (the mode in effect is the
 * starting point); at a body, doubles it. */
static extproc_result ask_streamed(extproc_request *req, void *ctx) {
  (void)ctx;
  extproc_processing_mode mode = {.struct_size = sizeof(mode)};
  extproc_request_processing_mode(req, &mode);
  const char *which = extproc_header_get(req, "x-ask");
  if (strchr(which, 'q')) mode.request_body_mode = EXTPROC_BODY_STREAMED;
  if (strchr(which, 's')) mode.response_body_mode = EXTPROC_BODY_STREAMED;
  return extproc_mode_override(req, &mode) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static bool removes(const extproc_harness_reply *r, const char *name) {
  for (size_t i = 0; i < r->header_remove_count; i++)
    if (strcmp(r->header_removes[i], name) == 0) return true;
  return false;
}

static extproc_harness *override_harness(extproc_processor *p, const char *ask,
                                         extproc_body_mode filter_mode) {
  const char *const post[] = {":method", "POST",  ":path", "/up", "content-length",
                              "5",       "x-ask", ask,     NULL};
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, filter_mode, filter_mode);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, post, false), 0);
  return h;
}

static void test_response_override_body_change_sets_content_length_either_way(void **state) {
  (void)state;
  extproc_processor *p = processor("asker", EXTPROC_REQUEST_HEADERS, ask_streamed);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, doubler);
  extproc_processor_on(p, EXTPROC_RESPONSE_BODY, doubler);
  /* A BUFFERED filter; the processor asks for a STREAMED response. Granted, Envoy drops the
   * response's content-length when it sends the headers; refused, it keeps it and answers 500
   * unless it matches the changed body. The reply removes it, then sets the new length: Envoy
   * applies the removal, and the set only where it keeps the header. */
  extproc_harness *h = override_harness(p, "s", EXTPROC_BODY_BUFFERED);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_true(r->has_mode_override);
  assert_int_equal(r->mode_override.response_body_mode, EXTPROC_BODY_STREAMED);
  assert_int_equal(r->header_remove_count, 0); /* the request's body mode is unchanged */
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hello", 5, true), 0);
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "10");
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "resp", 4, true), 0);
  r = extproc_harness_last_reply(h);
  assert_true(removes(r, "content-length"));
  assert_string_equal(extproc_harness_reply_header(r, "content-length"), "8");
  assert_string_equal(extproc_harness_client_header(h, "content-length"), "8");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_request_override_removes_content_length_at_headers(void **state) {
  (void)state;
  extproc_processor *p = processor("asker", EXTPROC_REQUEST_HEADERS, ask_streamed);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, doubler);
  /* Envoy decided about the request's content-length when it sent the headers, with the
   * filter's BUFFERED: it kept it. Granted, it would forward it with a body the processor
   * changes chunk by chunk; so the headers reply removes it, granted or not. */
  extproc_harness *h = override_harness(p, "qs", EXTPROC_BODY_BUFFERED);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_true(r->has_mode_override);
  assert_int_equal(r->header_remove_count, 1);
  assert_true(removes(r, "content-length"));
  assert_null(extproc_harness_upstream_header(h, "content-length"));
  /* Refused: the whole body in one message. Nothing is left to fix. */
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hello", 5, true), 0);
  r = extproc_harness_last_reply(h);
  assert_int_equal(r->body_len, 10);
  assert_int_equal(r->header_remove_count, 0);
  assert_int_equal(r->header_write_count, 0);
  assert_null(extproc_harness_upstream_header(h, "content-length"));
  extproc_harness_free(h);

  /* A STREAMED filter: Envoy dropped the request's content-length itself. */
  h = override_harness(p, "q", EXTPROC_BODY_STREAMED);
  assert_int_equal(extproc_harness_last_reply(h)->header_remove_count, 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hello", 5, true), 0);
  r = extproc_harness_last_reply(h);
  assert_int_equal(r->header_remove_count + r->header_write_count, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result upper_or_clear(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  const char *how = extproc_request_get_info(req)->path;
  if (strcmp(how, "/clear") == 0) return extproc_body_clear(req) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
  if (strcmp(how, "/own-length") == 0 &&
      (extproc_header_set(req, "content-length", "99") || extproc_body_replace(req, "x", 1)))
    return EXTPROC_FAIL;
  if (strcmp(how, "/own-length") == 0) return EXTPROC_CONTINUE;
  char out[64];
  assert_true(len <= sizeof(out));
  for (size_t i = 0; i < len; i++)
    out[i] = (char)(body[i] >= 'a' && body[i] <= 'z' ? body[i] - 32 : body[i]);
  return extproc_body_replace(req, out, len) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static const extproc_harness_reply *body_reply(extproc_processor *p, const char *path,
                                               extproc_body_mode mode, extproc_harness **out) {
  const char *const post[] = {":method", "POST", ":path", path, "content-length", "5", NULL};
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, mode, EXTPROC_BODY_NONE);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, post, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hello", 5, true), 0);
  *out = h;
  return extproc_harness_last_reply(h);
}

static void test_content_length_fix_only_when_the_length_changes(void **state) {
  (void)state;
  extproc_processor *p = processor("changer", EXTPROC_REQUEST_BODY, upper_or_clear);
  extproc_harness *h;
  /* Same length: the header is still true, nothing is added. */
  const extproc_harness_reply *r = body_reply(p, "/upper", EXTPROC_BODY_BUFFERED, &h);
  assert_int_equal(r->body_change, EXTPROC_HARNESS_BODY_REPLACED);
  assert_int_equal(r->header_remove_count + r->header_write_count, 0);
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "5");
  extproc_harness_free(h);
  /* A cleared body: length 0. */
  r = body_reply(p, "/clear", EXTPROC_BODY_BUFFERED, &h);
  assert_int_equal(r->body_change, EXTPROC_HARNESS_BODY_CLEARED);
  assert_true(removes(r, "content-length"));
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "0");
  extproc_harness_free(h);
  /* The callback's own content-length wins. */
  r = body_reply(p, "/own-length", EXTPROC_BODY_BUFFERED, &h);
  assert_int_equal(r->header_remove_count, 0);
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "99");
  extproc_harness_free(h);
  /* A STREAMED filter: Envoy dropped the header when it sent the headers. */
  r = body_reply(p, "/clear", EXTPROC_BODY_STREAMED, &h);
  assert_int_equal(r->header_remove_count + r->header_write_count, 0);
  extproc_harness_free(h);
  /* Mode unknown (no protocol_config): the first message gets the fix, a later one does not,
   * since Envoy no longer holds the headers once a body goes on in pieces. */
  const char *const post[] = {":method", "POST", ":path", "/clear", "content-length", "5", NULL};
  assert_int_equal(extproc_harness_new(&h, p), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, post, false), 0);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "hel", 3, false), 0);
  assert_true(removes(extproc_harness_last_reply(h), "content-length"));
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, "lo", 2, true), 0);
  r = extproc_harness_last_reply(h);
  assert_int_equal(r->header_remove_count + r->header_write_count, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_streamed_one_reply_per_chunk(void **state) {
  (void)state;
  extproc_processor *p = processor("doubler", EXTPROC_REQUEST_BODY, doubler);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, false);
  const char *chunks[] = {"ab", "", "c", ""}; /* empty non-final and final chunks */
  for (int i = 0; i < 4; i++) {
    const size_t before = extproc_harness_reply_count(h);
    assert_int_equal(
        extproc_harness_body(h, EXTPROC_REQUEST_BODY, chunks[i], strlen(chunks[i]), i == 3), 0);
    assert_int_equal(extproc_harness_reply_count(h), before + 1); /* exactly one, in order */
    const extproc_harness_reply *r = extproc_harness_last_reply(h);
    assert_int_equal(r->phase, EXTPROC_REQUEST_BODY);
    assert_int_equal(r->body_len, 2 * strlen(chunks[i]));
    assert_false(r->streamed_body);
  }
  /* STREAMED: Envoy removed content-length itself; the SDK adds none. */
  assert_string_equal(extproc_harness_upstream_header(h, "content-length"), "5");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result split_in_three(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (len == 0) return EXTPROC_CONTINUE; /* nothing to send: the SDK still ends the body */
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(extproc_streamed_body_send(req, body, len, false), 0);
  return EXTPROC_CONTINUE;
}

static extproc_result refuse_streamed(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_streamed_body_send(req, "x", 1, true), EXTPROC_ESTATE);
  return EXTPROC_CONTINUE;
}

static size_t send_chunk(extproc_harness *h, const char *data, bool eos) {
  const size_t before = extproc_harness_reply_count(h);
  assert_int_equal(extproc_harness_body(h, EXTPROC_REQUEST_BODY, data, strlen(data), eos), 0);
  return extproc_harness_reply_count(h) - before;
}

static void test_full_duplex(void **state) {
  (void)state;
  /* Pass-through by default, each piece a streamed_response, ending with end_of_stream. */
  extproc_processor *p = processor("pass", EXTPROC_REQUEST_BODY, NULL);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  assert_int_equal(send_chunk(h, "one", false), 1);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_true(r->streamed_body);
  assert_false(r->end_of_stream);
  assert_memory_equal(r->body, "one", 3);
  assert_int_equal(send_chunk(h, "", false), 1); /* an empty non-final chunk: its own reply */
  /* The final chunk is empty: the SDK still sends the end_of_stream reply. */
  assert_int_equal(send_chunk(h, "", true), 1);
  r = extproc_harness_last_reply(h);
  assert_true(r->streamed_body && r->end_of_stream);
  assert_int_equal(r->body_len, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);

  /* Any number of pieces per chunk; still exactly one end_of_stream. */
  p = processor("splitter", EXTPROC_REQUEST_BODY, split_in_three);
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  assert_int_equal(send_chunk(h, "ab", false), 3);
  assert_int_equal(send_chunk(h, "", true), 1);
  size_t ends = 0;
  for (size_t i = 0; i < extproc_harness_reply_count(h); i++)
    ends += extproc_harness_reply_at(h, i)->end_of_stream;
  assert_int_equal(ends, 1);
  extproc_harness_free(h);
  extproc_processor_free(p);

  /* Outside FULL_DUPLEX_STREAMED a streamed reply is refused (Envoy would call it spurious). */
  p = processor("wrong-mode", EXTPROC_REQUEST_BODY, refuse_streamed);
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  assert_int_equal(send_chunk(h, "x", true), 1);
  assert_false(extproc_harness_last_reply(h)->streamed_body);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result cut_checker(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_request_body_mode(req), EXTPROC_BODY_BUFFERED_PARTIAL);
  /* end_of_stream false: Envoy cut the body at its buffer limit. */
  return extproc_header_set(req, "x-complete", extproc_request_end_of_stream(req) ? "yes" : "no")
             ? EXTPROC_FAIL
             : EXTPROC_CONTINUE;
}

static void test_buffered_partial_says_if_cut(void **state) {
  (void)state;
  extproc_processor *p = processor("partial", EXTPROC_REQUEST_BODY, cut_checker);
  for (int complete = 0; complete < 2; complete++) {
    extproc_harness *h;
    assert_int_equal(extproc_harness_new(&h, p), 0);
    extproc_harness_set_protocol_config(h, EXTPROC_BODY_BUFFERED_PARTIAL, EXTPROC_BODY_NONE);
    extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
    extproc_harness_body(h, EXTPROC_REQUEST_BODY, "0123456789", 10, complete);
    assert_string_equal(extproc_harness_upstream_header(h, "x-complete"), complete ? "yes" : "no");
    extproc_harness_free(h);
  }
  extproc_processor_free(p);
}

static extproc_result replace_at_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_body_replace(req, "new body", 8), 0);
  return EXTPROC_CONTINUE;
}

static int body_calls;

static extproc_result count_body(extproc_request *req, void *ctx) {
  (void)req, (void)ctx;
  body_calls++;
  return EXTPROC_CONTINUE;
}

static void test_continue_and_replace(void **state) {
  (void)state;
  extproc_processor *p = processor("replacer", EXTPROC_REQUEST_HEADERS, replace_at_headers);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, count_body);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, false);
  const extproc_harness_reply *r = extproc_harness_last_reply(h);
  assert_true(r->continue_and_replace);
  assert_int_equal(r->body_change, EXTPROC_HARNESS_BODY_REPLACED);
  assert_memory_equal(r->body, "new body", 8);
  /* Chunks Envoy had already sent: no callback, no reply (Envoy would call it spurious). */
  body_calls = 0;
  assert_int_equal(send_chunk(h, "hello", true), 0);
  assert_int_equal(body_calls, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result override_and_extras(extproc_request *req, void *ctx) {
  (void)ctx;
  extproc_processing_mode mode = {.struct_size = sizeof(mode)};
  assert_int_equal(extproc_request_processing_mode(req, &mode), 0);
  assert_int_equal(mode.request_body_mode, EXTPROC_BODY_NONE);
  assert_int_equal(mode.response_header_mode, EXTPROC_HEADER_DEFAULT);
  mode.response_body_mode = EXTPROC_BODY_BUFFERED;
  assert_int_equal(extproc_mode_override(req, &mode), 0);
  assert_int_equal(extproc_clear_route_cache(req), 0);
  assert_int_equal(extproc_override_message_timeout(req, 1500), 0);
  assert_int_equal(extproc_override_message_timeout(req, 0), EXTPROC_EINVAL);
  assert_int_equal(extproc_header_set(req, "x-routed", "1"), 0);
  extproc_struct *ns = extproc_dynamic_metadata(req, "my.ns");
  assert_non_null(ns);
  assert_int_equal(extproc_struct_set_string(ns, "user", "alice"), 0);
  assert_int_equal(extproc_struct_set_number(ns, "score", 7.5), 0);
  extproc_struct *nested = extproc_struct_set_struct(ns, "nested");
  assert_int_equal(extproc_struct_set_bool(nested, "ok", true), 0);
  extproc_list *list = extproc_struct_set_list(ns, "tags");
  assert_int_equal(extproc_list_add_string(list, "a"), 0);
  assert_int_equal(extproc_list_add_number(list, 2), 0);
  assert_int_equal(extproc_struct_set_string(extproc_dynamic_metadata(req, "my.ns"), "user", "bob"),
                   0); /* same namespace, key replaced */
  assert_string_equal(extproc_value_string(extproc_request_attribute(req, "request.path")), "/up");
  assert_string_equal(extproc_value_string(extproc_request_metadata(req, "envoy.lb", "canary")),
                      "true");
  assert_null(extproc_request_attribute(req, "missing"));
  return EXTPROC_CONTINUE;
}

static extproc_result check_mode_after_override(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_request_body_mode(req), EXTPROC_BODY_BUFFERED);
  const extproc_processing_mode unset = {0}, mode = {.struct_size = sizeof(mode)};
  assert_int_equal(extproc_mode_override(req, &unset), EXTPROC_EINVAL); /* struct_size unset */
  assert_int_equal(extproc_mode_override(req, &mode), EXTPROC_ESTATE);  /* not a headers phase */
  /* attributes sent with the first message are still there */
  assert_string_equal(extproc_value_string(extproc_request_attribute(req, "request.path")), "/up");
  return EXTPROC_CONTINUE;
}

static void test_reply_fields(void **state) {
  (void)state;
  extproc_processor *p = processor("fields", EXTPROC_REQUEST_HEADERS, override_and_extras);
  extproc_processor_on(p, EXTPROC_RESPONSE_BODY, check_mode_after_override);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_NONE, EXTPROC_BODY_NONE);
  extproc_harness_add_attribute(h, "request.path", "/up");
  extproc_harness_add_metadata(h, "envoy.lb", "canary", "true");
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, false), 0);
  /* The timeout override travels alone, before the phase's reply. */
  assert_int_equal(extproc_harness_reply_count(h), 2);
  const extproc_harness_reply *t = extproc_harness_reply_at(h, 0);
  assert_int_equal(t->kind, EXTPROC_HARNESS_TIMEOUT_OVERRIDE);
  assert_int_equal(t->override_message_timeout_ms, 1500);
  const extproc_harness_reply *r = extproc_harness_reply_at(h, 1);
  assert_int_equal(r->kind, EXTPROC_HARNESS_PHASE_REPLY);
  assert_true(r->has_mode_override);
  assert_int_equal(r->mode_override.response_body_mode, EXTPROC_BODY_BUFFERED);
  assert_int_equal(r->mode_override.request_body_mode, EXTPROC_BODY_NONE);
  assert_true(r->clear_route_cache);
  const extproc_value *ns = extproc_harness_reply_metadata(r, "my.ns");
  assert_int_equal(extproc_value_kind_of(ns), EXTPROC_VALUE_STRUCT);
  assert_string_equal(extproc_value_string(extproc_value_field(ns, "user")), "bob");
  assert_true(extproc_value_number(extproc_value_field(ns, "score")) == 7.5);
  assert_true(extproc_value_bool(extproc_value_field(extproc_value_field(ns, "nested"), "ok")));
  const extproc_value *tags = extproc_value_field(ns, "tags");
  assert_int_equal(extproc_value_list_size(tags), 2);
  assert_string_equal(extproc_value_string(extproc_value_list_at(tags, 0)), "a");
  assert_true(extproc_value_number(extproc_value_list_at(tags, 1)) == 2);
  /* The response body now comes, BUFFERED, as the override asked. */
  extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, false);
  assert_int_equal(extproc_harness_body(h, EXTPROC_RESPONSE_BODY, "resp", 4, true), 0);
  assert_int_equal(extproc_harness_last_reply(h)->kind, EXTPROC_HARNESS_PHASE_REPLY);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result stream_answer(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_streamed_immediate_response(req, 200, false), 0);
  assert_int_equal(extproc_immediate_header_set(req, "content-type", "text/plain"), 0);
  assert_int_equal(extproc_streamed_immediate_body(req, "hello ", 6, false), 0);
  return EXTPROC_CONTINUE;
}

static extproc_result stream_more(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_streamed_immediate_body(req, "world", 5, true), 0);
  assert_int_equal(extproc_streamed_immediate_body(req, "!", 1, true), EXTPROC_ESTATE);
  return EXTPROC_CONTINUE;
}

static void test_streamed_immediate_response(void **state) {
  (void)state;
  extproc_processor *p = processor("streamer", EXTPROC_REQUEST_HEADERS, stream_answer);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, stream_more);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  assert_int_equal(extproc_harness_reply_count(h), 2); /* headers, then the first piece */
  const extproc_harness_reply *hd = extproc_harness_reply_at(h, 0);
  assert_int_equal(hd->kind, EXTPROC_HARNESS_STREAMED_IMMEDIATE);
  assert_int_equal(hd->immediate_status, 200);
  assert_string_equal(extproc_harness_client_header(h, "content-type"), "text/plain");
  assert_memory_equal(extproc_harness_reply_at(h, 1)->body, "hello ", 6);
  /* A later body chunk gets no reply of its own, only the next piece. */
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "ignored", 7, true);
  assert_int_equal(extproc_harness_reply_count(h), 3);
  const extproc_harness_reply *last = extproc_harness_last_reply(h);
  assert_true(last->streamed_body && last->end_of_stream);
  assert_memory_equal(last->body, "world", 5);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result trailers_writer(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_body_replace(req, "x", 1), EXTPROC_ESTATE);
  assert_int_equal(extproc_clear_route_cache(req), EXTPROC_ESTATE);
  return extproc_header_set(req, "x-trailer", "added") ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static void test_trailers(void **state) {
  (void)state;
  extproc_processor *p = processor("trailers", EXTPROC_REQUEST_TRAILERS, trailers_writer);
  extproc_processor_on(p, EXTPROC_RESPONSE_TRAILERS, trailers_writer);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  const char *const trailers[] = {"grpc-status", "0", NULL};
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "b", 1, false);
  extproc_harness_headers(h, EXTPROC_REQUEST_TRAILERS, trailers, false);
  assert_string_equal(extproc_harness_reply_header(extproc_harness_last_reply(h), "x-trailer"),
                      "added");
  assert_int_equal(extproc_harness_last_reply(h)->phase, EXTPROC_REQUEST_TRAILERS);
  extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, false);
  extproc_harness_headers(h, EXTPROC_RESPONSE_TRAILERS, trailers, false);
  assert_int_equal(extproc_harness_last_reply(h)->phase, EXTPROC_RESPONSE_TRAILERS);
  extproc_harness_end(h);
  uint32_t status = 1;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result accumulate(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *all = extproc_body_accumulate(req, &len);
  extproc_body_accumulate(req, &len); /* twice: the chunk is added once */
  if (!extproc_request_end_of_stream(req)) return EXTPROC_CONTINUE;
  char value[32];
  snprintf(value, sizeof(value), "%.*s", (int)len, (const char *)all);
  return extproc_header_set(req, "x-whole-body", value) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static void test_accumulate_chunks(void **state) {
  (void)state;
  extproc_processor *p = processor("accumulator", EXTPROC_REQUEST_BODY, accumulate);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "one,", 4, false);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "", 0, false);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "two", 3, true);
  assert_string_equal(extproc_harness_reply_header(extproc_harness_last_reply(h), "x-whole-body"),
                      "one,two");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result observe(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_true(extproc_request_observability_mode(req));
  assert_null(extproc_dynamic_metadata(req, "ns"));
  assert_int_equal(extproc_immediate_response(req, 403), EXTPROC_ESTATE);
  assert_int_equal(extproc_override_message_timeout(req, 10), EXTPROC_ESTATE);
  return EXTPROC_CONTINUE;
}

static void test_observability_mode(void **state) {
  (void)state;
  extproc_processor *p = processor("observer", EXTPROC_REQUEST_HEADERS, observe);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_observability_mode(h, true);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true);
  assert_int_equal(extproc_harness_reply_count(h), 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

/* ---- Corner cases found in review ------------------------------------------------------ */

static extproc_request *parked;

static extproc_result park(extproc_request *req, void *ctx) {
  (void)ctx;
  parked = req;
  return EXTPROC_DEFER;
}

static void test_harness_freed_while_deferred(void **state) {
  (void)state;
  extproc_processor *p = processor("parker", EXTPROC_REQUEST_HEADERS, park);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_timeout_ms(h, 20);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true),
                   EXTPROC_ETIMEDOUT);
  extproc_harness_free(h);
  /* The late answer finds no harness: it is dropped and everything freed (ASan checks). */
  assert_int_equal(extproc_request_resume(parked, EXTPROC_CONTINUE), 0);
  extproc_processor_free(p);
}

static int later_calls;

static extproc_result fail_first(extproc_request *req, void *ctx) {
  (void)ctx;
  if (extproc_request_phase(req) == EXTPROC_REQUEST_HEADERS) return EXTPROC_FAIL;
  later_calls++;
  return EXTPROC_CONTINUE;
}

/* Envoy fails the request on an error status even in observability mode: the stream ends OK. */
static void test_failure_in_observability_mode_ends_the_stream_ok(void **state) {
  (void)state;
  extproc_processor *p = processor("failing-observer", EXTPROC_REQUEST_HEADERS, fail_first);
  extproc_processor_on(p, EXTPROC_RESPONSE_HEADERS, fail_first);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_observability_mode(h, true);
  later_calls = 0;
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true);
  uint32_t status = 0;
  status = 99;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, EXTPROC_GRPC_OK);
  assert_int_equal(extproc_harness_reply_count(h), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, true),
                   EXTPROC_ESTATE);
  assert_int_equal(later_calls, 0);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result stream_with_duplicate_header(extproc_request *req, void *ctx) {
  (void)ctx;
  assert_int_equal(extproc_streamed_immediate_response(req, 200, false), 0);
  assert_int_equal(extproc_immediate_header_set(req, "x-a", "1"), 0);
  assert_int_equal(extproc_immediate_header_set(req, "x-a", "2"), 0);
  return EXTPROC_CONTINUE;
}

static extproc_result fail_body(extproc_request *req, void *ctx) {
  (void)req, (void)ctx;
  return EXTPROC_FAIL;
}

static void test_streamed_immediate_then_failure(void **state) {
  (void)state;
  extproc_processor *p =
      processor("stream-fail", EXTPROC_REQUEST_HEADERS, stream_with_duplicate_header);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, fail_body);
  extproc_processor_set_error_policy(p, EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, 503);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_set_protocol_config(h, EXTPROC_BODY_FULL_DUPLEX_STREAMED, EXTPROC_BODY_NONE);
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, CHUNKED_POST, false);
  const char *values[4];
  assert_int_equal(extproc_harness_client_header_all(h, "x-a", values, 4), 1); /* overwrite */
  assert_string_equal(values[0], "2");
  const size_t before = extproc_harness_reply_count(h);
  extproc_harness_body(h, EXTPROC_REQUEST_BODY, "x", 1, true);
  /* No ImmediateResponse after the streamed one began: the stream ends with the error. */
  assert_int_equal(extproc_harness_reply_count(h), before);
  uint32_t status = 0;
  assert_true(extproc_harness_stream_ended(h, &status, NULL));
  assert_int_equal(status, EXTPROC_GRPC_INTERNAL);
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static extproc_result read_path(extproc_request *req, void *ctx) {
  (void)ctx;
  const char *path = extproc_value_string(extproc_request_attribute(req, "request.path"));
  return extproc_header_set(req, "x-path", path ? path : "-") ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static void test_attribute_sent_again_takes_its_new_value(void **state) {
  (void)state;
  extproc_processor *p = processor("attrs", EXTPROC_REQUEST_HEADERS, read_path);
  extproc_processor_on(p, EXTPROC_RESPONSE_HEADERS, read_path);
  extproc_harness *h;
  assert_int_equal(extproc_harness_new(&h, p), 0);
  extproc_harness_add_attribute(h, "request.path", "/first");
  extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, POST, true);
  assert_string_equal(extproc_harness_upstream_header(h, "x-path"), "/first");
  extproc_harness_add_attribute(h, "request.path", "/second");
  extproc_harness_headers(h, EXTPROC_RESPONSE_HEADERS, RESPONSE, true);
  assert_string_equal(extproc_harness_client_header(h, "x-path"), "/second");
  extproc_harness_free(h);
  extproc_processor_free(p);
}

static void test_getters_accept_null(void **state) {
  (void)state;
  assert_int_equal(extproc_request_phase(NULL), EXTPROC_PHASE_COUNT);
  assert_int_equal(extproc_request_get_info(NULL)->content_length, -1);
  assert_null(extproc_request_user_data(NULL));
  assert_false(extproc_request_end_of_stream(NULL));
  assert_null(extproc_request_context(NULL));
  assert_false(extproc_request_protocol_config(NULL)->known);
  assert_int_equal(extproc_request_body_mode(NULL), EXTPROC_BODY_MODE_UNKNOWN);
  assert_false(extproc_request_observability_mode(NULL));
  assert_null(extproc_request_processor_name(NULL));
  assert_string_equal(extproc_processor_name(NULL), "");
  extproc_processing_mode mode = {.struct_size = sizeof(mode),
                                  .request_body_mode = EXTPROC_BODY_STREAMED};
  assert_int_equal(extproc_request_processing_mode(NULL, &mode), 0);
  assert_int_equal(mode.request_body_mode, EXTPROC_BODY_NONE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buffered_body_change_sets_content_length),
      cmocka_unit_test(test_response_override_body_change_sets_content_length_either_way),
      cmocka_unit_test(test_request_override_removes_content_length_at_headers),
      cmocka_unit_test(test_content_length_fix_only_when_the_length_changes),
      cmocka_unit_test(test_streamed_one_reply_per_chunk),
      cmocka_unit_test(test_full_duplex),
      cmocka_unit_test(test_buffered_partial_says_if_cut),
      cmocka_unit_test(test_continue_and_replace),
      cmocka_unit_test(test_reply_fields),
      cmocka_unit_test(test_streamed_immediate_response),
      cmocka_unit_test(test_trailers),
      cmocka_unit_test(test_accumulate_chunks),
      cmocka_unit_test(test_observability_mode),
      cmocka_unit_test(test_harness_freed_while_deferred),
      cmocka_unit_test(test_failure_in_observability_mode_ends_the_stream_ok),
      cmocka_unit_test(test_streamed_immediate_then_failure),
      cmocka_unit_test(test_attribute_sent_again_takes_its_new_value),
      cmocka_unit_test(test_getters_accept_null),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
