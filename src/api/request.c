/* The author-facing request API: reading the phase's data and recording the reply. Every
 * write is checked here, so the reply builder only ever sees valid edits. */
#include <string.h>

#include "api/headers.h"
#include "api/processor.h"
#include "engine/stream.h"

extproc_phase extproc_request_phase(const extproc_request *req) { return req->phase; }

const extproc_request_info *extproc_request_get_info(const extproc_request *req) {
  return &req->info;
}

void *extproc_request_user_data(const extproc_request *req) { return req->proc->user_data; }

const char *extproc_request_processor_name(const extproc_request *req) { return req->proc->name; }

bool extproc_request_end_of_stream(const extproc_request *req) { return req->end_of_stream; }

void *extproc_request_context(const extproc_request *req) { return req->ctx; }

void *extproc_request_alloc(extproc_request *req, size_t size) {
  return req ? arena_alloc(&req->arena, size) : NULL;
}

char *extproc_request_strdup(extproc_request *req, const char *s) {
  return (req && s) ? arena_strndup(&req->arena, s, strlen(s)) : NULL;
}

static bool in_body_phase(const extproc_request *req) {
  return req->phase == EXTPROC_REQUEST_BODY || req->phase == EXTPROC_RESPONSE_BODY;
}

const uint8_t *extproc_body(const extproc_request *req, size_t *len) {
  if (len) *len = req ? req->body_len : 0;
  return req ? req->body : NULL;
}

/* ---- Header edits ---------------------------------------------------------------------- */

static int record_edit(extproc_request *req, header_op op, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
  if (req->immediate) return EXTPROC_ESTATE;
  return header_edits_add(&req->msg_arena, &req->edits, op, name, value);
}

int extproc_header_set(extproc_request *req, const char *name, const char *value) {
  return record_edit(req, HEADER_SET, name, value);
}

int extproc_header_append(extproc_request *req, const char *name, const char *value) {
  return record_edit(req, HEADER_APPEND, name, value);
}

int extproc_header_add_if_absent(extproc_request *req, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
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
  if (!in_body_phase(req) || req->immediate) return EXTPROC_ESTATE;
  uint8_t *copy = arena_alloc(&req->msg_arena, len);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  req->body_op = BODY_REPLACE;
  req->body_data = copy;
  req->body_data_len = len;
  return 0;
}

int extproc_body_clear(extproc_request *req) {
  if (!req) return EXTPROC_EINVAL;
  if (!in_body_phase(req) || req->immediate) return EXTPROC_ESTATE;
  req->body_op = BODY_CLEAR;
  req->body_data = NULL;
  req->body_data_len = 0;
  return 0;
}

/* ---- Immediate response ---------------------------------------------------------------- */

int extproc_immediate_response(extproc_request *req, uint32_t http_status) {
  if (!req || http_status < 100 || http_status > 599) return EXTPROC_EINVAL;
  if (req->observability_mode) return EXTPROC_ESTATE;
  req->immediate = true;
  req->immediate_status = http_status;
  return 0;
}

int extproc_immediate_header_set(extproc_request *req, const char *name, const char *value) {
  if (!req || !name) return EXTPROC_EINVAL;
  if (!req->immediate) return EXTPROC_ESTATE;
  return header_edits_add(&req->msg_arena, &req->immediate_headers, HEADER_SET, name, value);
}

int extproc_immediate_body(extproc_request *req, const void *data, size_t len) {
  if (!req || (!data && len)) return EXTPROC_EINVAL;
  if (!req->immediate) return EXTPROC_ESTATE;
  uint8_t *copy = arena_alloc(&req->msg_arena, len);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  req->immediate_body = copy;
  req->immediate_body_len = len;
  return 0;
}

int extproc_immediate_grpc_status(extproc_request *req, extproc_grpc_code code) {
  if (!req || (unsigned)code > EXTPROC_GRPC_UNAUTHENTICATED) return EXTPROC_EINVAL;
  if (!req->immediate) return EXTPROC_ESTATE;
  req->immediate_has_grpc_status = true;
  req->immediate_grpc_status = (uint32_t)code;
  return 0;
}

int extproc_immediate_details(extproc_request *req, const char *details) {
  if (!req || !details) return EXTPROC_EINVAL;
  if (!req->immediate) return EXTPROC_ESTATE;
  req->immediate_details = arena_strndup(&req->msg_arena, details, strlen(details));
  return req->immediate_details ? 0 : EXTPROC_ENOMEM;
}

/* ---- Failure --------------------------------------------------------------------------- */

int extproc_request_fail(extproc_request *req, extproc_grpc_code code, const char *message) {
  if (!req || code == EXTPROC_GRPC_OK || (unsigned)code > EXTPROC_GRPC_UNAUTHENTICATED)
    return EXTPROC_EINVAL;
  req->fail_code = (uint32_t)code;
  req->fail_message = message ? arena_strndup(&req->msg_arena, message, strlen(message)) : NULL;
  return 0;
}
