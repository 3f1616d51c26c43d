/* extproc_main(): a whole program around the server. Options come from options.c's table;
 * this file picks the services to serve and where, then runs the server until a signal. */
#include "extproc/main.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/sized_struct.h"
#include "extproc/server.h"
#include "extproc/version.h"
#include "server/options.h"
#include "server/run_signals.h"
#include "server/server_run.h"

/* One address served; the server takes at most MAX_LISTENERS (transport.h) of them. */
enum { MAX_SERVED = 16, ADDRESS_BYTES = 256 };

typedef struct served {
  const extproc_service *service;
  char address[ADDRESS_BYTES];
} served;

typedef struct plan {
  const char *prog;
  const extproc_service *services; /* the caller's, copied to this library's layout */
  size_t count;
  served served[MAX_SERVED];
  size_t served_count;
} plan;

static const char *env_lookup_process(const char *name) { return getenv(name); }

static const char *program_name(char **argv) {
  const char *name = argv && argv[0] ? argv[0] : "extproc";
  const char *slash = strrchr(name, '/');
  return slash ? slash + 1 : name;
}

/* Copies the caller's array, element by element: its stride is the caller's struct_size. */
static extproc_service *copy_services(const extproc_service *in, size_t count) {
  if (!in || count == 0) return NULL;
  const size_t stride = in[0].struct_size;
  extproc_service *out = calloc(count, sizeof(*out));
  if (!out) return NULL;
  for (size_t i = 0; i < count; i++) {
    const extproc_service *src = (const extproc_service *)((const char *)in + i * stride);
    if (src->struct_size != stride || sized_struct_read(&out[i], sizeof(out[i]), src) != 0 ||
        !out[i].name || !out[i].processor) {
      free(out);
      return NULL;
    }
  }
  return out;
}

static const extproc_service *find_service(const plan *p, const char *name) {
  for (size_t i = 0; i < p->count; i++) {
    const extproc_service *s = &p->services[i];
    if (strcmp(s->name, name) == 0 || (s->alias && strcmp(s->alias, name) == 0)) return s;
  }
  return NULL;
}

static void print_help(FILE *out, const plan *p) {
  fprintf(out,
          "usage: %s [--service SPEC[,SPEC...]]... [OPTION...]\n"
          "Serves Envoy ext_proc processors (gRPC over HTTP/2, cleartext or TLS, plus gRPC\n"
          "health) until SIGINT or SIGTERM; SIGHUP reloads the TLS files.\n"
          "  SPEC: NAME (on its default address, else --listen), NAME:PORT (on 0.0.0.0:PORT)\n"
          "        or NAME@ADDR\n"
          "  ADDR: HOST:PORT, [IPV6]:PORT or unix:PATH\n",
          p->prog);
  options_print_help(out);
  fprintf(out, "services (name, short name, what it does):\n");
  for (size_t i = 0; i < p->count; i++) {
    const extproc_service *s = &p->services[i];
    fprintf(out, "  %-24s %-10s %s\n", s->name, s->alias ? s->alias : "-",
            s->description ? s->description : "");
    if (s->default_address) fprintf(out, "      default address %s\n", s->default_address);
  }
}

static bool add_served(plan *p, const extproc_service *s, const char *address) {
  if (p->served_count == MAX_SERVED) {
    fprintf(stderr, "%s: at most %d services may be served\n", p->prog, MAX_SERVED);
    return false;
  }
  served *out = &p->served[p->served_count++];
  out->service = s;
  snprintf(out->address, sizeof(out->address), "%s", address);
  return true;
}

static bool is_port(const char *text) {
  size_t n = strspn(text, "0123456789");
  return n > 0 && n <= 5 && text[n] == '\0' && atoi(text) <= 65535;
}

/* The address of a bare NAME: --listen if given, else the service's own, else --listen's
 * default. */
static const char *bare_address(const main_settings *st, bool listen_given,
                                const extproc_service *s) {
  return (!listen_given && s->default_address) ? s->default_address : st->listen;
}

/* One SPEC: NAME, NAME:PORT or NAME@ADDR. `spec` is a writable copy. */
static bool add_spec(plan *p, const main_settings *st, bool listen_given, char *spec,
                     const char *where) {
  char *at = strchr(spec, '@'), *colon = strchr(spec, ':');
  char address[ADDRESS_BYTES] = "";
  if (at) {
    *at = '\0';
    snprintf(address, sizeof(address), "%s", at + 1);
  } else if (colon) {
    *colon = '\0';
    if (!is_port(colon + 1)) {
      fprintf(stderr, "%s: %s: '%s' is not a port (allowed: 0 to 65535)\n", p->prog, where,
              colon + 1);
      return false;
    }
    snprintf(address, sizeof(address), "0.0.0.0:%s", colon + 1);
  }
  const extproc_service *s = find_service(p, spec);
  if (!s) {
    fprintf(stderr, "%s: %s: unknown service '%s' (see --help for the list)\n", p->prog, where,
            spec);
    return false;
  }
  if (!address[0]) snprintf(address, sizeof(address), "%s", bare_address(st, listen_given, s));
  if (!address[0]) {
    fprintf(stderr, "%s: %s: empty address for '%s'\n", p->prog, where, spec);
    return false;
  }
  return add_served(p, s, address);
}

static bool plan_from_specs(plan *p, const main_settings *st, bool listen_given,
                            const char *where) {
  for (size_t i = 0; i < st->service_list_count; i++) {
    char *list = strdup(st->service_lists[i]);
    if (!list) return false;
    bool ok = true;
    for (char *save = NULL, *spec = strtok_r(list, ",", &save); spec && ok;
         spec = strtok_r(NULL, ",", &save))
      ok = add_spec(p, st, listen_given, spec, where);
    free(list);
    if (!ok) return false;
  }
  if (p->served_count == 0) {
    fprintf(stderr, "%s: %s names no service\n", p->prog, where);
    return false;
  }
  return true;
}

/* Which services to serve, and where (see extproc_main in main.h). */
static bool make_plan(plan *p, const main_settings *st) {
  size_t listen_index = 0, service_index = 0, n;
  const option_def *table = options_table(&n);
  for (size_t i = 0; i < n; i++) {
    if (strcmp(table[i].name, "listen") == 0) listen_index = i;
    if (strcmp(table[i].name, "service") == 0) service_index = i;
  }
  const bool listen_given = st->given & (1ull << listen_index);
  if (st->given & (1ull << service_index))
    return plan_from_specs(p, st, listen_given,
                           st->services_from_env ? "EXTPROC_SERVICE" : "--service");
  if (p->count == 1)
    return add_served(p, &p->services[0], bare_address(st, listen_given, &p->services[0]));
  for (size_t i = 0; i < p->count; i++)
    if (p->services[i].default_address &&
        !add_served(p, &p->services[i], p->services[i].default_address))
      return false;
  if (p->served_count == 0) {
    fprintf(stderr, "%s: --service (or EXTPROC_SERVICE) is required (see --help)\n", p->prog);
    return false;
  }
  return true;
}

static int serve(const plan *p, const main_settings *st) {
  extproc_server *srv;
  const int created = extproc_server_new(&srv, &st->server);
  if (created != 0) {
    fprintf(stderr, "%s: cannot create the server: %s\n", p->prog, extproc_strerror(created));
    return 1;
  }
  int rv = 0;
  if (st->metrics_listen) {
    const int port = extproc_server_metrics_listen(srv, st->metrics_listen);
    if (port < 0) {
      log_line(EXTPROC_LOG_ERROR, "cannot serve metrics on %s: %s", st->metrics_listen,
               extproc_strerror(port));
      rv = 1;
    } else {
      log_line(EXTPROC_LOG_INFO, "serving metrics on %s (port %d)", st->metrics_listen, port);
    }
  }
  for (size_t i = 0; i < p->served_count && rv == 0; i++) {
    const served *s = &p->served[i];
    const int index = extproc_server_listen(srv, s->address, s->service->processor);
    if (index < 0) {
      log_line(EXTPROC_LOG_ERROR, "cannot serve %s on %s: %s", s->service->name, s->address,
               extproc_strerror(index));
      rv = 1;
    } else {
      log_line(EXTPROC_LOG_INFO, "serving %s on %s", s->service->name, s->address);
    }
  }
  /* Not extproc_server_run(): once the server has stopped, one more signal (an impatient
   * operator, a supervisor repeating itself) must not turn this clean exit into a kill while the
   * rest is freed. */
  if (rv == 0 && server_run_to_exit(srv) != 0) rv = 1;
  extproc_server_free(srv);
  return rv;
}

/* extproc_main with SIGINT, SIGTERM and SIGHUP blocked until the server handles them. */
static int main_blocked(int argc, char **argv, const extproc_service *services, size_t count) {
  plan *p = calloc(1, sizeof(*p));
  if (!p) return 1;
  p->prog = program_name(argv);
  extproc_service *copies = copy_services(services, count);
  p->services = copies;
  p->count = count;
  int rv = 2;
  main_settings st;
  char error[512];
  if (!copies) {
    fprintf(stderr,
            "%s: extproc_main: no services, or one without struct_size, name or "
            "processor\n",
            p->prog);
  } else {
    switch (options_parse(&st, argc, argv, env_lookup_process, error, sizeof(error))) {
    case OPTIONS_HELP:
      print_help(stdout, p);
      rv = 0;
      break;
    case OPTIONS_VERSION: {
      const char *version;
      extproc_version(&version);
      printf("%s (libextproc %s)\n", p->prog, version);
      rv = 0;
      break;
    }
    case OPTIONS_BAD: fprintf(stderr, "%s: %s\n", p->prog, error); break;
    case OPTIONS_RUN:
      extproc_log_set_level(st.log_level);
      extproc_log_set_format(st.log_format);
      if (make_plan(p, &st)) rv = serve(p, &st);
      break;
    }
  }
  free(copies);
  free(p);
  return rv;
}

int extproc_main(int argc, char **argv, const extproc_service *services, size_t count) {
  /* A stop asked for while the program starts (a rolling restart cancelled at once) waits until
   * the server handles it, then drains as any other, instead of killing the process half set up
   * by the signals' default action. Threads started meanwhile inherit the mask. */
  sigset_t old_mask;
  run_signals_mask(SIG_BLOCK, &old_mask);
  const int rv = main_blocked(argc, argv, services, count);
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  return rv;
}
