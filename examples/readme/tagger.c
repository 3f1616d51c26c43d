/* A processor defined by a static table, served on 0.0.0.0:50051 until SIGINT or SIGTERM. */
#include <extproc/extproc.h>
#include <extproc/server.h>
#include <stdio.h>

static extproc_result tag_request(extproc_request *req, void *ctx) {
  (void)ctx;
  const char *id = extproc_request_get_info(req)->request_id; /* x-request-id */
  if (id && extproc_header_set(req, "x-extra-request-id", id) != 0) return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

int main(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "Tagger",
      .request_headers = tag_request,
      .response_headers = tag_request,
  };
  extproc_processor *proc;
  extproc_server *srv;
  int rv = extproc_processor_new_from_def(&proc, &def);
  if (rv == 0) rv = extproc_server_new(&srv, NULL); /* defaults: one loop per core */
  if (rv == 0) {
    rv = extproc_server_listen(srv, "0.0.0.0:50051", proc);
    if (rv >= 0) rv = extproc_server_run(srv); /* until SIGINT or SIGTERM */
    extproc_server_free(srv);
  }
  extproc_processor_free(proc);
  if (rv < 0) fprintf(stderr, "tagger: %s\n", extproc_strerror(rv));
  return rv < 0 ? 1 : 0;
}
