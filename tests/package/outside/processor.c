/* A processor built outside the source tree against the installed libextproc: it adds
 * `x-outside: TAG METHOD PATH` to every response, e.g. "x-outside: cmake GET /check".
 * Usage: processor ADDRESS TAG (e.g. processor 127.0.0.1:50051 cmake). */
#include <stdio.h>

#include <extproc/extproc.h>
#include <extproc/server.h>

static const char *tag = "";

static extproc_result add_header(extproc_request *req, void *ctx) {
  (void)ctx;
  const extproc_request_info *info = extproc_request_get_info(req);
  char value[512];
  snprintf(value, sizeof(value), "%s %s %s", tag, info->method ? info->method : "-",
           info->path ? info->path : "-");
  return extproc_header_set(req, "x-outside", value) == 0 ? EXTPROC_CONTINUE : EXTPROC_FAIL;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s ADDRESS TAG\n", argv[0]);
    return 2;
  }
  tag = argv[2];
  static const extproc_processor_def def = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "Outside",
                                            .response_headers = add_header};
  extproc_processor *proc = NULL;
  extproc_server *srv = NULL;
  int rv = extproc_processor_new_from_def(&proc, &def);
  if (rv == 0) rv = extproc_server_new(&srv, NULL);
  if (rv == 0) rv = extproc_server_listen(srv, argv[1], proc);
  if (rv < 0) {
    fprintf(stderr, "cannot serve on %s: %s\n", argv[1], extproc_strerror(rv));
  } else {
    fprintf(stderr, "serving on %s\n", argv[1]);
    if (extproc_server_run(srv) != 0) rv = -1;
  }
  extproc_server_free(srv);
  extproc_processor_free(proc);
  return rv < 0 ? 1 : 0;
}
