/* extproc-examples: serves example processors, each on its own address, from one process.
 *
 *   extproc-examples --service SPEC[,SPEC...] [--service SPEC...] [--listen ADDR]
 *                    [--grace-period SECONDS] [--log-level LEVEL] [--workers N]
 *                    [--max-message-bytes N] [--max-connections N]
 *                    [--max-buffered-bytes N] [--handshake-timeout SECONDS]
 *                    [--idle-timeout SECONDS] [--keepalive-interval SECONDS]
 *                    [--keepalive-timeout SECONDS]
 *
 * SPEC is NAME, NAME:PORT or NAME@ADDR. NAME is a class name of the Python SDK
 * (TrivialExtProcService) or its short name (trivial). NAME:PORT listens on 0.0.0.0:PORT;
 * NAME@ADDR on ADDR (HOST:PORT, [IPV6]:PORT or unix:PATH); a bare NAME on --listen (default
 * 0.0.0.0:50051). LEVEL defaults to the LOG_LEVEL environment variable, else info. The chain
 * header follows REVEAL_EXTPROC_CHAIN and EXTPROCS_APPLIED_HEADER. Stops on SIGINT or SIGTERM,
 * letting open streams finish for the grace period (default 5 s). A timeout of 0 disables it;
 * options not given keep the library's defaults (see extproc/server.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "examples.h"
#include "extproc/server.h"

enum { MAX_SERVICES = 16 };

typedef struct service {
  const example *ex;
  char address[256];
  extproc_processor *proc;
} service;

static void usage(FILE *out) {
  fprintf(out,
          "usage: extproc-examples --service SPEC[,SPEC...] [--listen ADDR]\n"
          "                        [--grace-period SECONDS] [--log-level debug|info|warn|error]\n"
          "                        [--workers N] [--max-message-bytes N] [--max-connections N]\n"
          "                        [--max-buffered-bytes N] [--handshake-timeout SECONDS]\n"
          "                        [--idle-timeout SECONDS] [--keepalive-interval SECONDS]\n"
          "                        [--keepalive-timeout SECONDS]   (a timeout of 0 disables it)\n"
          "  SPEC: NAME (served on --listen), NAME:PORT (on 0.0.0.0:PORT) or NAME@ADDR\n"
          "  ADDR: HOST:PORT, [IPV6]:PORT or unix:PATH (default 0.0.0.0:50051)\n"
          "  e.g.  --service trivial:50051,timer:50052,echo@unix:/tmp/echo.sock\n"
          "services (class name, short name):\n");
  for (size_t i = 0; i < example_count; i++)
    fprintf(out, "  %-24s %-10s %s\n", examples[i].name, examples[i].short_name,
            examples[i].summary);
}

static bool parse_number(const char *s, double *out) {
  char *end;
  *out = strtod(s, &end);
  return *s && *end == '\0' && *out >= 0;
}

/* A timeout in seconds as the server's milliseconds; 0 means off. */
static uint32_t timeout_ms(double seconds) {
  if (seconds == 0) return EXTPROC_SERVER_TIMEOUT_OFF;
  return seconds < 0.001 ? 1 : (uint32_t)(seconds * 1000 + 0.5);
}

/* Adds each SPEC of a comma-separated list. Bare names get their address later. */
static bool add_services(char *list, service *services, size_t *count) {
  for (char *save = NULL, *spec = strtok_r(list, ",", &save); spec;
       spec = strtok_r(NULL, ",", &save)) {
    if (*count == MAX_SERVICES) {
      fprintf(stderr, "extproc-examples: at most %d services\n", MAX_SERVICES);
      return false;
    }
    service *s = &services[(*count)++];
    char *at = strchr(spec, '@'), *colon = strchr(spec, ':');
    if (at) {
      *at = '\0';
      snprintf(s->address, sizeof(s->address), "%s", at + 1);
    } else if (colon) {
      *colon = '\0';
      snprintf(s->address, sizeof(s->address), "0.0.0.0:%s", colon + 1);
    }
    s->ex = example_find(spec);
    if (!s->ex) {
      fprintf(stderr, "extproc-examples: unknown service '%s'\n", spec);
      return false;
    }
  }
  return true;
}

static void free_services(service *services, size_t count) {
  for (size_t i = 0; i < count; i++)
    extproc_processor_free(services[i].proc);
}

int main(int argc, char **argv) {
  const char *listen = "0.0.0.0:50051", *level_text = getenv("LOG_LEVEL");
  service services[MAX_SERVICES] = {0};
  size_t count = 0;
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "extproc-examples: %s needs a value\n", arg);
      return 2;
    }
    char *val = argv[++i];
    double n;
    if (strcmp(arg, "--service") == 0) {
      if (!add_services(val, services, &count)) return 2;
    } else if (strcmp(arg, "--listen") == 0) {
      listen = val;
    } else if (strcmp(arg, "--log-level") == 0) {
      level_text = val;
    } else if (strcmp(arg, "--grace-period") == 0 && parse_number(val, &n) && n <= 3600) {
      opts.shutdown_grace_ms = (uint32_t)(n * 1000);
    } else if (strcmp(arg, "--workers") == 0 && parse_number(val, &n) && n <= 1024) {
      opts.workers = (unsigned)n;
    } else if (strcmp(arg, "--max-message-bytes") == 0 && parse_number(val, &n) && n >= 1) {
      opts.max_message_bytes = (size_t)n;
    } else if (strcmp(arg, "--max-connections") == 0 && parse_number(val, &n) && n >= 1 &&
               n <= 1e9) {
      opts.max_connections = (unsigned)n;
    } else if (strcmp(arg, "--max-buffered-bytes") == 0 && parse_number(val, &n) && n >= 1) {
      opts.max_buffered_bytes = (size_t)n;
    } else if (strcmp(arg, "--handshake-timeout") == 0 && parse_number(val, &n) && n <= 86400) {
      opts.handshake_timeout_ms = timeout_ms(n);
    } else if (strcmp(arg, "--idle-timeout") == 0 && parse_number(val, &n) && n <= 86400) {
      opts.idle_timeout_ms = timeout_ms(n);
    } else if (strcmp(arg, "--keepalive-interval") == 0 && parse_number(val, &n) && n <= 86400) {
      opts.keepalive_interval_ms = timeout_ms(n);
    } else if (strcmp(arg, "--keepalive-timeout") == 0 && parse_number(val, &n) && n <= 86400) {
      opts.keepalive_timeout_ms = timeout_ms(n);
    } else {
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
  if (count == 0) {
    fprintf(stderr, "extproc-examples: --service is required\n");
    usage(stderr);
    return 2;
  }

  extproc_server *srv;
  const int created = extproc_server_new(&srv, &opts);
  if (created != 0) {
    fprintf(stderr, "extproc-examples: cannot create the server: %s\n", extproc_strerror(created));
    return 1;
  }
  int rv = 0;
  for (size_t i = 0; i < count && rv == 0; i++) {
    service *s = &services[i];
    if (!s->address[0]) snprintf(s->address, sizeof(s->address), "%s", listen);
    s->proc = example_new(s->ex);
    const int index = s->proc ? extproc_server_listen(srv, s->address, s->proc) : EXTPROC_ENOMEM;
    if (index < 0) {
      fprintf(stderr, "extproc-examples: cannot serve %s on %s: %s\n", s->ex->name, s->address,
              extproc_strerror(index));
      rv = 1;
      break;
    }
    fprintf(stderr, "extproc-examples: serving %s on %s\n", s->ex->name, s->address);
  }
  if (rv == 0 && extproc_server_run(srv) != 0) rv = 1;
  extproc_server_free(srv);
  free_services(services, count);
  return rv;
}
