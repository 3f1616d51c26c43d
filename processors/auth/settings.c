/* The auth processor's EXTPROC_AUTH_* settings, read once when the processor is created. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "auth_internal.h"
#include "extproc/extproc.h"

/* A clock skew beyond an hour would make exp meaningless for short-lived tokens. */
enum { MAX_CLOCK_SKEW_S = 3600, DEFAULT_CLOCK_SKEW_S = 60 };
/* Same period as the server's TLS file watcher; a day at most, so a change is not forgotten. */
enum { DEFAULT_RELOAD_INTERVAL_S = 2, MAX_RELOAD_INTERVAL_S = 86400 };

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

static int dup_env(const char *name, const char *fallback, char **out) {
  const char *v = env(name);
  if (!v) v = fallback;
  *out = NULL;
  if (!v) return 0;
  *out = strdup(v);
  if (*out) return 0;
  extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: out of memory reading %s", name);
  return -1;
}

static int seconds_env(const char *name, long fallback, long max, long *out) {
  const char *v = env(name);
  *out = fallback;
  if (!v) return 0;
  char *end;
  errno = 0;
  const long n = strtol(v, &end, 10);
  if (errno || end == v || *end || n < 0 || n > max) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: %s=%s: expected whole seconds from 0 to %ld", name,
                v, max);
    return -1;
  }
  *out = n;
  return 0;
}

static void lower(char *s) {
  for (; *s; s++)
    *s = (char)tolower((unsigned char)*s);
}

/* Splits `text` at any of `seps` into at most AUTH_MAX_LIST non-empty copies. */
static int split(const char *name, const char *text, const char *seps, char **items,
                 size_t *count) {
  *count = 0;
  for (const char *p = text; p && *p;) {
    p += strspn(p, seps);
    const size_t n = strcspn(p, seps);
    if (n == 0) break;
    if (*count == AUTH_MAX_LIST) {
      extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: %s: more than %d items", name, AUTH_MAX_LIST);
      return -1;
    }
    if (!(items[(*count)++] = strndup(p, n))) return -1;
    p += n;
  }
  return 0;
}

static bool header_name_ok(const char *h) {
  if (!*h) return false;
  for (; *h; h++)
    if (!isalnum((unsigned char)*h) && *h != '-' && *h != '_') return false;
  return true;
}

/* "claim:header,claim:header". */
static int parse_forwards(auth_settings *s) {
  static const char *const name = "EXTPROC_AUTH_FORWARD_CLAIMS";
  const char *v = getenv(name);
  char *items[AUTH_MAX_LIST];
  size_t n = 0;
  int rv = split(name, v ? v : "sub:x-auth-subject", ", ", items, &n);
  for (size_t i = 0; i < n; i++) {
    char *colon = strchr(items[i], ':');
    if (rv == 0 && (!colon || colon == items[i] || !header_name_ok(colon + 1))) {
      extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: %s: '%s' is not claim:header-name", name,
                  items[i]);
      rv = -1;
    }
    if (rv == 0) {
      *colon = '\0';
      auth_forward *f = &s->forwards[s->forward_count++];
      f->claim = strdup(items[i]);
      f->header = strdup(colon + 1);
      if (!f->claim || !f->header)
        rv = -1;
      else
        lower(f->header);
    }
    free(items[i]);
  }
  return rv;
}

int auth_settings_load(auth_settings *s) {
  memset(s, 0, sizeof(*s));
  if (dup_env("EXTPROC_AUTH_HS256_SECRET_FILE", NULL, &s->hs256_secret_file) ||
      dup_env("EXTPROC_AUTH_JWKS_FILE", NULL, &s->jwks_file) ||
      dup_env("EXTPROC_AUTH_API_KEYS_FILE", NULL, &s->api_keys_file) ||
      dup_env("EXTPROC_AUTH_API_KEY_HEADER", "x-api-key", &s->api_key_header) ||
      dup_env("EXTPROC_AUTH_ISSUER", NULL, &s->issuer) ||
      dup_env("EXTPROC_AUTH_REQUIRED_SCOPE", NULL, &s->required_scope_text) ||
      dup_env("EXTPROC_AUTH_METADATA_NAMESPACE", "extproc.auth", &s->metadata_namespace) ||
      dup_env("EXTPROC_AUTH_REALM", "extproc", &s->realm))
    return -1;
  if (!header_name_ok(s->api_key_header)) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: EXTPROC_AUTH_API_KEY_HEADER=%s: not a header name",
                s->api_key_header);
    return -1;
  }
  lower(s->api_key_header);
  if (strchr(s->realm, '"') || strchr(s->realm, '\\')) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: EXTPROC_AUTH_REALM may not hold quotes");
    return -1;
  }
  if (s->required_scope_text && strpbrk(s->required_scope_text, "\"\\")) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: EXTPROC_AUTH_REQUIRED_SCOPE may not hold quotes");
    return -1;
  }
  if (split("EXTPROC_AUTH_AUDIENCE", env("EXTPROC_AUTH_AUDIENCE"), ", ", s->audiences,
            &s->audience_count) ||
      split("EXTPROC_AUTH_REQUIRED_SCOPE", s->required_scope_text, ", ", s->required_scopes,
            &s->required_scope_count) ||
      parse_forwards(s) ||
      seconds_env("EXTPROC_AUTH_CLOCK_SKEW", DEFAULT_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S,
                  &s->clock_skew_s) ||
      seconds_env("EXTPROC_AUTH_RELOAD_INTERVAL", DEFAULT_RELOAD_INTERVAL_S, MAX_RELOAD_INTERVAL_S,
                  &s->reload_interval_s))
    return -1;
  return 0;
}

void auth_settings_free(auth_settings *s) {
  free(s->hs256_secret_file);
  free(s->jwks_file);
  free(s->api_keys_file);
  free(s->api_key_header);
  free(s->issuer);
  free(s->required_scope_text);
  free(s->metadata_namespace);
  free(s->realm);
  for (size_t i = 0; i < s->audience_count; i++)
    free(s->audiences[i]);
  for (size_t i = 0; i < s->required_scope_count; i++)
    free(s->required_scopes[i]);
  for (size_t i = 0; i < s->forward_count; i++) {
    free(s->forwards[i].claim);
    free(s->forwards[i].header);
  }
  memset(s, 0, sizeof(*s));
}
