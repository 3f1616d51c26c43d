/* BodyPassExtProcService and BodyRewriteExtProcService: the two processors of the body
 * benchmarks (bench/bodies.sh), for any body mode Envoy is configured with.
 *
 *   body-pass     looks at every body chunk (its length goes into a per-request count) and lets
 *                 it through unchanged: no body mutation in STREAMED and BUFFERED, the chunk
 *                 itself as the streamed piece in FULL_DUPLEX_STREAMED (the SDK's default there).
 *   body-rewrite  replaces every non-empty body chunk with its ASCII uppercase, the same size:
 *                 a body mutation per chunk (a streamed piece in FULL_DUPLEX_STREAMED).
 *
 * Unlike the trivial processor, both have body callbacks, so what they measure is the cost of a
 * processor that sees each chunk, not of one the SDK could answer without looking. The load
 * generator checks their replies byte for byte (extproc-load --expect-body same / upper). */
#include <stdlib.h>

#include "examples.h"

typedef struct body_count {
  size_t bytes[2]; /* body bytes seen: request, response */
} body_count;

static extproc_result pass_chunk(extproc_request *req, void *ctx) {
  body_count *count = ctx;
  size_t len;
  extproc_body(req, &len);
  count->bytes[extproc_request_phase(req) == EXTPROC_RESPONSE_BODY] += len;
  return EXTPROC_CONTINUE;
}

/* Lowercase ASCII letters up, every other byte as it is; a loop the compiler can vectorise. */
static void ascii_upper(uint8_t *out, const uint8_t *in, size_t len) {
  for (size_t i = 0; i < len; i++)
    out[i] = (uint8_t)(in[i] - ((unsigned)(in[i] - 'a') < 26u ? 32 : 0));
}

static extproc_result rewrite_chunk(extproc_request *req, void *ctx) {
  (void)ctx;
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (len == 0) return EXTPROC_CONTINUE; /* nothing to rewrite */
  /* extproc_body_replace copies: a scratch buffer for this chunk only, so a long streamed body
   * does not pile up in the request's memory. */
  uint8_t *upper = malloc(len);
  if (!upper) return EXTPROC_FAIL;
  ascii_upper(upper, body, len);
  const int rv = extproc_body_replace(req, upper, len);
  free(upper);
  return rv ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

extproc_processor *body_pass_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "BodyPassExtProcService",
      .context_size = sizeof(body_count),
      .request_body = pass_chunk,
      .response_body = pass_chunk,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}

extproc_processor *body_rewrite_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "BodyRewriteExtProcService",
      .request_body = rewrite_chunk,
      .response_body = rewrite_chunk,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
