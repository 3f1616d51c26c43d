/* Testing a processor in process with the harness: no network, the same engine as the server. */
#include <extproc/testing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extproc_processor *gatekeeper_new(void);

/* Not assert(): a release build (NDEBUG) must still check. */
static void check(bool ok, const char *what) {
  if (ok) return;
  fprintf(stderr, "FAILED: %s\n", what);
  exit(1);
}

int main(void) {
  extproc_processor *proc = gatekeeper_new();
  extproc_harness *h;
  check(extproc_harness_new(&h, proc) == 0, "harness");
  const char *request[] = {":method", "GET", ":path", "/orders", "x-request-id", "abc", NULL};
  check(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, request, true) == 0, "headers");
  const extproc_harness_reply *r = extproc_harness_immediate_response(h);
  check(r && r->immediate_status == 401, "no token: 401");
  check(strcmp(extproc_harness_client_header(h, "www-authenticate"), "Bearer") == 0,
        "no token: www-authenticate");
  extproc_harness_free(h);

  check(extproc_harness_new(&h, proc) == 0, "harness");
  const char *signed_in[] = {":method",       "GET",      ":path", "/orders",
                             "authorization", "Bearer x", NULL};
  check(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, signed_in, true) == 0, "headers");
  check(extproc_harness_immediate_response(h) == NULL, "token: no immediate response");
  check(strcmp(extproc_harness_upstream_header(h, "authorization"), "Bearer x") == 0,
        "token: passed upstream");
  extproc_harness_free(h);
  extproc_processor_free(proc);
  puts("gatekeeper: all checks passed");
  return 0;
}
