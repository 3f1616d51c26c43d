/* EXTPROC_ACCESS_LOG_* settings: parsing, defaults and ranges. */
#include "settings.h"

#include <ctype.h>
#include <errno.h>
#include <extproc/extproc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KIB ((uint64_t)1 << 10)
#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

/* Defaults and ranges; the README's table says the same. */
#define DEFAULT_MAX_BYTES (100 * MIB)
#define DEFAULT_KEEP 5
#define MAX_KEEP 1000
#define DEFAULT_HEADERS "user-agent,content-type"
/* Credentials and session tokens: what a log must never hold. */
#define DEFAULT_REDACT_HEADERS "authorization,proxy-authorization,cookie,set-cookie,x-api-key"
#define DEFAULT_REDACT_FIELDS "password,secret,token"
/* Bodies go into the line itself; beyond this a line is no longer a log line. */
#define MAX_BODY_CAP MIB
#define DEFAULT_QUEUE_LINES 10000
#define MAX_QUEUE_LINES 1000000
#define DEFAULT_QUEUE_BYTES (64 * MIB)
#define MIN_QUEUE_BYTES (64 * KIB)
#define MAX_QUEUE_BYTES GIB

static bool bad(const char *name, const char *value, const char *why) {
  extproc_log(NULL, EXTPROC_LOG_ERROR, "access-log: %s=\"%s\": %s", name, value, why);
  return false;
}

/* A byte count: digits, then optionally B, KiB, MiB or GiB. */
static bool parse_bytes(const char *name, uint64_t lo, uint64_t hi, uint64_t *out) {
  const char *v = getenv(name);
  if (!v || !*v) return true;
  static const struct {
    const char *suffix;
    uint64_t unit;
  } units[] = {{"", 1}, {"B", 1}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB}};
  char *end;
  errno = 0;
  unsigned long long n = isdigit((unsigned char)*v) ? strtoull(v, &end, 10) : 0;
  if (!isdigit((unsigned char)*v) || errno) return bad(name, v, "not a byte count");
  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcmp(end, units[i].suffix) != 0) continue;
    if (n > hi / units[i].unit || n * units[i].unit < lo) return bad(name, v, "out of range");
    *out = n * units[i].unit;
    return true;
  }
  return bad(name, v, "unknown unit (use B, KiB, MiB or GiB)");
}

static bool parse_count(const char *name, uint64_t lo, uint64_t hi, uint64_t *out) {
  const char *v = getenv(name);
  if (!v || !*v) return true;
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (!isdigit((unsigned char)*v) || *end || errno) return bad(name, v, "not a number");
  if (n < lo || n > hi) return bad(name, v, "out of range");
  *out = n;
  return true;
}

/* RFC 9110 token characters: what a header name is made of. */
static bool is_token(const char *s) {
  if (!*s) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s)) return false;
  return true;
}

static void names_free(al_names *l) {
  for (size_t i = 0; i < l->count; i++)
    free(l->names[i]);
  free(l->names);
  *l = (al_names){0};
}

static bool names_add(al_names *l, const char *start, size_t len) {
  char **names = realloc(l->names, (l->count + 1) * sizeof(char *));
  if (!names) return false;
  l->names = names;
  char *copy = strndup(start, len);
  if (!copy) return false;
  l->names[l->count++] = copy;
  return true;
}

/* A comma-separated list; spaces around names are ignored, empty entries skipped. Header
 * names must be tokens and are kept lower-case, as Envoy sends them. Unset: `dflt`; set to
 * "" : empty. */
static bool parse_names(const char *name, const char *dflt, bool headers, al_names *out) {
  const char *v = getenv(name);
  if (!v) v = dflt;
  if (strcmp(v, "*") == 0) {
    out->all = true;
    return true;
  }
  for (const char *p = v; *p;) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    const char *a = p, *b = end;
    while (a < b && isspace((unsigned char)*a))
      a++;
    while (b > a && isspace((unsigned char)b[-1]))
      b--;
    p = *end ? end + 1 : end;
    if (a == b) continue;
    if (!names_add(out, a, (size_t)(b - a))) return bad(name, v, "out of memory");
    char *added = out->names[out->count - 1];
    if (!headers) continue;
    for (char *c = added; *c; c++)
      *c = (char)tolower((unsigned char)*c);
    if (!is_token(added)) return bad(name, v, "not a list of header names");
  }
  return true;
}

int al_settings_read(al_settings *s) {
  *s = (al_settings){.max_bytes = DEFAULT_MAX_BYTES, .keep = DEFAULT_KEEP};
  uint64_t keep = DEFAULT_KEEP, cap = 0, lines = DEFAULT_QUEUE_LINES, qbytes = DEFAULT_QUEUE_BYTES;
  const char *path = getenv("EXTPROC_ACCESS_LOG_PATH");
  s->path = strdup(path && *path ? path : "-");
  bool ok =
      s->path && parse_bytes("EXTPROC_ACCESS_LOG_MAX_BYTES", 0, UINT64_MAX, &s->max_bytes) &&
      parse_count("EXTPROC_ACCESS_LOG_KEEP", 1, MAX_KEEP, &keep) &&
      parse_names("EXTPROC_ACCESS_LOG_HEADERS", DEFAULT_HEADERS, true, &s->headers) &&
      parse_names("EXTPROC_ACCESS_LOG_REDACT_HEADERS", DEFAULT_REDACT_HEADERS, true,
                  &s->redact_headers) &&
      parse_names("EXTPROC_ACCESS_LOG_REDACT_FIELDS", DEFAULT_REDACT_FIELDS, false,
                  &s->redact_fields) &&
      parse_bytes("EXTPROC_ACCESS_LOG_BODY_CAP", 0, MAX_BODY_CAP, &cap) &&
      parse_count("EXTPROC_ACCESS_LOG_QUEUE", 1, MAX_QUEUE_LINES, &lines) &&
      parse_bytes("EXTPROC_ACCESS_LOG_QUEUE_BYTES", MIN_QUEUE_BYTES, MAX_QUEUE_BYTES, &qbytes);
  if (!ok) {
    al_settings_free(s);
    return -1;
  }
  s->keep = (unsigned)keep;
  s->body_cap = (size_t)cap;
  s->queue_lines = (size_t)lines;
  s->queue_bytes = (size_t)qbytes;
  return 0;
}

void al_settings_free(al_settings *s) {
  free(s->path);
  names_free(&s->headers);
  names_free(&s->redact_headers);
  names_free(&s->redact_fields);
  *s = (al_settings){0};
}

bool al_names_has(const al_names *list, const char *name) {
  if (list->all) return true;
  for (size_t i = 0; i < list->count; i++)
    if (strcasecmp(list->names[i], name) == 0) return true;
  return false;
}
