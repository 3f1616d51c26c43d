/* Checking a credential: a bearer JWT (RFC 6750, RFC 7519) verified with libjwt, or an API key
 * matched by its SHA-256 digest.
 *
 * libjwt 1.10 verifies with whatever algorithm the token's header names, given a key. So the
 * algorithm is chosen here first, from an allow-list, and the key must be of that algorithm's
 * type: HS256 only with the shared secret, RS256 only with an RSA key, ES256 only with a P-256
 * key. A public key can then never be used as an HMAC secret (the "algorithm confusion" of
 * RFC 8725 section 2.1), and "none" is never accepted. libjwt 1.10 checks no claims: exp, nbf,
 * iss and aud are checked here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "auth_internal.h"

static void verdict(auth_verdict *v, auth_outcome outcome, const char *reason) {
  v->outcome = outcome;
  v->reason = reason;
}

/* ---- Scopes ---------------------------------------------------------------------------- */

static bool word_in(const char *list, const char *word) {
  const size_t n = strlen(word);
  for (const char *p = list; *p;) {
    p += strspn(p, " ");
    const size_t len = strcspn(p, " ");
    if (len == n && strncmp(p, word, n) == 0) return true;
    p += len;
  }
  return false;
}

/* RFC 8693 section 4.2: "scope" is a space-separated string; some issuers send "scp", a list. */
static bool scope_granted(const cJSON *claims, const char *want) {
  const char *scope = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(claims, "scope"));
  if (scope && word_in(scope, want)) return true;
  const cJSON *scp = cJSON_GetObjectItemCaseSensitive(claims, "scp");
  if (cJSON_IsString(scp)) return word_in(scp->valuestring, want);
  const cJSON *list = cJSON_IsArray(scp) ? scp : NULL, *item;
  cJSON_ArrayForEach(item, list) {
    if (cJSON_IsString(item) && strcmp(item->valuestring, want) == 0) return true;
  }
  return false;
}

bool auth_scopes_granted(const auth_settings *s, const cJSON *claims) {
  for (size_t i = 0; i < s->required_scope_count; i++)
    if (!scope_granted(claims, s->required_scopes[i])) return false;
  return true;
}

/* ---- Claims ---------------------------------------------------------------------------- */

static bool audience_ok(const auth_settings *s, const cJSON *aud) {
  if (s->audience_count == 0) return true;
  for (size_t i = 0; i < s->audience_count; i++) {
    if (cJSON_IsString(aud) && strcmp(aud->valuestring, s->audiences[i]) == 0) return true;
    const cJSON *list = cJSON_IsArray(aud) ? aud : NULL, *item;
    cJSON_ArrayForEach(item, list) {
      if (cJSON_IsString(item) && strcmp(item->valuestring, s->audiences[i]) == 0) return true;
    }
  }
  return false;
}

/* RFC 7519 sections 4.1.1-4.1.5, with the configured leeway on both time bounds. exp is
 * required: a token without one would be a credential that never expires. */
static void check_claims(const auth_settings *s, const cJSON *claims, time_t now, auth_verdict *v) {
  const cJSON *exp = cJSON_GetObjectItemCaseSensitive(claims, "exp");
  const cJSON *nbf = cJSON_GetObjectItemCaseSensitive(claims, "nbf");
  const double t = (double)now, skew = (double)s->clock_skew_s;
  if (!cJSON_IsNumber(exp)) return verdict(v, AUTH_INVALID_TOKEN, "token has no exp");
  if (t >= exp->valuedouble + skew) return verdict(v, AUTH_INVALID_TOKEN, "token expired");
  if (nbf && !cJSON_IsNumber(nbf)) return verdict(v, AUTH_INVALID_TOKEN, "bad nbf");
  if (nbf && t < nbf->valuedouble - skew)
    return verdict(v, AUTH_INVALID_TOKEN, "token not yet valid");
  const char *iss = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(claims, "iss"));
  if (s->issuer && (!iss || strcmp(iss, s->issuer) != 0))
    return verdict(v, AUTH_INVALID_TOKEN, "wrong issuer");
  if (!audience_ok(s, cJSON_GetObjectItemCaseSensitive(claims, "aud")))
    return verdict(v, AUTH_INVALID_TOKEN, "wrong audience");
  if (!auth_scopes_granted(s, claims))
    return verdict(v, AUTH_INSUFFICIENT_SCOPE, "token lacks a required scope");
  verdict(v, AUTH_OK, "ok");
}

/* ---- Choosing the key ------------------------------------------------------------------ */

typedef struct key_choice {
  const unsigned char *key;
  size_t len;
} key_choice;

/* The JWK for `alg` named `kid`; without a kid, the only key of that type. */
static const char *pick_jwk(const auth_keyset *ks, const char *alg, const char *kid,
                            key_choice *out) {
  const auth_key_type type = strcmp(alg, "RS256") == 0 ? AUTH_KEY_RSA : AUTH_KEY_EC_P256;
  const auth_jwk *found = NULL;
  size_t candidates = 0;
  bool kid_known = false;
  for (size_t i = 0; i < ks->jwk_count; i++) {
    const auth_jwk *k = &ks->jwks[i];
    if (kid && (!k->kid || strcmp(k->kid, kid) != 0)) continue;
    kid_known = true;
    if (k->type == type) found = k, candidates++;
  }
  /* RFC 8725 section 3.1: the key decides the algorithm, not the token. */
  if (!found && kid_known) return "algorithm does not match the key";
  if (!found) return kid ? "unknown kid" : "no key for the algorithm";
  if (candidates > 1) return kid ? "kid names several keys" : "token has no kid";
  if (found->alg && strcmp(found->alg, alg) != 0) return "algorithm does not match the key";
  out->key = (const unsigned char *)found->pem;
  out->len = found->pem_len;
  return NULL;
}

static const char *pick_key(const auth_keyset *ks, const cJSON *header, key_choice *out) {
  const char *alg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(header, "alg"));
  const cJSON *kid_item = cJSON_GetObjectItemCaseSensitive(header, "kid");
  if (!alg) return "token header has no alg";
  if (kid_item && !cJSON_IsString(kid_item)) return "bad kid";
  const char *kid = cJSON_GetStringValue(kid_item);
  if (strcmp(alg, "HS256") == 0) {
    if (!ks->hs256_secret) return "algorithm not accepted";
    out->key = ks->hs256_secret;
    out->len = ks->hs256_secret_len;
    return NULL;
  }
  if (strcmp(alg, "RS256") == 0 || strcmp(alg, "ES256") == 0) return pick_jwk(ks, alg, kid, out);
  return "algorithm not accepted"; /* "none" among them */
}

/* ---- The token ------------------------------------------------------------------------- */

static bool token_chars_ok(const char *t, size_t len) {
  int dots = 0;
  for (size_t i = 0; i < len; i++) {
    const char c = t[i];
    if (c == '.')
      dots++;
    else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '_'))
      return false;
  }
  return dots == 2;
}

static cJSON *decode_header(const char *token) {
  size_t len;
  unsigned char *json = auth_b64url_decode(token, strcspn(token, "."), &len);
  cJSON *header = json ? cJSON_ParseWithLength((const char *)json, len) : NULL;
  free(json);
  if (header && !cJSON_IsObject(header)) {
    cJSON_Delete(header);
    header = NULL;
  }
  return header;
}

static void check_jwt(const auth_settings *s, const auth_keyset *ks, const char *token, time_t now,
                      auth_verdict *v) {
  cJSON *header = decode_header(token);
  if (!header) return verdict(v, AUTH_INVALID_TOKEN, "malformed token");
  key_choice key = {0};
  const char *why = pick_key(ks, header, &key);
  cJSON_Delete(header);
  if (why) return verdict(v, AUTH_INVALID_TOKEN, why);
  jwt_t *jwt = NULL;
  if (jwt_decode(&jwt, token, key.key, (int)key.len) != 0 || !jwt)
    return verdict(v, AUTH_INVALID_TOKEN, "bad signature");
  char *payload = jwt_get_grants_json(jwt, NULL);
  jwt_free(jwt);
  v->claims = payload ? cJSON_Parse(payload) : NULL;
  free(payload);
  if (!cJSON_IsObject(v->claims)) return verdict(v, AUTH_INVALID_TOKEN, "malformed claims");
  check_claims(s, v->claims, now, v);
}

/* "Bearer <token>": the scheme in any case (RFC 7235 section 2.1), then blanks. */
static void check_bearer(const auth_settings *s, const auth_keyset *ks, const char *value,
                         time_t now, auth_verdict *v) {
  v->method = "jwt";
  /* "Bearer" alone too: proxies strip the blanks that ended "Bearer ". */
  if (strncasecmp(value, "Bearer", 6) != 0 || (value[6] && value[6] != ' ' && value[6] != '\t'))
    return verdict(v, AUTH_INVALID_REQUEST, "authorization is not a bearer token");
  const char *token = value + 6 + strspn(value + 6, " \t");
  size_t len = strlen(token);
  while (len && (token[len - 1] == ' ' || token[len - 1] == '\t'))
    len--;
  if (len == 0) return verdict(v, AUTH_INVALID_REQUEST, "empty bearer token");
  if (len > AUTH_MAX_TOKEN_BYTES) return verdict(v, AUTH_INVALID_TOKEN, "token too long");
  if (!token_chars_ok(token, len)) return verdict(v, AUTH_INVALID_TOKEN, "malformed token");
  char *copy = strndup(token, len);
  if (!copy) return verdict(v, AUTH_INVALID_TOKEN, "out of memory");
  check_jwt(s, ks, copy, now, v);
  free(copy);
}

/* ---- API keys -------------------------------------------------------------------------- */

/* Compares against every entry, in constant time each and without stopping at a match, so the
 * time taken tells nothing about which digest (or how much of one) matched. */
static void check_api_key(const auth_settings *s, const auth_keyset *ks, const char *key,
                          auth_verdict *v) {
  v->method = "api_key";
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)key, strlen(key), digest);
  const auth_api_key *match = NULL;
  for (size_t i = 0; i < ks->api_key_count; i++)
    if (CRYPTO_memcmp(digest, ks->api_keys[i].digest, sizeof(digest)) == 0)
      match = &ks->api_keys[i];
  if (!match) return verdict(v, AUTH_INVALID_TOKEN, "unknown API key");
  v->claims = cJSON_CreateObject();
  if (!v->claims || (match->name[0] && !cJSON_AddStringToObject(v->claims, "sub", match->name)) ||
      !cJSON_AddStringToObject(v->claims, "scope", match->scopes))
    return verdict(v, AUTH_INVALID_TOKEN, "out of memory");
  if (!auth_scopes_granted(s, v->claims))
    return verdict(v, AUTH_INSUFFICIENT_SCOPE, "API key lacks a required scope");
  verdict(v, AUTH_OK, "ok");
}

void auth_check(const auth_settings *s, const auth_keyset *ks, const char *authorization,
                const char *api_key, time_t now, auth_verdict *v) {
  memset(v, 0, sizeof(*v));
  if (authorization) return check_bearer(s, ks, authorization, now, v);
  if (api_key && s->api_keys_file) return check_api_key(s, ks, api_key, v);
  verdict(v, AUTH_MISSING, "no credential");
}
