/* The example processors served by extproc-examples, one file each, with the names of the
 * Python SDK they reproduce. They expect Envoy's demo configuration (deploy/envoy.yaml):
 * request and response headers SEND, bodies BUFFERED (so a body arrives whole, in one
 * callback), trailers SKIP. */
#ifndef EXTPROC_EXAMPLES_H
#define EXTPROC_EXAMPLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "extproc/extproc.h"

/* A named example: `name` is the Python SDK's class name, `short_name` the command-line
 * shorthand. `new_processor` returns a new processor, freed by the caller. */
typedef struct example {
  const char *name;
  const char *short_name;
  const char *summary;
  extproc_processor *(*new_processor)(void);
} example;

/* Every example, in the order of the demo's filter chain after Base. */
extern const example examples[];
extern const size_t example_count;

/* The example called `name` (class name or short name, exact), or NULL. */
const example *example_find(const char *name);

/* Creates example `ex` and applies the chain-header settings of the environment, as the Python
 * SDK does: REVEAL_EXTPROC_CHAIN (default true; "t", "true", "y", "yes" in either first-letter
 * case are true, anything else false) and EXTPROCS_APPLIED_HEADER (default
 * "x-ext-procs-applied"). Returns NULL on out-of-memory or an invalid header name. */
extproc_processor *example_new(const example *ex);

/* True for the Python SDK's truthy strings: t, T, true, True, y, Y, yes, Yes. */
bool example_truthy(const char *value);

/* True for "t", "true", "y", "yes" in any case: what x-echo-only accepts. */
bool example_truthy_any_case(const char *value);

extproc_processor *base_processor_new(void);
extproc_processor *trivial_processor_new(void);
extproc_processor *timer_processor_new(void);
extproc_processor *digest_processor_new(void);
extproc_processor *decorated_processor_new(void);
extproc_processor *echo_processor_new(void);
extproc_processor *ctx_processor_new(void);
extproc_processor *protocol_processor_new(void);
extproc_processor *body_pass_processor_new(void);
extproc_processor *body_rewrite_processor_new(void);

/* ---- The request digest shared by Digest and Decorated --------------------------------- */

typedef struct evp_md_ctx_st EVP_MD_CTX; /* OpenSSL's, kept out of this header */

/* The per-request context of both: SHA-256 over tenant (x-tenant-id, or "unknown" when absent
 * or empty), method, path with its query, then the request body, in that order. */
typedef struct digest_state {
  EVP_MD_CTX *md; /* open from request_headers until the request is complete */
  char hex[65];   /* lowercase hex digest; "" until known */
} digest_state;

/* Start the digest (and finish it when there is no body) / feed a body chunk (and finish at the
 * last one). Finishing sets x-request-digest on the request sent upstream. */
extproc_result digest_on_request_headers(extproc_request *req, void *ctx);
extproc_result digest_on_request_body(extproc_request *req, void *ctx);
/* Frees a digest left open (the exchange ended early). */
void digest_cleanup(void *ctx);

#endif
