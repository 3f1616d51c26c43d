/* DecoratedExtProcService: the request side of DigestExtProcService, written in the builder
 * style (one function registered per phase, like the Python SDK's decorators): the upstream
 * gets x-request-digest once the body (if any) has been seen. */
#include "examples.h"

typedef struct decorated_ctx {
  request_digest *digest;
} decorated_ctx;

static extproc_result set_digest(extproc_request *req, decorated_ctx *d) {
  char hex[65];
  const bool ok = request_digest_finish(d->digest, hex);
  request_digest_free(d->digest);
  d->digest = NULL;
  return ok && extproc_header_set(req, "x-request-digest", hex) == 0 ? EXTPROC_CONTINUE
                                                                     : EXTPROC_FAIL;
}

static extproc_result request_headers(extproc_request *req, void *ctx) {
  decorated_ctx *d = ctx;
  d->digest = request_digest_begin(req);
  if (!d->digest) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? set_digest(req, d) : EXTPROC_CONTINUE;
}

static extproc_result request_body(extproc_request *req, void *ctx) {
  decorated_ctx *d = ctx;
  if (!d->digest) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (!request_digest_update(d->digest, body, len)) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? set_digest(req, d) : EXTPROC_CONTINUE;
}

static void cleanup(void *ctx) { request_digest_free(((decorated_ctx *)ctx)->digest); }

extproc_processor *decorated_processor_create(void) {
  extproc_processor *p = extproc_processor_new("DecoratedExtProcService");
  if (!p) return NULL;
  extproc_processor_set_context(p, sizeof(decorated_ctx), NULL, cleanup);
  extproc_processor_on(p, EXTPROC_REQUEST_HEADERS, request_headers);
  extproc_processor_on(p, EXTPROC_REQUEST_BODY, request_body);
  return p;
}
