/* The table of examples and the settings they share. */
#include <stdlib.h>
#include <string.h>

#include "access_log.h"
#include "auth.h"
#include "examples.h"
#include "idempotency.h"

const example examples[] = {
    {"BaseExtProcService", "base", "does nothing; logs every phase at debug level",
     base_processor_new},
    {"TrivialExtProcService", "trivial", "copies x-request-id into x-extra-request-id",
     trivial_processor_new},
    {"TimerExtProcService", "timer", "x-request-started upstream; x-duration-ns on the response",
     timer_processor_new},
    {"EchoExtProcService", "echo", "answers at once with the request when x-echo-only is true",
     echo_processor_new},
    {"DigestExtProcService", "digest", "x-request-digest: SHA-256 of tenant, method, path, body",
     digest_processor_new},
    {"DecoratedExtProcService", "decorated", "the request digest, written with the builder",
     decorated_processor_new},
    {"CtxExtProcService", "context", "checks x-context-id against the body and the response",
     ctx_processor_new},
    {"ProtocolExtProcService", "protocol", "every body mode and reply field, driven by x-test-*",
     protocol_processor_new},
    {"AuthExtProcService", "auth", "bearer JWT or API key required; claims forwarded upstream",
     auth_processor_new},
    {"IdempotencyExtProcService", "idempotency",
     "POST/PATCH with Idempotency-Key reach the upstream once; repeats replayed from Redis",
     idempotency_processor_new},
    {"AccessLogExtProcService", "access-log", "one JSON line per exchange, to a file or stdout",
     access_log_processor_new},
    {"BodyPassExtProcService", "body-pass",
     "sees every body chunk and lets it through unchanged (body benchmarks)",
     body_pass_processor_new},
    {"BodyRewriteExtProcService", "body-rewrite",
     "replaces every body chunk with its ASCII uppercase, same size (body benchmarks)",
     body_rewrite_processor_new},
};
const size_t example_count = sizeof(examples) / sizeof(examples[0]);

const example *example_find(const char *name) {
  for (size_t i = 0; name && i < example_count; i++)
    if (strcmp(name, examples[i].name) == 0 || strcmp(name, examples[i].short_name) == 0)
      return &examples[i];
  return NULL;
}

bool example_truthy(const char *v) {
  static const char *const yes[] = {"t", "T", "true", "True", "y", "Y", "yes", "Yes"};
  for (size_t i = 0; v && i < sizeof(yes) / sizeof(yes[0]); i++)
    if (strcmp(v, yes[i]) == 0) return true;
  return false;
}

bool example_truthy_any_case(const char *v) {
  static const char *const yes[] = {"t", "true", "y", "yes"};
  for (size_t i = 0; v && i < sizeof(yes) / sizeof(yes[0]); i++) {
    const char *a = yes[i], *b = v;
    while (*a && (*b | 0x20) == *a)
      a++, b++;
    if (!*a && !*b) return true;
  }
  return false;
}

extproc_processor *example_new(const example *ex) {
  extproc_processor *proc = ex->new_processor();
  if (!proc) return NULL;
  const char *reveal = getenv("REVEAL_EXTPROC_CHAIN");
  const char *header = getenv("EXTPROCS_APPLIED_HEADER");
  if (!reveal || example_truthy(reveal)) {
    if (extproc_processor_set_chain_header(proc,
                                           header && *header ? header : "x-ext-procs-applied")) {
      extproc_processor_free(proc);
      return NULL;
    }
  }
  return proc;
}
