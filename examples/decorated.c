/* DecoratedExtProcService: the request side of DigestExtProcService, defined in the builder
 * style (one function registered per phase, like the Python SDK's decorators) instead of a
 * static table: the upstream gets x-request-digest once the body (if any) has been seen. */
#include "examples.h"

extproc_processor *decorated_processor_create(void) {
  extproc_processor *p = extproc_processor_new("DecoratedExtProcService");
  if (!p) return NULL;
  extproc_processor_set_context(p, sizeof(digest_state), NULL, digest_cleanup);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, digest_on_request_headers);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, digest_on_request_body);
  return p;
}
