/* The option table and what it drives: flags, EXTPROC_* environment variables, --help. */
#include "server/options.h"

#include <ctype.h>
#include <stdarg.h>
#include <string.h>

#define SERVER(field)                                                                              \
  { offsetof(main_settings, server.field), sizeof(((extproc_server_options *)0)->field) }
#define SETTING(field)                                                                             \
  { offsetof(main_settings, field), sizeof(((main_settings *)0)->field) }

/* Every option of extproc_main(), in --help order.
 *
 * Adding an option is one row here: its flag name (the environment variable follows from it),
 * how its value is written, the allowed range in the stored unit (count, bytes, milliseconds),
 * where it goes (SERVER(field of extproc_server_options) or SETTING(field of main_settings)),
 * and one sentence of help. Its default is read from extproc_server_options_init(). Then add
 * its row to the table in docs/configuration.md and a paragraph to docs/man/extproc-examples.1:
 * tests/layout/test_configuration_doc.py fails until the doc lists exactly these options. */
static const option_def table[] = {
    {.name = "service",
     .type = OPT_SERVICES,
     .value_name = "SPEC[,SPEC...]",
     .help = "Services to serve, each on its own address (see SPEC); repeatable."},
    {.name = "listen",
     .type = OPT_TEXT,
     .value_name = "ADDR",
     .to = SETTING(listen),
     .help = "Address of services named without one: HOST:PORT, [IPV6]:PORT or unix:PATH."},
    {.name = "metrics-listen",
     .type = OPT_TEXT,
     .value_name = "ADDR",
     .to = SETTING(metrics_listen),
     .help = "Address of the Prometheus metrics endpoint (GET /metrics): HOST:PORT or "
             "[IPV6]:PORT; unset serves none."},
    {.name = "workers",
     .type = OPT_COUNT,
     .value_name = "N",
     .max = 1024,
     .to = SERVER(workers),
     .help = "Event-loop threads; 0 means one per online CPU."},
    {.name = "max-message-bytes",
     .type = OPT_BYTES,
     .value_name = "BYTES",
     .min = 1,
     .max = 1ull << 31,
     .to = SERVER(max_message_bytes),
     .help = "Largest gRPC message accepted; a larger one ends its stream with "
             "RESOURCE_EXHAUSTED."},
    {.name = "max-concurrent-streams",
     .type = OPT_COUNT,
     .value_name = "N",
     .min = 1,
     .max = UINT32_MAX,
     .to = SERVER(max_concurrent_streams),
     .help = "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised on each connection."},
    {.name = "initial-window-bytes",
     .type = OPT_BYTES,
     .value_name = "BYTES",
     .min = 1,
     .max = 0x7fffffff,
     .to = SERVER(initial_window_bytes),
     .help = "HTTP/2 initial receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE)."},
    {.name = "grace-period",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 3600 * 1000,
     .to = SERVER(shutdown_grace_ms),
     .help = "After SIGINT or SIGTERM, how long open streams may go on; 0 closes at once."},
    {.name = "max-connections",
     .type = OPT_COUNT,
     .value_name = "N",
     .max = UINT32_MAX,
     .to = SERVER(max_connections),
     .help = "Connections open at once, over all workers; at the limit accepting pauses. 0 "
             "derives it from the open-file limit (ulimit -n)."},
    {.name = "max-open-streams",
     .type = OPT_COUNT,
     .value_name = "N",
     .max = UINT32_MAX,
     .to = SERVER(max_open_streams),
     .help = "gRPC streams open at once over all connections; past it new streams are refused "
             "(REFUSED_STREAM)."},
    {.name = "max-buffered-bytes",
     .type = OPT_BYTES,
     .value_name = "BYTES",
     .max = 1ull << 40,
     .to = SERVER(max_buffered_bytes),
     .help = "Bytes of incomplete messages buffered over all connections; past it input waits "
             "(flow control). 0 means 256MiB, or max-message-bytes if larger."},
    {.name = "handshake-timeout",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 86400 * 1000,
     .to = SERVER(handshake_timeout_ms),
     .zero_is_off = true,
     .help = "Time a new connection has to send the HTTP/2 preface and SETTINGS (after the TLS "
             "handshake, on TLS); 0 disables."},
    {.name = "idle-timeout",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 86400 * 1000,
     .to = SERVER(idle_timeout_ms),
     .zero_is_off = true,
     .help = "Time a connection may have no open stream before GOAWAY and close; 0 disables."},
    {.name = "keepalive-interval",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 86400 * 1000,
     .to = SERVER(keepalive_interval_ms),
     .zero_is_off = true,
     .help = "Time without input after which an HTTP/2 PING is sent; 0 disables PINGs."},
    {.name = "keepalive-timeout",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 86400 * 1000,
     .to = SERVER(keepalive_timeout_ms),
     .zero_is_off = true,
     .help = "Time a PING's acknowledgement may take before the connection is closed; 0 waits "
             "forever."},
    {.name = "blocking-threads",
     .type = OPT_COUNT,
     .value_name = "N",
     .max = 1024,
     .to = SERVER(blocking_threads),
     .help = "Threads of the pool that runs blocking processors' callbacks (started only if a "
             "served processor is blocking)."},
    {.name = "blocking-queue",
     .type = OPT_COUNT,
     .value_name = "N",
     .max = 1u << 20,
     .to = SERVER(blocking_queue),
     .help = "Blocking callbacks that may wait for a pool thread before waits are counted; 0 "
             "means 64 per thread."},
    {.name = "drain-delay",
     .type = OPT_DURATION,
     .value_name = "DURATION",
     .max = 3600 * 1000,
     .to = SERVER(drain_delay_ms),
     .help = "After SIGINT or SIGTERM, how long health says NOT_SERVING while everything is "
             "still served, before the grace period; 0 skips the drain."},
    {.name = "health-listen",
     .type = OPT_TEXT,
     .value_name = "ADDR",
     .to = SERVER(health_listen),
     .help = "An address serving only grpc.health.v1.Health (Check and Watch), besides every "
             "service address; unset serves none."},
    {.name = "tls-cert",
     .type = OPT_TEXT,
     .value_name = "FILE",
     .to = SERVER(tls_cert_file),
     .help = "PEM certificate (chain) of the server; with --tls-key every TCP listener speaks "
             "TLS (ALPN h2); reloaded on SIGHUP and when the files change. Unset: cleartext."},
    {.name = "tls-key",
     .type = OPT_TEXT,
     .value_name = "FILE",
     .to = SERVER(tls_key_file),
     .help = "PEM private key of --tls-cert; give both or neither."},
    {.name = "tls-client-ca",
     .type = OPT_TEXT,
     .value_name = "FILE",
     .to = SERVER(tls_client_ca_file),
     .help = "PEM CA certificates for mutual TLS: clients without a certificate signed by one "
             "are refused in the handshake. Unset: no client certificate asked for."},
    {.name = "unix-socket-mode",
     .type = OPT_OCTAL,
     .value_name = "MODE",
     .max = 0777,
     .to = SERVER(unix_socket_mode),
     .help = "Permission bits of unix socket files, in octal (e.g. 0660; connecting needs "
             "write permission); 0 leaves 0777 less the umask."},
    {.name = "log-level",
     .type = OPT_LOG_LEVEL,
     .value_name = "LEVEL",
     .to = SETTING(log_level),
     .legacy_env = "LOG_LEVEL",
     .help = "Lowest level logged (LOG_LEVEL is read too)."},
    {.name = "log-format",
     .type = OPT_LOG_FORMAT,
     .value_name = "FORMAT",
     .to = SETTING(log_format),
     .help = "Log lines as text or as one JSON object each."},
    {.name = "help", .type = OPT_ACTION, .help = "Print this help and exit."},
    {.name = "version", .type = OPT_ACTION, .help = "Print the version and exit."},
};
enum { OPTION_COUNT = sizeof(table) / sizeof(table[0]) };
_Static_assert(OPTION_COUNT <= 64, "main_settings.given has one bit per option");

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};
static const char *const format_names[] = {"text", "json"};

const option_def *options_table(size_t *count) {
  *count = OPTION_COUNT;
  return table;
}

void options_env_name(const option_def *o, char *out, size_t cap) {
  size_t n = (size_t)snprintf(out, cap, "EXTPROC_");
  for (const char *p = o->name; *p && n + 1 < cap; p++)
    out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  out[n < cap ? n : cap - 1] = '\0';
}

/* ---- Values: formatting ----------------------------------------------------------------- */

static void format_number(const option_def *o, uint64_t v, char *out, size_t cap) {
  if (o->type == OPT_BYTES) {
    static const struct {
      const char *suffix;
      unsigned shift;
    } units[] = {{"GiB", 30}, {"MiB", 20}, {"KiB", 10}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
      const uint64_t unit = 1ull << units[i].shift;
      if (v >= unit && v % unit == 0) {
        snprintf(out, cap, "%llu%s", (unsigned long long)(v / unit), units[i].suffix);
        return;
      }
    }
    snprintf(out, cap, "%lluB", (unsigned long long)v);
  } else if (o->type == OPT_OCTAL) {
    snprintf(out, cap, v ? "0%llo" : "0", (unsigned long long)v);
  } else if (o->type == OPT_DURATION) {
    if (v % 1000 == 0)
      snprintf(out, cap, "%llus", (unsigned long long)(v / 1000));
    else
      snprintf(out, cap, "%llums", (unsigned long long)v);
  } else {
    snprintf(out, cap, "%llu", (unsigned long long)v);
  }
}

static uint64_t load_number(const main_settings *s, option_target to) {
  const char *p = (const char *)s + to.offset;
  switch (to.size) {
  case 1: return *(const uint8_t *)p;
  case 2: return *(const uint16_t *)p;
  case 4: return *(const uint32_t *)p;
  default: return *(const uint64_t *)p;
  }
}

static void store_number(main_settings *s, option_target to, uint64_t v) {
  char *p = (char *)s + to.offset;
  switch (to.size) {
  case 1: *(uint8_t *)p = (uint8_t)v; break;
  case 2: *(uint16_t *)p = (uint16_t)v; break;
  case 4: *(uint32_t *)p = (uint32_t)v; break;
  default: *(uint64_t *)p = v; break;
  }
}

static void set_defaults(main_settings *s) {
  memset(s, 0, sizeof(*s));
  extproc_server_options_init(&s->server);
  s->listen = "0.0.0.0:50051";
  s->log_level = EXTPROC_LOG_INFO;
  s->log_format = EXTPROC_LOG_FORMAT_TEXT;
}

static void value_text(const option_def *o, const main_settings *s, char *out, size_t cap) {
  const char *p = (const char *)s + o->to.offset;
  switch (o->type) {
  case OPT_COUNT:
  case OPT_BYTES:
  case OPT_OCTAL:
  case OPT_DURATION: format_number(o, load_number(s, o->to), out, cap); break;
  case OPT_TEXT: {
    const char *text = *(const char *const *)p;
    snprintf(out, cap, "%s", text ? text : "none");
    break;
  }
  case OPT_LOG_LEVEL: snprintf(out, cap, "%s", level_names[*(const extproc_log_level *)p]); break;
  case OPT_LOG_FORMAT:
    snprintf(out, cap, "%s", format_names[*(const extproc_log_format *)p]);
    break;
  case OPT_SERVICES:
  case OPT_ACTION: snprintf(out, cap, "none"); break;
  }
}

void options_default_text(const option_def *o, char *out, size_t cap) {
  main_settings defaults;
  set_defaults(&defaults);
  value_text(o, &defaults, out, cap);
}

/* The allowed values, for --help and error messages; "" when anything goes. */
static void allowed_text(const option_def *o, char *out, size_t cap) {
  char lo[32], hi[32];
  switch (o->type) {
  case OPT_COUNT:
  case OPT_BYTES:
  case OPT_OCTAL:
  case OPT_DURATION:
    format_number(o, o->min, lo, sizeof(lo));
    format_number(o, o->max, hi, sizeof(hi));
    snprintf(out, cap, "%s to %s", lo, hi);
    break;
  case OPT_LOG_LEVEL: snprintf(out, cap, "debug, info, warn, error, off"); break;
  case OPT_LOG_FORMAT: snprintf(out, cap, "text, json"); break;
  default: out[0] = '\0'; break;
  }
}

/* ---- Values: parsing -------------------------------------------------------------------- */

typedef struct parse_error {
  char *text;
  size_t cap;
} parse_error;

static void fail(parse_error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(parse_error *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->text, e->cap, fmt, ap);
  va_end(ap);
}

/* Digits, optionally ".digits" (fractions only where `fraction` is allowed); the rest is the
 * unit. Returns false for no digits or a value past 2^53 (where doubles stop being exact). */
static bool split_number(const char *text, bool fraction, double *value, const char **unit) {
  const char *p = text;
  double v = 0;
  while (isdigit((unsigned char)*p))
    v = v * 10 + (*p++ - '0');
  if (p == text || v > 9007199254740992.0) return false;
  if (fraction && *p == '.' && isdigit((unsigned char)p[1])) {
    double scale = 0.1;
    for (p++; isdigit((unsigned char)*p); p++, scale /= 10)
      v += (*p - '0') * scale;
  }
  *value = v;
  *unit = p;
  return true;
}

/* A number with its unit, in the stored unit (count, bytes, ms). */
static bool parse_number(const option_def *o, const char *where, const char *text, uint64_t *out,
                         parse_error *e) {
  static const struct {
    option_type type;
    const char *suffix;
    double factor;
  } units[] = {{OPT_BYTES, "", 1},          {OPT_BYTES, "B", 1},
               {OPT_BYTES, "KiB", 1 << 10}, {OPT_BYTES, "MiB", 1 << 20},
               {OPT_BYTES, "GiB", 1 << 30}, {OPT_DURATION, "", 1000},
               {OPT_DURATION, "ms", 1},     {OPT_DURATION, "s", 1000},
               {OPT_DURATION, "m", 60000},  {OPT_COUNT, "", 1}};
  static const char *const unit_lists[] = {
      [OPT_COUNT] = "none", [OPT_BYTES] = "B, KiB, MiB, GiB", [OPT_DURATION] = "ms, s, m"};
  char allowed[96];
  allowed_text(o, allowed, sizeof(allowed));
  double v;
  const char *unit;
  if (!split_number(text, o->type == OPT_DURATION, &v, &unit) || *unit == '.') {
    fail(e, "%s: '%s' is not a %s (allowed: %s)", where, text,
         o->type == OPT_DURATION ? "duration" : "whole number", allowed);
    return false;
  }
  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (units[i].type != o->type || strcmp(units[i].suffix, unit) != 0) continue;
    const double scaled = v * units[i].factor + 0.5; /* durations round to the millisecond */
    if (scaled < (double)o->min || scaled >= (double)o->max + 1) {
      fail(e, "%s: %s is out of range (allowed: %s)", where, text, allowed);
      return false;
    }
    *out = (uint64_t)scaled;
    return true;
  }
  fail(e, "%s: unknown unit '%s' in '%s' (units: %s; allowed: %s)", where, unit, text,
       unit_lists[o->type], allowed);
  return false;
}

/* Octal digits only (a leading 0 is allowed, as chmod writes modes), within the option's range. */
static bool parse_octal(const option_def *o, const char *where, const char *text, uint64_t *out,
                        parse_error *e) {
  char allowed[96];
  allowed_text(o, allowed, sizeof(allowed));
  uint64_t v = 0;
  const char *p = text;
  for (; *p >= '0' && *p <= '7' && v <= o->max; p++)
    v = v * 8 + (uint64_t)(*p - '0');
  if (p == text || *p) {
    fail(e, "%s: '%s' is not an octal number (allowed: %s)", where, text, allowed);
    return false;
  }
  if (v < o->min || v > o->max) {
    fail(e, "%s: %s is out of range (allowed: %s)", where, text, allowed);
    return false;
  }
  *out = v;
  return true;
}

/* One value for option `o`; `where` names its flag or variable in errors. */
static bool apply(main_settings *s, const option_def *o, const char *where, const char *text,
                  parse_error *e) {
  char *p = (char *)s + o->to.offset;
  uint64_t v;
  switch (o->type) {
  case OPT_COUNT:
  case OPT_BYTES:
  case OPT_DURATION:
    if (!parse_number(o, where, text, &v, e)) return false;
    /* In the server's options 0 means "the default", so "off" has a value of its own. */
    if (o->zero_is_off && v == 0) v = EXTPROC_SERVER_TIMEOUT_OFF;
    store_number(s, o->to, v);
    return true;
  case OPT_OCTAL:
    if (!parse_octal(o, where, text, &v, e)) return false;
    store_number(s, o->to, v);
    return true;
  case OPT_TEXT:
    if (!*text) {
      fail(e, "%s: must not be empty", where);
      return false;
    }
    *(const char **)p = text;
    return true;
  case OPT_SERVICES:
    if (s->service_list_count == MAX_SERVICE_LISTS) {
      fail(e, "%s: given more than %d times", where, MAX_SERVICE_LISTS);
      return false;
    }
    s->service_lists[s->service_list_count++] = text;
    return true;
  case OPT_LOG_LEVEL:
    if (extproc_log_level_parse(text, (extproc_log_level *)p) == 0) return true;
    fail(e, "%s: unknown level '%s' (allowed: debug, info, warn, error, off)", where, text);
    return false;
  case OPT_LOG_FORMAT:
    if (extproc_log_format_parse(text, (extproc_log_format *)p) == 0) return true;
    fail(e, "%s: unknown format '%s' (allowed: text, json)", where, text);
    return false;
  case OPT_ACTION: break;
  }
  return false;
}

static const option_def *find_flag(const char *name, size_t len) {
  for (size_t i = 0; i < OPTION_COUNT; i++)
    if (strlen(table[i].name) == len && strncmp(table[i].name, name, len) == 0) return &table[i];
  return NULL;
}

static options_outcome parse_flags(main_settings *s, int argc, char *const *argv, parse_error *e) {
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "-h") == 0) return OPTIONS_HELP;
    if (strncmp(arg, "--", 2) != 0) {
      fail(e, "unexpected argument '%s' (options start with --; see --help)", arg);
      return OPTIONS_BAD;
    }
    const char *name = arg + 2, *eq = strchr(name, '=');
    const option_def *o = find_flag(name, eq ? (size_t)(eq - name) : strlen(name));
    if (!o) {
      fail(e, "unknown option --%.*s (see --help)", (int)(eq ? eq - name : (int)strlen(name)),
           name);
      return OPTIONS_BAD;
    }
    char where[80];
    snprintf(where, sizeof(where), "--%s", o->name);
    if (o->type == OPT_ACTION) {
      if (eq) {
        fail(e, "%s takes no value", where);
        return OPTIONS_BAD;
      }
      return strcmp(o->name, "help") == 0 ? OPTIONS_HELP : OPTIONS_VERSION;
    }
    const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
    if (!value) {
      fail(e, "%s needs a value (see --help)", where);
      return OPTIONS_BAD;
    }
    if (!apply(s, o, where, value, e)) return OPTIONS_BAD;
    s->given |= 1ull << (o - table);
  }
  return OPTIONS_RUN;
}

/* Options no flag gave: from EXTPROC_NAME, else the legacy variable, if set. */
static bool parse_env(main_settings *s, env_lookup env, parse_error *e) {
  for (size_t i = 0; env && i < OPTION_COUNT; i++) {
    const option_def *o = &table[i];
    if (o->type == OPT_ACTION || (s->given & (1ull << i))) continue;
    char name[64];
    options_env_name(o, name, sizeof(name));
    const char *value = env(name);
    if (!value && o->legacy_env) {
      value = env(o->legacy_env);
      snprintf(name, sizeof(name), "%s", o->legacy_env);
    }
    if (!value) continue;
    if (!apply(s, o, name, value, e)) return false;
    s->given |= 1ull << i;
    if (o->type == OPT_SERVICES) s->services_from_env = true;
  }
  return true;
}

/* Values each within its range but refused together by extproc_server_new(): named here, so the
 * program stops with the options' names (exit code 2), not the server's bare "invalid
 * argument". */
static bool check_together(const main_settings *s, parse_error *e) {
  const extproc_server_options *o = &s->server;
  if (o->max_buffered_bytes != 0 && o->max_buffered_bytes < o->max_message_bytes) {
    fail(e,
         "--max-buffered-bytes (EXTPROC_MAX_BUFFERED_BYTES) of %zu bytes is below "
         "--max-message-bytes (EXTPROC_MAX_MESSAGE_BYTES) of %zu bytes: it must hold one whole "
         "message (0 makes it the larger of 256MiB and the message limit)",
         o->max_buffered_bytes, o->max_message_bytes);
    return false;
  }
  return true;
}

options_outcome options_parse(main_settings *s, int argc, char *const *argv, env_lookup env,
                              char *error, size_t error_cap) {
  parse_error e = {error, error_cap};
  if (error_cap) error[0] = '\0';
  set_defaults(s);
  const options_outcome outcome = parse_flags(s, argc, argv, &e);
  if (outcome != OPTIONS_RUN) return outcome;
  return parse_env(s, env, &e) && check_together(s, &e) ? OPTIONS_RUN : OPTIONS_BAD;
}

/* ---- --help ----------------------------------------------------------------------------- */

void options_print_help(FILE *out) {
  fprintf(out, "options (each also from its environment variable; a flag wins):\n");
  for (size_t i = 0; i < OPTION_COUNT; i++) {
    const option_def *o = &table[i];
    if (o->type == OPT_ACTION) {
      fprintf(out, "  --%s\n      %s\n", o->name, o->help);
      continue;
    }
    char env[64], def[64], allowed[96];
    options_env_name(o, env, sizeof(env));
    options_default_text(o, def, sizeof(def));
    allowed_text(o, allowed, sizeof(allowed));
    fprintf(out, "  --%s %s\n      env %s, default %s%s%s\n      %s\n", o->name, o->value_name, env,
            def, allowed[0] ? ", allowed " : "", allowed, o->help);
  }
  fprintf(out, "  BYTES takes a B, KiB, MiB or GiB suffix; DURATION is in seconds (fractions\n"
               "  allowed) or takes an ms, s or m suffix.\n");
}
