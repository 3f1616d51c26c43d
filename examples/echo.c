/* EchoExtProcService: when the request carries a true x-echo-only ("t", "true", "y", "yes", any
 * case), the request never reaches the upstream: the processor answers at once with 200, the
 * request's headers and its body (empty when it has none).
 *
 * Pseudo-headers are left out, and so are the headers that describe one hop or one message's
 * framing (content-length, transfer-encoding, connection, keep-alive, proxy-connection, te,
 * upgrade, host): Envoy frames the immediate response itself. */
#include <string.h>

#include "examples.h"

typedef struct echo_ctx {
  bool echo;
  const extproc_header *headers; /* copied into request memory at request_headers */
  size_t header_count;
} echo_ctx;

static bool echoable(const char *name) {
  static const char *const skipped[] = {"content-length",   "transfer-encoding",
                                        "connection",       "keep-alive",
                                        "proxy-connection", "te",
                                        "upgrade",          "host"};
  if (name[0] == ':') return false;
  for (size_t i = 0; i < sizeof(skipped) / sizeof(skipped[0]); i++)
    if (strcmp(name, skipped[i]) == 0) return false;
  return true;
}

static extproc_result respond(extproc_request *req, const echo_ctx *e, const uint8_t *body,
                              size_t len) {
  if (extproc_immediate_response(req, 200) || extproc_immediate_body(req, body, len))
    return EXTPROC_FAIL;
  for (size_t i = 0; i < e->header_count; i++)
    if (extproc_immediate_header_set(req, e->headers[i].name, e->headers[i].value))
      return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  echo_ctx *e = ctx;
  e->echo = example_truthy_any_case(extproc_header_get(req, "x-echo-only"));
  if (!e->echo) return EXTPROC_CONTINUE;
  size_t n;
  const extproc_header *all = extproc_headers(req, &n);
  /* The header view lasts for this callback only; the body phase needs them too. */
  extproc_header *kept = extproc_request_alloc(req, (n ? n : 1) * sizeof(*kept));
  if (!kept) return EXTPROC_FAIL;
  for (size_t i = 0; i < n; i++) {
    if (!echoable(all[i].name)) continue;
    extproc_header *h = &kept[e->header_count++];
    *h = all[i];
    h->name = extproc_request_strdup(req, all[i].name);
    h->value = extproc_request_strdup(req, all[i].value);
    if (!h->name || !h->value) return EXTPROC_FAIL;
  }
  e->headers = kept;
  if (extproc_request_end_of_stream(req)) return respond(req, e, NULL, 0);
  return EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  const echo_ctx *e = ctx;
  if (!e->echo) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  return respond(req, e, body, len);
}

extproc_processor *echo_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "EchoExtProcService",
      .context_size = sizeof(echo_ctx),
      .request_headers = on_request_headers,
      .request_body = on_request_body,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
