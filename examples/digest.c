/* DigestExtProcService: x-request-digest, the lowercase hex SHA-256 of tenant + method + path
 * (with query) + request body, where tenant is x-tenant-id or "unknown". The upstream gets it
 * once the body (if any) has been seen; the client gets the same value on the response.
 *
 * The hash is fed as the request goes, so it works for any method, with or without a body, and
 * would work with a body in several chunks too. The request side is shared with
 * DecoratedExtProcService (decorated.c), which registers the same functions with the builder. */
#include <openssl/evp.h>
#include <string.h>

#include "examples.h"

static extproc_result finish(extproc_request *req, digest_state *d) {
  unsigned char sum[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  const bool ok = EVP_DigestFinal_ex(d->md, sum, &n) == 1 && n == 32;
  EVP_MD_CTX_free(d->md);
  d->md = NULL;
  if (!ok) return EXTPROC_FAIL;
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    d->hex[2 * i] = digits[sum[i] >> 4];
    d->hex[2 * i + 1] = digits[sum[i] & 15];
  }
  d->hex[64] = '\0';
  return extproc_header_set(req, "x-request-digest", d->hex) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

extproc_result digest_on_request_headers(extproc_request *req, void *ctx) {
  digest_state *d = ctx;
  const extproc_request_info *info = extproc_request_get_info(req);
  const char *tenant = extproc_header_get(req, "x-tenant-id");
  if (!tenant || !*tenant) tenant = "unknown";
  const char *parts[] = {tenant, info->method ? info->method : "", info->path ? info->path : ""};
  d->md = EVP_MD_CTX_new();
  if (!d->md || !EVP_DigestInit_ex(d->md, EVP_sha256(), NULL)) return EXTPROC_FAIL;
  for (size_t i = 0; i < 3; i++)
    if (!EVP_DigestUpdate(d->md, parts[i], strlen(parts[i]))) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? finish(req, d) : EXTPROC_CONTINUE;
}

extproc_result digest_on_request_body(extproc_request *req, void *ctx) {
  digest_state *d = ctx;
  if (!d->md) return EXTPROC_CONTINUE; /* request headers were not sent to us */
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (!EVP_DigestUpdate(d->md, body, len)) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? finish(req, d) : EXTPROC_CONTINUE;
}

void digest_cleanup(void *ctx) { EVP_MD_CTX_free(((digest_state *)ctx)->md); }

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  const digest_state *d = ctx;
  if (!d->hex[0]) return EXTPROC_CONTINUE; /* the request never completed through us */
  return extproc_header_set(req, "x-request-digest", d->hex) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

extproc_processor *digest_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "DigestExtProcService",
      .context_size = sizeof(digest_state),
      .context_cleanup = digest_cleanup,
      .request_headers = digest_on_request_headers,
      .request_body = digest_on_request_body,
      .response_headers = on_response_headers,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
