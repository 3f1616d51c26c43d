/* Certificates for the TLS tests, made with OpenSSL's API: a CA, and certificates it signs
 * for a server (SAN DNS:localhost, IP:127.0.0.1) or a client, each with its own EC P-256 key,
 * written as PEM files. Valid from an hour ago for a day. */
#ifndef EXTPROC_TESTS_TEST_CERTS_H
#define EXTPROC_TESTS_TEST_CERTS_H

#include <stdbool.h>

typedef struct test_ca test_ca;

/* A self-signed CA named `cn`. NULL on failure. */
test_ca *test_ca_new(const char *cn);
void test_ca_free(test_ca *ca);

/* Writes the CA's certificate to `path`. Returns 0 or -1. */
int test_ca_write(const test_ca *ca, const char *path);

/* Makes a key and a certificate for `cn` with serial number `serial`, signed by `ca`: for a
 * server (SAN DNS:localhost and IP:127.0.0.1, extended key usage serverAuth) or a client
 * (clientAuth). Writes them to `cert_path` and `key_path`, each through a temporary file
 * renamed over the path, as certificate managers replace them. Returns 0 or -1. */
int test_cert_write(const test_ca *ca, const char *cn, long serial, bool server,
                    const char *cert_path, const char *key_path);

#endif
