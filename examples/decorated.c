/* DecoratedExtProcService: the request side of DigestExtProcService, defined in the builder
 * style (one function registered per phase, like the Python SDK's decorators) instead of a
 * static table: the upstream gets x-request-digest once the body (if any) has been seen. */
#include "examples.h"

extproc_processor *decorated_processor_new(void) {
  extproc_processor *p;
  if (extproc_processor_new(&p, "DecoratedExtProcService") != 0) return NULL;
  extproc_processor_set_context(p, sizeof(digest_state), NULL, digest_cleanup);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, digest_on_request_headers);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, digest_on_request_body);
  return p;
}
