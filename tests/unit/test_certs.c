/* Test certificates (see test_certs.h). */
#include "test_certs.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>

struct test_ca {
  EVP_PKEY *key;
  X509 *cert;
};

static bool add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value) {
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
  const bool ok = e && X509_add_ext(x, e, -1) == 1;
  X509_EXTENSION_free(e);
  return ok;
}

/* A certificate for `key` named `cn`, signed by `issuer` (NULL: self-signed, a CA). */
static X509 *make_cert(EVP_PKEY *key, const char *cn, long serial, const test_ca *issuer,
                       bool server) {
  X509 *x = X509_new();
  if (!x) return NULL;
  X509_NAME *name = X509_get_subject_name(x);
  bool ok =
      X509_set_version(x, 2) == 1 && ASN1_INTEGER_set(X509_get_serialNumber(x), serial) == 1 &&
      X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
      X509_gmtime_adj(X509_getm_notAfter(x), 86400) && X509_set_pubkey(x, key) == 1 &&
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ==
          1 &&
      X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->cert) : name) == 1;
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer->cert : x, x, NULL, NULL, 0);
  if (ok && !issuer)
    ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE") &&
         add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  if (ok && issuer)
    ok = add_ext(x, &ctx, NID_basic_constraints, "CA:FALSE") &&
         add_ext(x, &ctx, NID_ext_key_usage, server ? "serverAuth" : "clientAuth") &&
         (!server || add_ext(x, &ctx, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1"));
  if (ok) ok = X509_sign(x, issuer ? issuer->key : key, EVP_sha256()) > 0;
  if (!ok) {
    X509_free(x);
    return NULL;
  }
  return x;
}

test_ca *test_ca_new(const char *cn) {
  test_ca *ca = calloc(1, sizeof(*ca));
  if (!ca) return NULL;
  ca->key = EVP_EC_gen("P-256");
  ca->cert = ca->key ? make_cert(ca->key, cn, 1, NULL, false) : NULL;
  if (!ca->cert) {
    test_ca_free(ca);
    return NULL;
  }
  return ca;
}

void test_ca_free(test_ca *ca) {
  if (!ca) return;
  X509_free(ca->cert);
  EVP_PKEY_free(ca->key);
  free(ca);
}

/* Writes through `path`.tmp, renamed over `path`. */
static int write_pem(const char *path, X509 *cert, EVP_PKEY *key) {
  char tmp[4096];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  const bool ok = cert ? PEM_write_X509(f, cert) == 1
                       : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
  if (fclose(f) != 0 || !ok) return -1;
  return rename(tmp, path);
}

int test_ca_write(const test_ca *ca, const char *path) { return write_pem(path, ca->cert, NULL); }

int test_cert_write(const test_ca *ca, const char *cn, long serial, bool server,
                    const char *cert_path, const char *key_path) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *cert = key ? make_cert(key, cn, serial, ca, server) : NULL;
  const int rv =
      cert && write_pem(key_path, NULL, key) == 0 && write_pem(cert_path, cert, NULL) == 0 ? 0 : -1;
  X509_free(cert);
  EVP_PKEY_free(key);
  return rv;
}
