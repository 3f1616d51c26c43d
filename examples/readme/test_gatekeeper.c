/* Testing a processor in process with the harness: no network, the same engine as the server. */
#include <assert.h>
#include <extproc/testing.h>
#include <string.h>

extproc_processor *gatekeeper_new(void);

int main(void) {
  extproc_processor *proc = gatekeeper_new();
  extproc_harness *h;
  assert(extproc_harness_new(&h, proc) == 0);
  const char *request[] = {":method", "GET", ":path", "/orders", "x-request-id", "abc", NULL};
  assert(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, request, true) == 0);
  const extproc_harness_reply *r = extproc_harness_immediate_response(h);
  assert(r && r->immediate_status == 401);
  assert(strcmp(extproc_harness_client_header(h, "www-authenticate"), "Bearer") == 0);
  extproc_harness_free(h);

  assert(extproc_harness_new(&h, proc) == 0);
  const char *signed_in[] = {":method",       "GET",      ":path", "/orders",
                             "authorization", "Bearer x", NULL};
  assert(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, signed_in, true) == 0);
  assert(extproc_harness_immediate_response(h) == NULL);
  assert(strcmp(extproc_harness_upstream_header(h, "authorization"), "Bearer x") == 0);
  extproc_harness_free(h);
  extproc_processor_free(proc);
  return 0;
}
