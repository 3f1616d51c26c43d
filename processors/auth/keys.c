/* Loading the auth processor's key files: an HS256 shared secret, a JWKS (RFC 7517) whose RSA and
 * P-256 public keys become PEM for libjwt, and a file of SHA-256 digests of API keys. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "auth_internal.h"

/* RSA keys below 2048 bits are refused (NIST SP 800-131A). */
enum { MIN_RSA_MODULUS_BYTES = 256 };
/* A P-256 coordinate is 32 bytes (RFC 7518 section 6.2.1.2: exactly that long). */
enum { P256_COORD_BYTES = 32 };
/* A JWKS with more keys than this is not a key file of ours. */
enum { MAX_JWKS_KEYS = 64 };

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

char *auth_read_file(const char *path, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fail(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(AUTH_MAX_KEY_FILE_BYTES + 1);
  size_t n = buf ? fread(buf, 1, AUTH_MAX_KEY_FILE_BYTES + 1, f) : 0;
  const bool bad = !buf || ferror(f) || n > AUTH_MAX_KEY_FILE_BYTES;
  fclose(f);
  if (bad) {
    fail(err, errlen, "%s: %s", path,
         !buf                          ? "out of memory"
         : n > AUTH_MAX_KEY_FILE_BYTES ? "larger than 1 MiB"
                                       : "read error");
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

unsigned char *auth_b64url_decode(const char *in, size_t inlen, size_t *outlen) {
  while (inlen && in[inlen - 1] == '=')
    inlen--;
  if (inlen % 4 == 1 || inlen > AUTH_MAX_KEY_FILE_BYTES) return NULL;
  const size_t padded = (inlen + 3) / 4 * 4;
  char *std = malloc(padded + 1);
  unsigned char *out = malloc(padded / 4 * 3 + 1);
  if (!std || !out) goto bad;
  for (size_t i = 0; i < inlen; i++) {
    const char c = in[i];
    if (c == '-')
      std[i] = '+';
    else if (c == '_')
      std[i] = '/';
    else if (isalnum((unsigned char)c))
      std[i] = c;
    else
      goto bad;
  }
  memset(std + inlen, '=', padded - inlen);
  std[padded] = '\0';
  const int n = padded ? EVP_DecodeBlock(out, (unsigned char *)std, (int)padded) : 0;
  if (n < 0) goto bad;
  free(std);
  /* EVP_DecodeBlock counts zero bytes for the padding; take them off. */
  *outlen = (size_t)n - (padded - inlen); /* one byte less per padding character */
  out[*outlen] = '\0';
  return out;
bad:
  free(std);
  free(out);
  return NULL;
}

/* ---- HS256 ----------------------------------------------------------------------------- */

int auth_load_hs256_secret(const char *path, auth_keyset *ks, char *err, size_t errlen) {
  size_t len;
  char *data = auth_read_file(path, &len, err, errlen);
  if (!data) return -1;
  /* A secret written with `echo` ends with a newline that is not part of it. */
  while (len && (data[len - 1] == '\n' || data[len - 1] == '\r'))
    len--;
  if (len < AUTH_MIN_HS256_SECRET_BYTES) {
    free(data);
    return fail(err, errlen, "%s: an HS256 secret needs at least %d bytes", path,
                AUTH_MIN_HS256_SECRET_BYTES);
  }
  ks->hs256_secret = (unsigned char *)data;
  ks->hs256_secret_len = len;
  return 0;
}

/* ---- JWKS ------------------------------------------------------------------------------ */

static BIGNUM *jwk_bignum(const cJSON *jwk, const char *member) {
  const char *text = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, member));
  size_t len;
  unsigned char *bytes = text ? auth_b64url_decode(text, strlen(text), &len) : NULL;
  BIGNUM *bn = bytes && len ? BN_bin2bn(bytes, (int)len, NULL) : NULL;
  free(bytes);
  return bn;
}

static char *pem_of(EVP_PKEY *pkey, size_t *len) {
  BIO *bio = BIO_new(BIO_s_mem());
  char *pem = NULL;
  if (bio && PEM_write_bio_PUBKEY(bio, pkey) == 1) {
    char *data;
    const long n = BIO_get_mem_data(bio, &data);
    if (n > 0 && (pem = malloc((size_t)n + 1))) {
      memcpy(pem, data, (size_t)n);
      pem[n] = '\0';
      *len = (size_t)n;
    }
  }
  BIO_free(bio);
  return pem;
}

/* Builds a public key from OpenSSL parameters and checks it (an EC point must be on the
 * curve). */
static EVP_PKEY *pkey_from(const char *type, OSSL_PARAM_BLD *bld) {
  OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
  EVP_PKEY *pkey = NULL;
  if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1 &&
      EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1) {
    EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (!check || EVP_PKEY_public_check(check) != 1) {
      EVP_PKEY_free(pkey);
      pkey = NULL;
    }
    EVP_PKEY_CTX_free(check);
  }
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  return pkey;
}

static EVP_PKEY *rsa_key(const cJSON *jwk, const char **why) {
  BIGNUM *n = jwk_bignum(jwk, "n"), *e = jwk_bignum(jwk, "e");
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  EVP_PKEY *pkey = NULL;
  *why = "bad n or e";
  if (n && e && BN_num_bytes(n) < MIN_RSA_MODULUS_BYTES)
    *why = "RSA key shorter than 2048 bits";
  else if (n && e && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
           OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
    pkey = pkey_from("RSA", bld);
  OSSL_PARAM_BLD_free(bld);
  BN_free(n);
  BN_free(e);
  return pkey;
}

static EVP_PKEY *ec_key(const cJSON *jwk, const char **why) {
  const char *crv = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "crv"));
  *why = "only curve P-256 is supported";
  if (!crv || strcmp(crv, "P-256") != 0) return NULL;
  *why = "bad x or y";
  const char *x = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "x"));
  const char *y = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "y"));
  size_t xl = 0, yl = 0;
  unsigned char *xb = x ? auth_b64url_decode(x, strlen(x), &xl) : NULL;
  unsigned char *yb = y ? auth_b64url_decode(y, strlen(y), &yl) : NULL;
  EVP_PKEY *pkey = NULL;
  if (xb && yb && xl == P256_COORD_BYTES && yl == P256_COORD_BYTES) {
    unsigned char point[1 + 2 * P256_COORD_BYTES] = {0x04}; /* uncompressed, SEC 1 2.3.3 */
    memcpy(point + 1, xb, P256_COORD_BYTES);
    memcpy(point + 1 + P256_COORD_BYTES, yb, P256_COORD_BYTES);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point)))
      pkey = pkey_from("EC", bld);
    OSSL_PARAM_BLD_free(bld);
  }
  free(xb);
  free(yb);
  return pkey;
}

static char *dup_member(const cJSON *jwk, const char *member) {
  const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, member));
  return v ? strdup(v) : NULL;
}

/* Converts one JWK. Returns 1 when added, 0 when skipped as not for us (an encryption key, an
 * unsupported key type), -1 with `err` when it is broken. */
static int add_jwk(const cJSON *jwk, auth_jwk *out, char *err, size_t errlen) {
  const char *kty = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "kty"));
  const char *use = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "use"));
  if (!kty) return fail(err, errlen, "a key without kty");
  if (use && strcmp(use, "sig") != 0) return 0;
  const char *why = "unsupported";
  EVP_PKEY *pkey = NULL;
  if (strcmp(kty, "RSA") == 0) {
    out->type = AUTH_KEY_RSA;
    pkey = rsa_key(jwk, &why);
  } else if (strcmp(kty, "EC") == 0) {
    out->type = AUTH_KEY_EC_P256;
    pkey = ec_key(jwk, &why);
  } else {
    return 0;
  }
  const char *kid = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(jwk, "kid"));
  if (!pkey) return fail(err, errlen, "key %s: %s", kid ? kid : "(no kid)", why);
  out->pem = pem_of(pkey, &out->pem_len);
  EVP_PKEY_free(pkey);
  out->kid = dup_member(jwk, "kid");
  out->alg = dup_member(jwk, "alg");
  if (!out->pem || (kid && !out->kid)) return fail(err, errlen, "out of memory");
  return 1;
}

static int load_jwks_json(const cJSON *root, auth_keyset *ks, char *err, size_t errlen) {
  const cJSON *keys = cJSON_GetObjectItemCaseSensitive(root, "keys");
  if (!cJSON_IsArray(keys)) return fail(err, errlen, "no \"keys\" array");
  const int count = cJSON_GetArraySize(keys);
  if (count > MAX_JWKS_KEYS) return fail(err, errlen, "more than %d keys", MAX_JWKS_KEYS);
  ks->jwks = calloc((size_t)count + 1, sizeof(*ks->jwks));
  if (!ks->jwks) return fail(err, errlen, "out of memory");
  const cJSON *jwk;
  cJSON_ArrayForEach(jwk, keys) {
    const int rv = add_jwk(jwk, &ks->jwks[ks->jwk_count], err, errlen);
    if (rv < 0) {
      ks->jwk_count++; /* freed with the others */
      return -1;
    }
    ks->jwk_count += (size_t)rv;
  }
  if (ks->jwk_count == 0) return fail(err, errlen, "no RSA or P-256 signing key");
  return 0;
}

int auth_load_jwks(const char *path, auth_keyset *ks, char *err, size_t errlen) {
  size_t len;
  char *data = auth_read_file(path, &len, err, errlen);
  if (!data) return -1;
  cJSON *root = cJSON_ParseWithLength(data, len);
  free(data);
  char why[200] = "not JSON";
  const int rv = root ? load_jwks_json(root, ks, why, sizeof(why)) : -1;
  cJSON_Delete(root);
  return rv == 0 ? 0 : fail(err, errlen, "%s: %s", path, why);
}

/* ---- API keys -------------------------------------------------------------------------- */

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* One line: 64 hex digits, then optionally a name, then optionally scopes, separated by blanks. */
static int parse_api_key_line(char *line, auth_api_key *key) {
  char *save = NULL;
  const char *hex = strtok_r(line, " \t", &save);
  if (!hex || strlen(hex) != 64) return -1;
  for (size_t i = 0; i < 32; i++) {
    const int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    key->digest[i] = (unsigned char)(hi << 4 | lo);
  }
  const char *name = strtok_r(NULL, " \t", &save);
  char *rest = save ? save + strspn(save, " \t") : NULL;
  key->name = strdup(name ? name : "");
  key->scopes = strdup(rest ? rest : "");
  return key->name && key->scopes ? 0 : -1;
}

int auth_load_api_keys(const char *path, auth_keyset *ks, char *err, size_t errlen) {
  size_t len;
  char *data = auth_read_file(path, &len, err, errlen);
  if (!data) return -1;
  size_t lines = 1;
  for (size_t i = 0; i < len; i++)
    lines += data[i] == '\n';
  ks->api_keys = calloc(lines, sizeof(*ks->api_keys));
  int rv = ks->api_keys ? 0 : fail(err, errlen, "%s: out of memory", path);
  size_t lineno = 0;
  char *save = NULL;
  for (char *line = strtok_r(data, "\n", &save); rv == 0 && line;
       line = strtok_r(NULL, "\n", &save)) {
    lineno++;
    line[strcspn(line, "\r")] = '\0';
    line += strspn(line, " \t");
    if (*line == '\0' || *line == '#') continue;
    if (parse_api_key_line(line, &ks->api_keys[ks->api_key_count++]) != 0)
      rv = fail(err, errlen,
                "%s: line %zu: expected a hex SHA-256 digest, then an optional name "
                "and scopes",
                path, lineno);
  }
  free(data);
  return rv;
}

void auth_keyset_free(auth_keyset *ks) {
  if (!ks) return;
  free(ks->hs256_secret);
  for (size_t i = 0; i < ks->jwk_count; i++) {
    free(ks->jwks[i].kid);
    free(ks->jwks[i].alg);
    free(ks->jwks[i].pem);
  }
  free(ks->jwks);
  for (size_t i = 0; i < ks->api_key_count; i++) {
    free(ks->api_keys[i].name);
    free(ks->api_keys[i].scopes);
  }
  free(ks->api_keys);
  free(ks);
}
