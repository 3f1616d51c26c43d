/* AuthExtProcService: lets a request through only with a valid credential, a bearer JWT or an
 * API key (verify.c), on the request headers phase.
 *
 * A request without one, or with a bad one, is answered at once: 401 with www-authenticate
 * (RFC 6750 section 3) and a JSON error body, or 403 for a valid credential lacking a required
 * scope; Envoy never calls the upstream. A good one goes on with the chosen claims as request
 * headers, each header first removed so that a client cannot send its own value, and as dynamic
 * metadata under the configured namespace. Settings: settings.c; keys and their reload:
 * keys.c, store.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "auth_internal.h"
#include "extproc/extproc.h"

typedef struct auth_state {
  auth_settings settings;
  auth_store store;
  atomic_bool told_unconfigured; /* the "no keys" error was logged */
} auth_state;

/* Served without any key file, the processor fails closed; it says so once, when first used
 * (not at creation: the runner creates it even when it serves other processors only). */
static void warn_if_unconfigured(extproc_request *req, auth_state *st) {
  if (auth_settings_have_keys(&st->settings) || atomic_exchange(&st->told_unconfigured, true))
    return;
  extproc_log(req, EXTPROC_LOG_ERROR,
              "auth: no keys configured (EXTPROC_AUTH_HS256_SECRET_FILE, EXTPROC_AUTH_JWKS_FILE, "
              "EXTPROC_AUTH_API_KEYS_FILE): every request is refused");
}

/* ---- Refusing ---------------------------------------------------------------------------- */

static const char *error_code(auth_outcome o) {
  switch (o) {
  case AUTH_INVALID_REQUEST: return "invalid_request";
  case AUTH_INSUFFICIENT_SCOPE: return "insufficient_scope";
  case AUTH_MISSING: return NULL; /* RFC 6750 section 3.1: no error code then */
  default: return "invalid_token";
  }
}

static int challenge(const auth_settings *s, const auth_verdict *v, char *out, size_t len) {
  const char *code = error_code(v->outcome);
  int n;
  if (!code)
    n = snprintf(out, len, "Bearer realm=\"%s\"", s->realm);
  else if (v->outcome == AUTH_INSUFFICIENT_SCOPE)
    n = snprintf(out, len,
                 "Bearer realm=\"%s\", error=\"%s\", error_description=\"%s\", "
                 "scope=\"%s\"",
                 s->realm, code, v->reason, s->required_scope_text);
  else
    n = snprintf(out, len, "Bearer realm=\"%s\", error=\"%s\", error_description=\"%s\"", s->realm,
                 code, v->reason);
  return n > 0 && (size_t)n < len ? 0 : -1;
}

static extproc_result refuse(extproc_request *req, const auth_settings *s, const auth_verdict *v) {
  const uint32_t status = v->outcome == AUTH_INSUFFICIENT_SCOPE ? 403 : 401;
  extproc_log(req, EXTPROC_LOG_DEBUG, "auth: refused (%u): %s", status, v->reason);
  char header[1024];
  cJSON *body = cJSON_CreateObject();
  const char *code = error_code(v->outcome);
  char *json = NULL;
  if (body && cJSON_AddStringToObject(body, "error", code ? code : "unauthorized") &&
      cJSON_AddStringToObject(body, "error_description", v->reason))
    json = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  const int rv = !json || challenge(s, v, header, sizeof(header)) ||
                 extproc_immediate_response(req, status) ||
                 extproc_immediate_header_set(req, "www-authenticate", header) ||
                 extproc_immediate_header_set(req, "content-type", "application/json") ||
                 extproc_immediate_header_set(req, "cache-control", "no-store") ||
                 extproc_immediate_body(req, json, strlen(json));
  free(json);
  return rv ? EXTPROC_FAIL : EXTPROC_CONTINUE;
}

/* ---- Letting through --------------------------------------------------------------------- */

/* A claim as a header value: strings as they are, whole numbers without a fraction, booleans
 * as true/false, objects and lists as compact JSON. NULL for null (or out-of-memory). */
static char *claim_text(const cJSON *c) {
  char num[32];
  if (cJSON_IsString(c)) return strdup(c->valuestring);
  if (cJSON_IsBool(c)) return strdup(cJSON_IsTrue(c) ? "true" : "false");
  if (cJSON_IsNumber(c)) {
    const double d = c->valuedouble;
    /* Integers up to 2^53 are exact in a double: print those without exponent or fraction. */
    if (d == floor(d) && fabs(d) < 9007199254740992.0)
      snprintf(num, sizeof(num), "%.0f", d);
    else
      snprintf(num, sizeof(num), "%.17g", d);
    return strdup(num);
  }
  if (cJSON_IsNull(c)) return NULL;
  return cJSON_PrintUnformatted(c);
}

static int forward_header(extproc_request *req, const auth_forward *f, const cJSON *claim) {
  /* Removed whether or not the credential carries the claim: a client's own value never
   * reaches the upstream. */
  if (extproc_header_remove(req, f->header) != 0) return -1;
  char *text = claim ? claim_text(claim) : NULL;
  if (!text) return 0;
  int rv = strlen(text) > AUTH_MAX_FORWARD_VALUE_BYTES ? EXTPROC_EINVAL
                                                       : extproc_header_set(req, f->header, text);
  if (rv == EXTPROC_EINVAL) {
    extproc_log(req, EXTPROC_LOG_WARN, "auth: claim %s not forwarded: not a header value",
                f->claim);
    rv = 0;
  }
  free(text);
  return rv;
}

static int add_metadata(extproc_struct *md, const char *key, const cJSON *claim) {
  if (cJSON_IsString(claim)) return extproc_struct_set_string(md, key, claim->valuestring);
  if (cJSON_IsNumber(claim)) return extproc_struct_set_number(md, key, claim->valuedouble);
  if (cJSON_IsBool(claim)) return extproc_struct_set_bool(md, key, cJSON_IsTrue(claim));
  char *json = claim_text(claim);
  const int rv = json ? extproc_struct_set_string(md, key, json) : 0;
  free(json);
  return rv;
}

static extproc_result admit(extproc_request *req, const auth_settings *s, const auth_verdict *v) {
  extproc_struct *md = extproc_dynamic_metadata(req, s->metadata_namespace);
  if (!md || extproc_struct_set_string(md, "auth_method", v->method) != 0) return EXTPROC_FAIL;
  for (size_t i = 0; i < s->forward_count; i++) {
    const auth_forward *f = &s->forwards[i];
    const cJSON *claim = cJSON_GetObjectItemCaseSensitive(v->claims, f->claim);
    if (forward_header(req, f, claim) != 0) return EXTPROC_FAIL;
    if (claim && add_metadata(md, f->claim, claim) != 0) return EXTPROC_FAIL;
  }
  return EXTPROC_CONTINUE;
}

/* ---- The phase ----------------------------------------------------------------------------- */

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  (void)ctx;
  auth_state *st = extproc_request_user_data(req);
  warn_if_unconfigured(req, st);
  const char *authorization = NULL;
  /* Two authorization headers are ambiguous (which one would the upstream read?): refused. */
  const size_t count = extproc_header_get_all(req, "authorization", &authorization, 1);
  const char *api_key = extproc_header_get(req, st->settings.api_key_header);
  auth_verdict v;
  if (count > 1) {
    memset(&v, 0, sizeof(v));
    v.outcome = AUTH_INVALID_REQUEST;
    v.reason = "several authorization headers";
  } else {
    auth_keyset *ks = auth_store_acquire(&st->store);
    auth_check(&st->settings, ks, authorization, api_key, time(NULL), &v);
    auth_keyset_release(ks);
  }
  const extproc_result r =
      v.outcome == AUTH_OK ? admit(req, &st->settings, &v) : refuse(req, &st->settings, &v);
  cJSON_Delete(v.claims);
  return r;
}

/* ---- Lifetime ------------------------------------------------------------------------------ */

static void state_free(void *user_data) {
  auth_state *st = user_data;
  auth_store_destroy(&st->store);
  auth_settings_free(&st->settings);
  free(st);
}

extproc_processor *auth_processor_new(void) {
  auth_state *st = calloc(1, sizeof(*st));
  if (!st) return NULL;
  if (auth_settings_load(&st->settings) != 0) {
    auth_settings_free(&st->settings);
    free(st);
    return NULL;
  }
  extproc_processor *proc = NULL;
  if (auth_store_init(&st->store, &st->settings) != 0 ||
      extproc_processor_new(&proc, "AuthExtProcService") != 0) {
    state_free(st);
    return NULL;
  }
  extproc_processor_set_user_data(proc, st);
  extproc_processor_set_user_data_free(proc, state_free);
  extproc_processor_on(proc, EXTPROC_REQUEST_HEADERS, on_request_headers);
  /* A failure of our own (out of memory) must not let the request through unchecked, whatever
   * the filter's failure_mode_allow says: answer it ourselves. */
  extproc_processor_set_error_policy(proc, EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE, 500);
  return proc;
}
