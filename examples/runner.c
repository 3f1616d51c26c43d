/* extproc-examples: serves one of the example processors.
 *
 *   extproc-examples --service NAME [--listen ADDR] [--workers N] [--log-level LEVEL]
 *                    [--max-message-bytes N]
 *
 * NAME is a class name of the Python SDK (TrivialExtProcService) or its short name (trivial).
 * ADDR is HOST:PORT, [IPV6]:PORT or unix:PATH; default 0.0.0.0:50051. LEVEL defaults to the
 * LOG_LEVEL environment variable, else info. Stops cleanly on SIGINT or SIGTERM. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "examples.h"
#include "extproc/server.h"

static const example examples[] = {
    {"TrivialExtProcService", "trivial", "copies x-request-id into x-extra-request-id",
     trivial_processor_create},
};
enum { EXAMPLE_COUNT = sizeof(examples) / sizeof(examples[0]) };

static void usage(FILE *out) {
  fprintf(out,
          "usage: extproc-examples --service NAME [--listen ADDR] [--workers N]\n"
          "                        [--log-level debug|info|warn|error] [--max-message-bytes N]\n"
          "  ADDR: HOST:PORT, [IPV6]:PORT or unix:PATH (default 0.0.0.0:50051)\n"
          "services:\n");
  for (int i = 0; i < EXAMPLE_COUNT; i++)
    fprintf(out, "  %-24s %-10s %s\n", examples[i].name, examples[i].short_name,
            examples[i].summary);
}

static const example *find_example(const char *name) {
  for (int i = 0; i < EXAMPLE_COUNT; i++)
    if (strcmp(name, examples[i].name) == 0 || strcmp(name, examples[i].short_name) == 0)
      return &examples[i];
  return NULL;
}

static bool parse_size(const char *s, size_t *out) {
  char *end;
  const unsigned long long v = strtoull(s, &end, 10);
  if (*s == '\0' || *end != '\0' || *s == '-') return false;
  *out = (size_t)v;
  return true;
}

int main(int argc, char **argv) {
  const char *service = NULL, *listen = "0.0.0.0:50051", *level_text = getenv("LOG_LEVEL");
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    size_t n;
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (!val) {
      fprintf(stderr, "extproc-examples: %s needs a value\n", arg);
      return 2;
    }
    i++;
    if (strcmp(arg, "--service") == 0)
      service = val;
    else if (strcmp(arg, "--listen") == 0)
      listen = val;
    else if (strcmp(arg, "--log-level") == 0)
      level_text = val;
    else if (strcmp(arg, "--workers") == 0 && parse_size(val, &n))
      opts.workers = (unsigned)n;
    else if (strcmp(arg, "--max-message-bytes") == 0 && parse_size(val, &n))
      opts.max_message_bytes = n;
    else {
      fprintf(stderr, "extproc-examples: bad option %s %s\n", arg, val);
      usage(stderr);
      return 2;
    }
  }
  extproc_log_level level = EXTPROC_LOG_INFO;
  if (level_text && extproc_log_level_parse(level_text, &level) != 0) {
    fprintf(stderr, "extproc-examples: unknown log level '%s'\n", level_text);
    return 2;
  }
  extproc_log_set_level(level);
  const example *ex = service ? find_example(service) : NULL;
  if (!ex) {
    fprintf(stderr, "extproc-examples: %s\n",
            service ? "unknown service" : "--service is required");
    usage(stderr);
    return 2;
  }

  extproc_processor *proc = ex->create();
  extproc_server *srv = extproc_server_create(&opts);
  if (!proc || !srv) {
    fprintf(stderr, "extproc-examples: cannot create the server (bad options?)\n");
    return 1;
  }
  const int index = extproc_server_listen(srv, listen, proc);
  if (index < 0) {
    fprintf(stderr, "extproc-examples: cannot listen on %s: %s\n", listen, extproc_strerror(index));
    extproc_server_free(srv);
    extproc_processor_free(proc);
    return 1;
  }
  fprintf(stderr, "extproc-examples: serving %s on %s\n", ex->name, listen);
  const int rv = extproc_server_run(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
  return rv == 0 ? 0 : 1;
}
