/* DigestExtProcService: x-request-digest, the lowercase hex SHA-256 of tenant + method + path
 * (with query) + request body, where tenant is x-tenant-id or "unknown". The upstream gets it
 * once the body (if any) has been seen; the client gets the same value on the response.
 *
 * The hash is fed as the request goes, so it works for any method, with or without a body, and
 * would work with a body in several chunks too. */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "examples.h"

/* ---- The digest, shared with DecoratedExtProcService ------------------------------------ */

struct request_digest {
  EVP_MD_CTX *md;
};

request_digest *request_digest_begin(extproc_request *req) {
  const extproc_request_info *info = extproc_request_get_info(req);
  const char *tenant = extproc_header_get(req, "x-tenant-id");
  if (!tenant || !*tenant) tenant = "unknown";
  const char *parts[] = {tenant, info->method ? info->method : "", info->path ? info->path : ""};
  request_digest *d = calloc(1, sizeof(*d));
  if (!d || !(d->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(d->md, EVP_sha256(), NULL)) {
    request_digest_free(d);
    return NULL;
  }
  for (size_t i = 0; i < 3; i++) {
    if (!request_digest_update(d, (const uint8_t *)parts[i], strlen(parts[i]))) {
      request_digest_free(d);
      return NULL;
    }
  }
  return d;
}

bool request_digest_update(request_digest *d, const uint8_t *data, size_t len) {
  return EVP_DigestUpdate(d->md, data, len) == 1;
}

bool request_digest_finish(request_digest *d, char hex[65]) {
  unsigned char sum[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(d->md, sum, &n) != 1 || n != 32) return false;
  static const char digits[] = "0123456789abcdef";
  for (unsigned i = 0; i < n; i++) {
    hex[2 * i] = digits[sum[i] >> 4];
    hex[2 * i + 1] = digits[sum[i] & 15];
  }
  hex[64] = '\0';
  return true;
}

void request_digest_free(request_digest *d) {
  if (!d) return;
  EVP_MD_CTX_free(d->md);
  free(d);
}

/* ---- The processor --------------------------------------------------------------------- */

typedef struct digest_ctx {
  request_digest *digest; /* open until the request is complete */
  char hex[65];           /* "" until known */
} digest_ctx;

static extproc_result finish(extproc_request *req, digest_ctx *d) {
  const bool ok = request_digest_finish(d->digest, d->hex);
  request_digest_free(d->digest);
  d->digest = NULL;
  if (!ok) return EXTPROC_FAIL;
  return extproc_header_set(req, "x-request-digest", d->hex) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  digest_ctx *d = ctx;
  d->digest = request_digest_begin(req);
  if (!d->digest) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? finish(req, d) : EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  digest_ctx *d = ctx;
  if (!d->digest) return EXTPROC_CONTINUE; /* request headers were not sent to us */
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (!request_digest_update(d->digest, body, len)) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? finish(req, d) : EXTPROC_CONTINUE;
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  const digest_ctx *d = ctx;
  if (!d->hex[0]) return EXTPROC_CONTINUE;
  return extproc_header_set(req, "x-request-digest", d->hex) ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

static void cleanup(void *ctx) { request_digest_free(((digest_ctx *)ctx)->digest); }

extproc_processor *digest_processor_create(void) {
  static const extproc_processor_def def = {
      .name = "DigestExtProcService",
      .context_size = sizeof(digest_ctx),
      .context_cleanup = cleanup,
      .request_headers = on_request_headers,
      .request_body = on_request_body,
      .response_headers = on_response_headers,
  };
  return extproc_processor_create(&def);
}
