/* The author-facing request API: reading the phase's data and recording the reply. Every
 * write is checked here, so the reply builder only ever sees valid edits. */
#include <stdlib.h>
#include <string.h>

#include "base/sized_struct.h"
#include "engine/request.h"

extproc_phase extproc_request_phase(const extproc_request *req) {
  return req ? req->msg.phase : EXTPROC_PHASE_COUNT;
}

const extproc_request_info *extproc_request_get_info(const extproc_request *req) {
  static const extproc_request_info none = {.content_length = -1};
  return req ? &req->info : &none;
}

void *extproc_request_user_data(const extproc_request *req) {
  return req ? req->proc->user_data : NULL;
}

void *extproc_request_loop(const extproc_request *req) { return req ? req->poster.loop : NULL; }

const char *extproc_request_processor_name(const extproc_request *req) {
  return req ? req->proc->name : NULL;
}

bool extproc_request_end_of_stream(const extproc_request *req) {
  return req && req->msg.end_of_stream;
}

void *extproc_request_context(const extproc_request *req) { return req ? req->ctx : NULL; }

void *extproc_request_alloc(extproc_request *req, size_t size) {
  return req ? arena_alloc(&req->arena, size) : NULL;
}

char *extproc_request_strdup(extproc_request *req, const char *s) {
  return (req && s) ? arena_strndup(&req->arena, s, strlen(s)) : NULL;
}

static extproc_body_mode current_body_mode(const extproc_request *req) {
  return req->body_mode[req->msg.phase >= EXTPROC_RESPONSE_HEADERS];
}

/* An author's call that records something Envoy would never apply (or that would make a
 * reply Envoy does not expect): refused with EXTPROC_ESTATE, and said so in one line. */
static int refuse(const extproc_request *req, const char *what) {
  extproc_log(req, EXTPROC_LOG_WARN, "refused: %s", what);
  return EXTPROC_ESTATE;
}

/* Why nothing recorded for this phase's own reply can reach Envoy now, or NULL if it can. */
static const char *no_phase_reply(const extproc_request *req) {
  if (req->msg.observability_mode) return "in observability mode, Envoy takes no reply";
  if (req->streamed_immediate != STREAMED_IMMEDIATE_NONE)
    return "a streamed immediate response replaces the phase's reply";
  if (req->reply.immediate) return "an immediate response replaces the phase's reply";
  return NULL;
}

/* Refuses `what` when the phase's reply cannot carry it; 0 when it can. */
static int check_phase_reply(const extproc_request *req, const char *what) {
  const char *why = no_phase_reply(req);
  if (!why) return 0;
  extproc_log(req, EXTPROC_LOG_WARN, "refused: %s: %s", what, why);
  return EXTPROC_ESTATE;
}

/* A FULL_DUPLEX_STREAMED body phase is answered with streamed_response pieces only, which carry
 * no header mutation and no CommonResponse flags. */
static bool in_duplex_body_phase(const extproc_request *req) {
  return is_body_phase(req->msg.phase) &&
         current_body_mode(req) == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
}

const extproc_protocol_config *extproc_request_protocol_config(const extproc_request *req) {
  static const extproc_protocol_config unknown = {.request_body_mode = EXTPROC_BODY_MODE_UNKNOWN,
                                                  .response_body_mode = EXTPROC_BODY_MODE_UNKNOWN};
  return req ? &req->protocol : &unknown;
}

extproc_body_mode extproc_request_body_mode(const extproc_request *req) {
  return req ? current_body_mode(req) : EXTPROC_BODY_MODE_UNKNOWN;
}

int extproc_request_processing_mode(const extproc_request *req, extproc_processing_mode *mode) {
  if (!mode) return EXTPROC_EINVAL;
  extproc_processing_mode m = {.struct_size = sizeof(m)};
  if (req) {
    m.request_body_mode = req->body_mode[0] < 0 ? EXTPROC_BODY_NONE : req->body_mode[0];
    m.response_body_mode = req->body_mode[1] < 0 ? EXTPROC_BODY_NONE : req->body_mode[1];
  }
  return sized_struct_write(mode, &m, sizeof(m));
}

bool extproc_request_observability_mode(const extproc_request *req) {
  return req && req->msg.observability_mode;
}

/* Refuses a chunk that would take the direction's accumulated body past the processor's cap:
 * the body is incomplete from then on, so every later call is refused too. */
static bool accumulate_within_limit(extproc_request *req, int dir, size_t need) {
  if (req->accumulate_over[dir]) return false;
  const size_t limit = req->proc->max_body_accumulate_bytes;
  if (need <= limit) return true;
  req->accumulate_over[dir] = true;
  if (req->poster.stats) atomic_fetch_add(&req->poster.stats->body_limit_hits, 1);
  extproc_log(req, EXTPROC_LOG_WARN,
              "extproc_body_accumulate: the %s body would reach %zu bytes, over the limit of %zu "
              "(max_body_accumulate_bytes); refused",
              dir ? "response" : "request", need, limit);
  /* An author who just returns EXTPROC_FAIL ends the stream with the status that says why. */
  if (!req->reply.fail_message) {
    req->reply.fail_code = EXTPROC_GRPC_RESOURCE_EXHAUSTED;
    req->reply.fail_message = "accumulated body over max_body_accumulate_bytes";
  }
  return false;
}

const uint8_t *extproc_body_accumulate(extproc_request *req, size_t *len) {
  if (len) *len = 0;
  if (!req) return NULL;
  if (!is_body_phase(req->msg.phase)) {
    req->accumulate_error = EXTPROC_ESTATE;
    return NULL;
  }
  const int dir = req->msg.phase == EXTPROC_RESPONSE_BODY;
  if (!req->msg.chunk_accumulated) {
    const size_t need = req->accumulated_len[dir] + req->msg.body_len;
    if (!accumulate_within_limit(req, dir, need)) {
      req->accumulate_error = EXTPROC_ELIMIT;
      return NULL;
    }
    if (need > req->accumulated_cap[dir]) {
      size_t cap = req->accumulated_cap[dir] ? req->accumulated_cap[dir] : 4096;
      while (cap < need)
        cap *= 2;
      uint8_t *grown = realloc(req->accumulated[dir], cap);
      if (!grown) {
        req->accumulate_error = EXTPROC_ENOMEM;
        return NULL;
      }
      req->accumulated[dir] = grown;
      req->accumulated_cap[dir] = cap;
    }
    if (req->msg.body_len)
      memcpy(req->accumulated[dir] + req->accumulated_len[dir], req->msg.body, req->msg.body_len);
    req->accumulated_len[dir] = need;
    req->msg.chunk_accumulated = true;
  }
  req->accumulate_error = 0;
  if (len) *len = req->accumulated_len[dir];
  return req->accumulated[dir] ? req->accumulated[dir] : (const uint8_t *)"";
}

int extproc_body_accumulate_error(const extproc_request *req) {
  return req ? req->accumulate_error : EXTPROC_EINVAL;
}

const uint8_t *extproc_body(const extproc_request *req, size_t *len) {
  if (len) *len = req ? req->msg.body_len : 0;
  return req ? req->msg.body : NULL;
}

/* ---- Headers of the current phase ------------------------------------------------------ */

const extproc_header *extproc_headers(const extproc_request *req, size_t *count) {
  if (count) *count = req ? req->msg.header_count : 0;
  return req ? req->msg.headers : NULL;
}

const char *extproc_header_get(const extproc_request *req, const char *name) {
  if (!req || !name) return NULL;
  return headers_find(req->msg.headers, req->msg.header_count, name);
}

size_t extproc_header_get_all(const extproc_request *req, const char *name, const char **values,
                              size_t max) {
  if (!req || !name) return 0;
  size_t n = 0;
  for (size_t i = 0; i < req->msg.header_count; i++) {
    if (!header_name_equal(req->msg.headers[i].name, name)) continue;
    if (n < max && values) values[n] = req->msg.headers[i].value;
    n++;
  }
  return n;
}

/* ---- Header edits ---------------------------------------------------------------------- */

/* Whether the phase's reply can carry a header mutation: 0 or EXTPROC_ESTATE (logged). */
static int check_header_write(const extproc_request *req) {
  const int rv = check_phase_reply(req, "a header write");
  if (rv != 0) return rv;
  if (in_duplex_body_phase(req))
    return refuse(req, "a header write in a FULL_DUPLEX_STREAMED body phase (its replies are "
                       "streamed_response pieces, which carry no header mutation)");
  return 0;
}

static int record_edit(extproc_request *req, header_op op, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
  const int rv = check_header_write(req);
  if (rv != 0) return rv;
  return header_edits_add(&req->msg_arena, &req->reply.edits, op, name, value);
}

int extproc_header_set(extproc_request *req, const char *name, const char *value) {
  return record_edit(req, HEADER_SET, name, value);
}

int extproc_header_append(extproc_request *req, const char *name, const char *value) {
  return record_edit(req, HEADER_APPEND, name, value);
}

int extproc_header_add_if_absent(extproc_request *req, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
  const int rv = check_header_write(req);
  if (rv != 0) return rv;
  /* Decided here against what Envoy sent, so the result is the same whichever of `append` and
   * `append_action` the data plane honours. */
  if (header_name_valid(name) && extproc_header_get(req, name)) {
    return header_value_valid(value, value ? strlen(value) : 0) ? 0 : EXTPROC_EINVAL;
  }
  return record_edit(req, HEADER_ADD_IF_ABSENT, name, value);
}

int extproc_header_remove(extproc_request *req, const char *name) {
  return record_edit(req, HEADER_REMOVE, name, NULL);
}

/* ---- Body edits ------------------------------------------------------------------------ */

int extproc_body_replace(extproc_request *req, const void *data, size_t len) {
  if (!req || (!data && len)) return EXTPROC_EINVAL;
  if (is_trailers_phase(req->msg.phase)) return refuse(req, "a body write in a trailers phase");
  const int rv = check_phase_reply(req, "a body write");
  if (rv != 0) return rv;
  uint8_t *copy = arena_alloc(&req->msg_arena, len);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  req->reply.body_op = BODY_REPLACE;
  req->reply.body_data = copy;
  req->reply.body_data_len = len;
  return 0;
}

int extproc_body_clear(extproc_request *req) {
  if (!req) return EXTPROC_EINVAL;
  if (is_trailers_phase(req->msg.phase)) return refuse(req, "a body write in a trailers phase");
  const int rv = check_phase_reply(req, "a body write");
  if (rv != 0) return rv;
  req->reply.body_op = BODY_CLEAR;
  req->reply.body_data = NULL;
  req->reply.body_data_len = 0;
  return 0;
}

int extproc_streamed_body_send(extproc_request *req, const void *data, size_t len,
                               bool end_of_stream) {
  if (!req || (!data && len)) return EXTPROC_EINVAL;
  if (!is_body_phase(req->msg.phase) || current_body_mode(req) != EXTPROC_BODY_FULL_DUPLEX_STREAMED)
    return refuse(req, "a streamed body reply outside a FULL_DUPLEX_STREAMED body phase");
  if (req->reply.immediate || req->duplex_body_ended[req->msg.phase == EXTPROC_RESPONSE_BODY])
    return refuse(req, "a streamed body reply after the body was ended");
  if (send_pieces_ended(req)) return refuse(req, "a streamed body reply after end_of_stream");
  return send_add_piece(req, data, len, end_of_stream);
}

/* ---- Other reply fields ----------------------------------------------------------------- */

static bool valid_body_mode(extproc_body_mode m) {
  return m >= EXTPROC_BODY_NONE && m <= EXTPROC_BODY_GRPC;
}

static bool valid_header_mode(extproc_header_mode m) {
  return m >= EXTPROC_HEADER_DEFAULT && m <= EXTPROC_HEADER_SKIP;
}

int extproc_mode_override(extproc_request *req, const extproc_processing_mode *given) {
  extproc_processing_mode m;
  if (!req || !given || sized_struct_read(&m, sizeof(m), given) != 0) return EXTPROC_EINVAL;
  const extproc_processing_mode *mode = &m;
  if (!valid_body_mode(mode->request_body_mode) || !valid_body_mode(mode->response_body_mode) ||
      !valid_header_mode(mode->request_header_mode) ||
      !valid_header_mode(mode->response_header_mode) ||
      !valid_header_mode(mode->request_trailer_mode) ||
      !valid_header_mode(mode->response_trailer_mode))
    return EXTPROC_EINVAL;
  if (!is_headers_phase(req->msg.phase))
    return refuse(req, "mode_override outside a headers phase");
  const int rv = check_phase_reply(req, "mode_override");
  if (rv != 0) return rv;
  req->reply.has_mode_override = true;
  req->reply.mode_override = *mode;
  return 0;
}

int extproc_clear_route_cache(extproc_request *req) {
  if (!req) return EXTPROC_EINVAL;
  if (is_trailers_phase(req->msg.phase))
    return refuse(req, "clear_route_cache in a trailers phase");
  /* Envoy clears the route cache for request headers only; in the response direction it
   * ignores the flag. */
  if (req->msg.phase >= EXTPROC_RESPONSE_HEADERS)
    return refuse(req, "clear_route_cache in a response phase (Envoy ignores it there)");
  if (in_duplex_body_phase(req))
    return refuse(req, "clear_route_cache in a FULL_DUPLEX_STREAMED body phase");
  const int rv = check_phase_reply(req, "clear_route_cache");
  if (rv != 0) return rv;
  req->reply.clear_route_cache = true;
  return 0;
}

int extproc_override_message_timeout(extproc_request *req, uint32_t ms) {
  if (!req || ms == 0) return EXTPROC_EINVAL;
  /* A blocking callback runs on a pool thread, and replies go out only from the loop. */
  if (req->on_pool) return refuse(req, "override_message_timeout in a blocking callback");
  const int handoff = atomic_load(&req->handoff);
  if ((handoff != HANDOFF_IN_CALLBACK && handoff != HANDOFF_DEFER_DECLARED) ||
      req->msg.observability_mode || req->ended)
    return refuse(req, "override_message_timeout outside a callback, or with no reply due");
  return send_extra(req, reply_build_timeout_override(req, ms));
}

/* ---- Immediate response ---------------------------------------------------------------- */

int extproc_immediate_response(extproc_request *req, uint32_t http_status) {
  if (!req || http_status < 100 || http_status > 599) return EXTPROC_EINVAL;
  if (req->msg.observability_mode)
    return refuse(req, "an immediate response in observability mode");
  if (req->streamed_immediate != STREAMED_IMMEDIATE_NONE)
    return refuse(req, "an immediate response after a streamed immediate response");
  req->reply.immediate = true;
  req->reply.immediate_status = http_status;
  return 0;
}

int extproc_immediate_header_set(extproc_request *req, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
  if (!req->reply.immediate && req->streamed_immediate != STREAMED_IMMEDIATE_STARTING)
    return refuse(req, "an immediate response header with no immediate response started");
  return header_edits_add(&req->msg_arena, &req->reply.immediate_headers, HEADER_SET, name, value);
}

int extproc_immediate_body(extproc_request *req, const void *data, size_t len) {
  if (!req || (!data && len)) return EXTPROC_EINVAL;
  if (!req->reply.immediate)
    return refuse(req, "an immediate body with no immediate response started");
  uint8_t *copy = arena_alloc(&req->msg_arena, len);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  req->reply.immediate_body = copy;
  req->reply.immediate_body_len = len;
  return 0;
}

int extproc_immediate_grpc_status(extproc_request *req, extproc_grpc_code code) {
  if (!req || (unsigned)code > EXTPROC_GRPC_UNAUTHENTICATED) return EXTPROC_EINVAL;
  if (!req->reply.immediate)
    return refuse(req, "an immediate grpc_status with no immediate response started");
  req->reply.immediate_has_grpc_status = true;
  req->reply.immediate_grpc_status = (uint32_t)code;
  return 0;
}

int extproc_immediate_details(extproc_request *req, const char *details) {
  if (!req || !details) return EXTPROC_EINVAL;
  if (!req->reply.immediate)
    return refuse(req, "immediate details with no immediate response started");
  req->reply.immediate_details = arena_strndup(&req->msg_arena, details, strlen(details));
  return req->reply.immediate_details ? 0 : EXTPROC_ENOMEM;
}

int extproc_streamed_immediate_response(extproc_request *req, uint32_t http_status,
                                        bool end_of_stream) {
  if (!req || http_status < 200 || http_status > 599) return EXTPROC_EINVAL;
  if (req->msg.phase != EXTPROC_REQUEST_HEADERS || req->msg.observability_mode ||
      req->reply.immediate || req->streamed_immediate != STREAMED_IMMEDIATE_NONE)
    return refuse(req, "a streamed immediate response must start once, in request_headers");
  /* Envoy answers 500 for one while it still expects request body replies. */
  const extproc_body_mode mode = req->body_mode[0];
  if (mode != EXTPROC_BODY_MODE_UNKNOWN && mode != EXTPROC_BODY_NONE &&
      mode != EXTPROC_BODY_FULL_DUPLEX_STREAMED)
    return refuse(req, "a streamed immediate response needs request body mode NONE or "
                       "FULL_DUPLEX_STREAMED");
  req->streamed_immediate = STREAMED_IMMEDIATE_STARTING;
  req->streamed_immediate_headers_end = end_of_stream;
  req->reply.immediate_status = http_status;
  return 0;
}

int extproc_streamed_immediate_body(extproc_request *req, const void *data, size_t len,
                                    bool end_of_stream) {
  if (!req || (!data && len)) return EXTPROC_EINVAL;
  if (req->streamed_immediate == STREAMED_IMMEDIATE_NONE ||
      req->streamed_immediate == STREAMED_IMMEDIATE_ENDED || req->streamed_immediate_headers_end)
    return refuse(req, "a streamed immediate body with no open streamed immediate response");
  if (send_pieces_ended(req)) return refuse(req, "a streamed immediate body after end_of_stream");
  return send_add_piece(req, data, len, end_of_stream);
}

/* ---- Failure --------------------------------------------------------------------------- */

int extproc_request_fail(extproc_request *req, extproc_grpc_code code, const char *message) {
  if (!req || code == EXTPROC_GRPC_OK || (unsigned)code > EXTPROC_GRPC_UNAUTHENTICATED)
    return EXTPROC_EINVAL;
  req->reply.fail_code = (uint32_t)code;
  req->reply.fail_message =
      message ? arena_strndup(&req->msg_arena, message, strlen(message)) : NULL;
  return 0;
}
