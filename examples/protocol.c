/* ProtocolExtProcService: exercises the whole protocol, driven by request headers, so one
 * processor behind differently configured Envoys shows every body mode and reply field.
 *
 *   x-test-body: upper       uppercases every body chunk, both directions (same length)
 *   x-test-body: double      doubles every body chunk, both directions (new length)
 *   x-test-body: replace     replaces the whole body at request_headers (CONTINUE_AND_REPLACE)
 *   x-test-header-op: OPS    applies OPS to the request headers sent upstream
 *   x-test-response-header-op: OPS   the same on the response headers sent to the client
 *        OPS: ';'-separated set:NAME=VALUE, append:NAME=VALUE, add:NAME=VALUE, remove:NAME
 *   x-test-immediate: PHASE[:N]      answers 403 "denied at PHASE" at PHASE (request_headers,
 *                                    request_body, response_headers, response_body), at its
 *                                    Nth body chunk when N is given
 *   x-test-fail: PHASE       fails the callback of PHASE (the stream ends with an error)
 *   x-test-metadata: VALUE   dynamic metadata: namespace "libextproc.test", key "value" = VALUE,
 *                            plus "phase" and a nested object and list
 *   x-test-streamed-immediate: BODY  a streamed immediate 200 at request_headers, BODY sent in
 *                            two pieces
 *   x-test-mode-override: BODY_MODE  at request_headers, overrides the response body mode
 *                            (e.g. BUFFERED), starting from the mode in effect
 *   x-test-slow: MS          at request_headers, asks Envoy for MS + 2000 ms more
 *                            (override_message_timeout), answers MS ms later from another
 *                            thread (EXTPROC_DEFER), with upstream header x-test-slow-done
 *
 * Every response that reaches response_headers reports what the processor saw, for tests:
 *   x-test-request-body: none | empty | N   (no body: GET; empty: content-length 0; N bytes)
 *   x-test-request-chunks: N                (request body messages received)
 *   x-test-modes: REQUEST_MODE,RESPONSE_MODE   (protocol_config, e.g. BUFFERED,STREAMED)
 *   x-test-saw-content-length: REQUEST,RESPONSE  the content-length values the processor saw
 *                                    in the request and response headers ("-": none)
 *   x-test-attribute-path: request.path attribute, when Envoy sends it
 * and the response body (when the mode lets a body reply change it) is transformed as asked. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "examples.h"

typedef struct protocol_ctx {
  const char *body_op, *response_header_op, *immediate, *fail, *metadata;
  unsigned request_chunks, response_chunks;
  size_t request_bytes;
} protocol_ctx;

static const char *mode_name(extproc_body_mode m) {
  static const char *const names[] = {
      "NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED", "GRPC"};
  return m >= EXTPROC_BODY_NONE && m <= EXTPROC_BODY_GRPC ? names[m] : "UNKNOWN";
}

/* Applies "op:name=value;..." to the current phase's headers. */
static extproc_result apply_header_ops(extproc_request *req, const char *ops) {
  if (!ops) return EXTPROC_CONTINUE;
  char buf[1024];
  snprintf(buf, sizeof(buf), "%s", ops);
  for (char *save = NULL, *op = strtok_r(buf, ";", &save); op; op = strtok_r(NULL, ";", &save)) {
    char *colon = strchr(op, ':');
    if (!colon) return EXTPROC_FAIL;
    *colon = '\0';
    char *name = colon + 1, *eq = strchr(name, '=');
    const char *value = "";
    if (eq) {
      *eq = '\0';
      value = eq + 1;
    }
    int rv = EXTPROC_EINVAL;
    if (strcmp(op, "set") == 0) rv = extproc_header_set(req, name, value);
    if (strcmp(op, "append") == 0) rv = extproc_header_append(req, name, value);
    if (strcmp(op, "add") == 0) rv = extproc_header_add_if_absent(req, name, value);
    if (strcmp(op, "remove") == 0) rv = extproc_header_remove(req, name);
    if (rv != 0) return EXTPROC_FAIL;
  }
  return EXTPROC_CONTINUE;
}

/* Whether x-test-immediate or x-test-fail names this phase (and this body chunk). */
static bool names_phase(const char *spec, extproc_request *req, unsigned chunk) {
  if (!spec) return false;
  const char *phase = extproc_phase_name(extproc_request_phase(req));
  const size_t n = strlen(phase);
  if (strncmp(spec, phase, n) != 0) return false;
  if (spec[n] == '\0') return true;
  return spec[n] == ':' && strtoul(spec + n + 1, NULL, 10) == chunk;
}

static extproc_result deny(extproc_request *req) {
  char body[64];
  snprintf(body, sizeof(body), "denied at %s", extproc_phase_name(extproc_request_phase(req)));
  if (extproc_immediate_response(req, 403) || extproc_immediate_body(req, body, strlen(body)) ||
      extproc_immediate_header_set(req, "content-type", "text/plain") ||
      extproc_immediate_details(req, "denied_by_protocol_test"))
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result add_metadata(extproc_request *req, const protocol_ctx *p) {
  if (!p->metadata) return EXTPROC_CONTINUE;
  extproc_struct *ns = extproc_dynamic_metadata(req, "libextproc.test");
  if (!ns) return EXTPROC_FAIL;
  extproc_struct *nested = extproc_struct_set_struct(ns, "nested");
  extproc_list *list = extproc_struct_set_list(ns, "list");
  if (extproc_struct_set_string(ns, "value", p->metadata) ||
      extproc_struct_set_string(ns, "phase", extproc_phase_name(extproc_request_phase(req))) ||
      !nested || extproc_struct_set_number(nested, "answer", 42) ||
      extproc_struct_set_bool(nested, "ok", true) || !list || extproc_list_add_number(list, 1) ||
      extproc_list_add_string(list, "two"))
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

/* The checks every phase shares: fail or answer here if asked to. Returns true when decided. */
static bool decided(extproc_request *req, const protocol_ctx *p, unsigned chunk,
                    extproc_result *result) {
  if (names_phase(p->fail, req, chunk)) {
    extproc_request_fail(req, EXTPROC_GRPC_UNAVAILABLE, "x-test-fail asked for it");
    *result = EXTPROC_FAIL;
    return true;
  }
  if (names_phase(p->immediate, req, chunk)) {
    *result = deny(req);
    return true;
  }
  return false;
}

/* The body mode named `name`; false when there is none. */
static bool body_mode_named(const char *name, extproc_body_mode *out) {
  for (int m = EXTPROC_BODY_NONE; m <= EXTPROC_BODY_GRPC; m++) {
    if (strcmp(name, mode_name((extproc_body_mode)m)) != 0) continue;
    *out = (extproc_body_mode)m;
    return true;
  }
  return false;
}

/* Overrides the body modes named by x-test-request-mode-override / x-test-mode-override (NULL:
 * unchanged), starting from the mode in effect. */
static extproc_result override_modes(extproc_request *req, const char *request,
                                     const char *response, const char *header_mode) {
  extproc_processing_mode mode = {.struct_size = sizeof(mode)};
  extproc_request_processing_mode(req, &mode);
  if ((request && !body_mode_named(request, &mode.request_body_mode)) ||
      (response && !body_mode_named(response, &mode.response_body_mode)))
    return EXTPROC_FAIL;
  if (header_mode && strcmp(header_mode, "SEND") == 0)
    mode.request_header_mode = mode.response_header_mode = EXTPROC_HEADER_SEND;
  else if (header_mode)
    return EXTPROC_FAIL;
  return extproc_mode_override(req, &mode) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

typedef struct slow_answer {
  extproc_request *req;
  long ms;
} slow_answer;

/* Slow work elsewhere: the loop thread goes on serving meanwhile. */
static void *answer_later(void *arg) {
  slow_answer *a = arg;
  struct timespec pause = {a->ms / 1000, (a->ms % 1000) * 1000000L};
  nanosleep(&pause, NULL);
  const extproc_result result =
      extproc_header_set(a->req, "x-test-slow-done", "yes") ? EXTPROC_FAIL : EXTPROC_CONTINUE;
  extproc_request_resume(a->req, result);
  free(a);
  return NULL;
}

static extproc_result answer_slowly(extproc_request *req, long ms) {
  slow_answer *a = malloc(sizeof(*a));
  pthread_t thread;
  if (!a) return EXTPROC_FAIL;
  *a = (slow_answer){req, ms};
  if (extproc_override_message_timeout(req, (uint32_t)ms + 2000) != 0) {
    free(a);
    return EXTPROC_FAIL;
  }
  /* Declared before the thread exists, so its resume can never come too early. */
  extproc_request_defer(req);
  if (pthread_create(&thread, NULL, answer_later, a) != 0) {
    free(a);
    extproc_request_resume(req, EXTPROC_FAIL);
    return EXTPROC_DEFER;
  }
  pthread_detach(thread);
  return EXTPROC_DEFER;
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  protocol_ctx *p = ctx;
  p->body_op = extproc_request_strdup(req, extproc_header_get(req, "x-test-body"));
  p->response_header_op =
      extproc_request_strdup(req, extproc_header_get(req, "x-test-response-header-op"));
  p->immediate = extproc_request_strdup(req, extproc_header_get(req, "x-test-immediate"));
  p->fail = extproc_request_strdup(req, extproc_header_get(req, "x-test-fail"));
  p->metadata = extproc_request_strdup(req, extproc_header_get(req, "x-test-metadata"));
  extproc_result result;
  if (decided(req, p, 0, &result)) return result;
  const char *streamed = extproc_header_get(req, "x-test-streamed-immediate");
  if (streamed) {
    const size_t half = strlen(streamed) / 2;
    if (extproc_streamed_immediate_response(req, 200, false) ||
        extproc_immediate_header_set(req, "x-streamed", "yes") ||
        extproc_streamed_immediate_body(req, streamed, half, false) ||
        extproc_streamed_immediate_body(req, streamed + half, strlen(streamed) - half, true))
      return EXTPROC_FAIL;
    return EXTPROC_CONTINUE;
  }
  if (p->body_op && strcmp(p->body_op, "replace") == 0 &&
      extproc_body_replace(req, "replaced by the processor", 25))
    return EXTPROC_FAIL;
  if (add_metadata(req, p) != EXTPROC_CONTINUE) return EXTPROC_FAIL;
  const char *override = extproc_header_get(req, "x-test-mode-override");
  const char *request_override = extproc_header_get(req, "x-test-request-mode-override");
  if ((override || request_override) &&
      override_modes(req, request_override, override,
                     extproc_header_get(req, "x-test-override-header-mode")) != EXTPROC_CONTINUE)
    return EXTPROC_FAIL;
  if (apply_header_ops(req, extproc_header_get(req, "x-test-header-op")) != EXTPROC_CONTINUE)
    return EXTPROC_FAIL;
  const char *slow = extproc_header_get(req, "x-test-slow");
  return slow ? answer_slowly(req, strtol(slow, NULL, 10)) : EXTPROC_CONTINUE;
}

/* Uppercases or doubles a body chunk, as x-test-body asks. */
static extproc_result transform_body(extproc_request *req, const protocol_ctx *p) {
  if (!p->body_op || strcmp(p->body_op, "replace") == 0) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  const bool twice = strcmp(p->body_op, "double") == 0;
  uint8_t *out = malloc(len * 2 + 1);
  if (!out) return EXTPROC_FAIL;
  for (size_t i = 0; i < len; i++) {
    const uint8_t c = body[i];
    out[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 32) : c;
  }
  if (twice) memcpy(out + len, body, len);
  const int rv = extproc_body_replace(req, out, twice ? 2 * len : len);
  free(out);
  return rv ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  protocol_ctx *p = ctx;
  size_t len;
  extproc_body(req, &len);
  p->request_chunks++;
  p->request_bytes += len;
  extproc_result result;
  if (decided(req, p, p->request_chunks, &result)) return result;
  return transform_body(req, p);
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  protocol_ctx *p = ctx;
  extproc_result result;
  if (decided(req, p, 0, &result)) return result;
  const extproc_request_info *info = extproc_request_get_info(req);
  const extproc_protocol_config *pc = extproc_request_protocol_config(req);
  char body_kind[32], chunks[16], modes[64], saw_length[64];
  if (p->request_chunks == 0 && info->content_length < 0)
    snprintf(body_kind, sizeof(body_kind), "none");
  else if (p->request_bytes == 0)
    snprintf(body_kind, sizeof(body_kind), "empty");
  else
    snprintf(body_kind, sizeof(body_kind), "%zu", p->request_bytes);
  snprintf(chunks, sizeof(chunks), "%u", p->request_chunks);
  snprintf(modes, sizeof(modes), "%s,%s", mode_name(pc->request_body_mode),
           mode_name(pc->response_body_mode));
  const char *response_length = extproc_header_get(req, "content-length");
  if (info->content_length >= 0)
    snprintf(saw_length, sizeof(saw_length), "%lld,%s", (long long)info->content_length,
             response_length ? response_length : "-");
  else
    snprintf(saw_length, sizeof(saw_length), "-,%s", response_length ? response_length : "-");
  const char *path = extproc_value_string(extproc_request_attribute(req, "request.path"));
  if (extproc_header_set(req, "x-test-request-body", body_kind) ||
      extproc_header_set(req, "x-test-request-chunks", chunks) ||
      extproc_header_set(req, "x-test-modes", modes) ||
      extproc_header_set(req, "x-test-saw-content-length", saw_length) ||
      (path && extproc_header_set(req, "x-test-attribute-path", path)))
    return EXTPROC_FAIL;
  if (add_metadata(req, p) != EXTPROC_CONTINUE) return EXTPROC_FAIL;
  return apply_header_ops(req, p->response_header_op);
}

static extproc_result on_response_body(extproc_request *req, void *ctx) {
  protocol_ctx *p = ctx;
  p->response_chunks++;
  extproc_result result;
  if (decided(req, p, p->response_chunks, &result)) return result;
  return transform_body(req, p);
}

static extproc_result on_trailers(extproc_request *req, void *ctx) {
  (void)ctx;
  return extproc_header_set(req, "x-test-trailer-seen", "yes") ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

extproc_processor *protocol_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "ProtocolExtProcService",
      .context_size = sizeof(protocol_ctx),
      .request_headers = on_request_headers,
      .request_body = on_request_body,
      .request_trailers = on_trailers,
      .response_headers = on_response_headers,
      .response_body = on_response_body,
      .response_trailers = on_trailers,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
