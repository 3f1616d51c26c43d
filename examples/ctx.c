/* CtxExtProcService: shows state kept across the phases of one request.
 *
 * request_headers: remembers x-context-id and forwards it upstream. If it was set:
 * request_body: the body must equal it; response_body: the upstream's JSON answer (the demo's
 * echo) must have "path" equal to the request's path; then the client's response gets
 * x-context-id. A failed check fails the stream (Envoy's failure_mode_allow decides what the
 * client sees), and the SDK logs it with the processor, phase and request id. */
#include <cjson/cJSON.h>
#include <string.h>

#include "examples.h"

typedef struct ctx_state {
  const char *context_id; /* lives as long as the request; NULL when absent */
} ctx_state;

static extproc_result check_failed(extproc_request *req, const char *why) {
  extproc_request_fail(req, EXTPROC_GRPC_FAILED_PRECONDITION, why);
  return EXTPROC_FAIL;
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  ctx_state *c = ctx;
  const char *id = extproc_header_get(req, "x-context-id");
  if (!id) return EXTPROC_CONTINUE;
  c->context_id = extproc_request_strdup(req, id);
  if (!c->context_id || extproc_header_set(req, "x-context-id", id)) return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  const ctx_state *c = ctx;
  if (!c->context_id) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (len != strlen(c->context_id) || memcmp(body, c->context_id, len) != 0)
    return check_failed(req, "request body does not equal x-context-id");
  return EXTPROC_CONTINUE;
}

static extproc_result on_response_body(extproc_request *req, void *ctx) {
  const ctx_state *c = ctx;
  if (!c->context_id) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  cJSON *json = cJSON_ParseWithLength((const char *)body, len);
  const cJSON *path = cJSON_GetObjectItemCaseSensitive(json, "path");
  const char *want = extproc_request_get_info(req)->path;
  const bool same = cJSON_IsString(path) && want && strcmp(path->valuestring, want) == 0;
  cJSON_Delete(json);
  if (!same) return check_failed(req, "upstream's JSON \"path\" does not equal the request's path");
  return extproc_header_set(req, "x-context-id", c->context_id) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

extproc_processor *ctx_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "CtxExtProcService",
      .context_size = sizeof(ctx_state),
      .request_headers = on_request_headers,
      .request_body = on_request_body,
      .response_body = on_response_body,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
