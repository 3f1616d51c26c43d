/* A processor defined with the builder, one function per phase: requests without an
 * `authorization` header get an immediate 401; a failing callback answers 503. */
#include <extproc/extproc.h>

typedef struct gate_state {
  bool checked;
} gate_state;

static extproc_result check_token(extproc_request *req, void *ctx) {
  gate_state *state = ctx;
  state->checked = true;
  if (extproc_header_get(req, "authorization")) return EXTPROC_CONTINUE;
  if (extproc_immediate_response(req, 401) != 0 ||
      extproc_immediate_header_set(req, "www-authenticate", "Bearer") != 0)
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

extproc_processor *gatekeeper_new(void);

extproc_processor *gatekeeper_new(void) {
  extproc_processor *proc;
  if (extproc_processor_new(&proc, "Gatekeeper") != 0) return NULL;
  extproc_processor_on(proc, EXTPROC_REQUEST_HEADERS, check_token);
  extproc_processor_set_context(proc, sizeof(gate_state), NULL, NULL);
  extproc_processor_set_error_policy(proc, EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, 503);
  return proc;
}
