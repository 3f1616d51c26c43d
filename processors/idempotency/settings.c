/* EXTPROC_IDEMPOTENCY_* settings, read once when the processor is made. Durations are whole
 * seconds, or take a unit: ms, s, m, h (as the runner's own options, plus hours). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Defaults. A day for stored responses, as the draft's examples and common practice (the
 * draft leaves the expiry to the server); a minute for a claim, longer than any upstream
 * should take behind Envoy's default 15 s route timeout; 100 ms per Redis round trip, within
 * Envoy's default 200 ms message_timeout. */
enum {
  DEFAULT_PORT = 6379,
  DEFAULT_TIMEOUT_MS = 100,
  MAX_TIMEOUT_MS = 60 * 1000,
};
#define DEFAULT_TTL_MS (24ULL * 3600 * 1000)
#define DEFAULT_IN_FLIGHT_TTL_MS (60ULL * 1000)
#define MAX_TTL_MS (365ULL * 24 * 3600 * 1000) /* a year: anything longer is a typo */

static int bad(const char *name, const char *value, const char *why) {
  extproc_log(NULL, EXTPROC_LOG_ERROR, "%s=%s: %s", name, value, why);
  return -1;
}

/* "250ms", "30s", "5m", "24h", or "30" (seconds). Returns 0 and the milliseconds, or -1. */
static int parse_duration(const char *text, uint64_t *ms) {
  if (!isdigit((unsigned char)text[0])) return -1;
  errno = 0;
  char *end;
  const unsigned long long n = strtoull(text, &end, 10);
  if (errno) return -1;
  static const struct {
    const char *suffix;
    uint64_t ms;
  } units[] = {{"", 1000}, {"s", 1000}, {"ms", 1}, {"m", 60 * 1000}, {"h", 3600 * 1000}};
  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcmp(end, units[i].suffix) != 0) continue;
    if (n > MAX_TTL_MS / units[i].ms) return -1;
    *ms = n * units[i].ms;
    return 0;
  }
  return -1;
}

static int load_duration(const char *name, uint64_t dflt, uint64_t max, uint64_t *out) {
  const char *v = getenv(name);
  *out = dflt;
  if (!v || !*v) return 0;
  if (parse_duration(v, out) != 0 || *out == 0 || *out > max)
    return bad(name, v, "expected a duration such as 250ms, 30s, 5m or 24h, above 0");
  return 0;
}

/* "host:port", "unix:/path" or "/path". */
static int load_address(idem_settings *s) {
  static const char name[] = "EXTPROC_IDEMPOTENCY_REDIS";
  const char *v = getenv(name);
  if (!v || !*v) v = "127.0.0.1:6379";
  if (strlen(v) >= sizeof(s->address)) return bad(name, v, "too long");
  snprintf(s->address, sizeof(s->address), "%s", v);
  const char *path = strncmp(v, "unix:", 5) == 0 ? v + 5 : v[0] == '/' ? v : NULL;
  if (path) {
    if (path[0] != '/' || strlen(path) >= 108) return bad(name, v, "expected an absolute path");
    snprintf(s->unix_path, sizeof(s->unix_path), "%s", path);
    return 0;
  }
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v || (size_t)(colon - v) >= sizeof(s->host))
    return bad(name, v, "expected HOST:PORT, unix:PATH or an absolute path");
  char *end;
  const long port = strtol(colon + 1, &end, 10);
  if (*end || end == colon + 1 || port < 1 || port > 65535)
    return bad(name, v, "the port must be 1..65535");
  /* [IPV6]:PORT: hiredis takes the address without brackets. */
  const bool bracketed = v[0] == '[' && colon[-1] == ']';
  const size_t len = (size_t)(colon - v) - (bracketed ? 2 : 0);
  memcpy(s->host, v + bracketed, len);
  s->host[len] = '\0';
  s->port = (int)port;
  return 0;
}

/* An HTTP field name (RFC 9110 token), kept in lower case as Envoy sends names. */
static int load_header(idem_settings *s) {
  static const char name[] = "EXTPROC_IDEMPOTENCY_HEADER";
  const char *v = getenv(name);
  if (!v || !*v) v = "idempotency-key";
  const size_t len = strlen(v);
  if (len >= sizeof(s->header)) return bad(name, v, "too long");
  for (size_t i = 0; i < len; i++) {
    const unsigned char ch = (unsigned char)v[i];
    if (!isalnum(ch) && !strchr("!#$%&'*+-.^_`|~", ch)) return bad(name, v, "not a header name");
    s->header[i] = (char)tolower(ch);
  }
  s->header[len] = '\0';
  return 0;
}

static int load_policy(idem_settings *s) {
  static const char name[] = "EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR";
  const char *v = getenv(name);
  if (!v || !*v || strcmp(v, "503") == 0) {
    s->on_error = IDEM_REJECT;
    return 0;
  }
  if (strcmp(v, "fail-open") == 0) {
    s->on_error = IDEM_FAIL_OPEN;
    return 0;
  }
  return bad(name, v, "expected 503 or fail-open");
}

int idem_settings_load(idem_settings *s) {
  memset(s, 0, sizeof(*s));
  s->port = DEFAULT_PORT;
  uint64_t timeout;
  if (load_address(s) || load_header(s) || load_policy(s) ||
      load_duration("EXTPROC_IDEMPOTENCY_TTL", DEFAULT_TTL_MS, MAX_TTL_MS, &s->ttl_ms) ||
      load_duration("EXTPROC_IDEMPOTENCY_IN_FLIGHT_TTL", DEFAULT_IN_FLIGHT_TTL_MS, MAX_TTL_MS,
                    &s->in_flight_ttl_ms) ||
      load_duration("EXTPROC_IDEMPOTENCY_TIMEOUT", DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS, &timeout))
    return -1;
  s->timeout_ms = (uint32_t)timeout;
  return 0;
}
