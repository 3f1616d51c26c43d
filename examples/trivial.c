/* TrivialExtProcService: copies the request's x-request-id into x-extra-request-id, on the
 * request sent upstream and on the response sent to the client.
 *
 * The response phase takes the id from the request facts the SDK keeps for the whole
 * exchange: the response headers Envoy sends to a processor do not carry x-request-id. */
#include "examples.h"

static extproc_result copy_request_id(extproc_request *req, void *ctx) {
  (void)ctx;
  const char *id = extproc_request_get_info(req)->request_id;
  if (id && extproc_header_set(req, "x-extra-request-id", id) != 0) return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

extproc_processor *trivial_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "TrivialExtProcService",
      .request_headers = copy_request_id,
      .response_headers = copy_request_id,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
