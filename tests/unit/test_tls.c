/* TLS listeners over real sockets, with certificates made by the test (test_certs.c) and an
 * OpenSSL client (h2_client_connect_tls):
 *  - a TLS client gets ALPN h2 and is served (a health check), with TLS 1.3 and with TLS 1.2;
 *  - a TLS 1.1-only client, and one offering ALPN without h2, are refused in the handshake;
 *  - mutual TLS: no client certificate, or one from another CA, is refused; a good one served;
 *  - a cleartext HTTP/2 client on a TLS port is closed with one log line naming it;
 *  - a silent client is closed by the handshake timeout;
 *  - a reload (extproc_server_reload_tls, then the file watcher) gives new connections the new
 *    certificate while an open connection keeps working; a bad reload keeps the old one;
 *  - bad files are refused by extproc_server_new; unix sockets stay cleartext and get their mode.
 * Log lines are read from stderr (redirected to a file while a test looks). Every wait is
 * bounded (WAIT_MS, the client's own timeout). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "extproc/extproc.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_certs.h"

enum { WAIT_MS = 10000, TEST_WATCHDOG_SECONDS = 90, HANDSHAKE_MS = 300 };

typedef struct fixture {
  char dir[64];
  char ca[128], cert[128], key[128];      /* the server's CA, certificate and key */
  char client_cert[128], client_key[128]; /* signed by the same CA */
  char other_cert[128], other_key[128];   /* signed by another CA */
  test_ca *server_ca, *other_ca;
  extproc_processor *proc;
  extproc_server *srv;
  int port;
} fixture;

/* ---- Log capture ------------------------------------------------------------------------- */

/* stderr is pointed at a temporary file while a test looks. Both descriptors are made before
 * the server starts: a dup() taking a descriptor number a worker thread has just closed would be
 * reported by ThreadSanitizer as a race on that number. */
static int saved_stderr = -1;
static FILE *capture_file;

static void capture_prepare(void) {
  saved_stderr = dup(STDERR_FILENO);
  capture_file = tmpfile();
  assert_true(saved_stderr >= 0);
  assert_non_null(capture_file);
}

static void capture_release(void) {
  close(saved_stderr);
  fclose(capture_file);
}

static void capture_start(void) {
  fflush(stderr);
  const int fd = fileno(capture_file);
  assert_int_equal(ftruncate(fd, 0), 0);
  lseek(fd, 0, SEEK_SET);
  dup2(fd, STDERR_FILENO);
}

/* What was logged since capture_start (malloc'd); the capture ends. */
static char *capture_end(void) {
  fflush(stderr);
  dup2(saved_stderr, STDERR_FILENO);
  const int fd = fileno(capture_file);
  const off_t len = lseek(fd, 0, SEEK_END);
  assert_true(len >= 0);
  char *text = calloc(1, (size_t)len + 1);
  assert_int_equal(pread(fd, text, (size_t)len, 0), (ssize_t)len);
  fputs(text, stderr); /* still shown in the test's output */
  return text;
}

static size_t count_of(const char *text, const char *what) {
  size_t n = 0;
  for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
    n++;
  return n;
}

/* ---- Fixture ----------------------------------------------------------------------------- */

static void path_in(const fixture *f, char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", f->dir, name);
}

static int setup(void **state) {
  alarm(TEST_WATCHDOG_SECONDS); /* SIGALRM's default action fails the run */
  capture_prepare();
  fixture *f = calloc(1, sizeof(*f));
  if (!f) return -1;
  snprintf(f->dir, sizeof(f->dir), "/tmp/extproc-tls-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  path_in(f, f->ca, sizeof(f->ca), "ca.pem");
  path_in(f, f->cert, sizeof(f->cert), "server.pem");
  path_in(f, f->key, sizeof(f->key), "server.key");
  path_in(f, f->client_cert, sizeof(f->client_cert), "client.pem");
  path_in(f, f->client_key, sizeof(f->client_key), "client.key");
  path_in(f, f->other_cert, sizeof(f->other_cert), "other.pem");
  path_in(f, f->other_key, sizeof(f->other_key), "other.key");
  f->server_ca = test_ca_new("extproc test CA");
  f->other_ca = test_ca_new("another CA");
  if (!f->server_ca || !f->other_ca || test_ca_write(f->server_ca, f->ca) != 0 ||
      test_cert_write(f->server_ca, "localhost", 1, true, f->cert, f->key) != 0 ||
      test_cert_write(f->server_ca, "envoy", 100, false, f->client_cert, f->client_key) != 0 ||
      test_cert_write(f->other_ca, "envoy", 200, false, f->other_cert, f->other_key) != 0 ||
      extproc_processor_new(&f->proc, "tls-test") != 0)
    return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  if (f->srv) {
    extproc_server_stop_now(f->srv);
    extproc_server_wait(f->srv);
    extproc_server_free(f->srv);
  }
  extproc_processor_free(f->proc);
  test_ca_free(f->server_ca);
  test_ca_free(f->other_ca);
  const char *names[] = {"ca.pem",    "server.pem", "server.key", "client.pem", "client.key",
                         "other.pem", "other.key",  "bad.pem",    "tls.sock"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    char path[128];
    path_in(f, path, sizeof(path), names[i]);
    unlink(path);
  }
  rmdir(f->dir);
  free(f);
  capture_release();
  alarm(0);
  return 0;
}

/* A TLS server on 127.0.0.1 (two workers, so both loops' accepts are used), mutual TLS if
 * `mutual`. */
static void start_server(fixture *f, bool mutual) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 2;
  opts.drain_delay_ms = 0;
  opts.handshake_timeout_ms = HANDSHAKE_MS;
  opts.tls_cert_file = f->cert;
  opts.tls_key_file = f->key;
  opts.tls_client_ca_file = mutual ? f->ca : NULL;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  const int index = extproc_server_listen(f->srv, "127.0.0.1:0", f->proc);
  assert_true(index >= 0);
  f->port = extproc_server_port(f->srv, index);
  assert_int_equal(extproc_server_start(f->srv), 0);
}

static h2_client *connect_verified(const fixture *f, const char *cert, const char *key) {
  const h2_client_tls tls = {
      .ca_file = f->ca, .sni = "localhost", .cert_file = cert, .key_file = key};
  return h2_client_connect_tls("127.0.0.1", f->port, &tls);
}

/* The serial number of the certificate the server presented to `c`. */
static long served_serial(const h2_client *c) {
  X509 *cert = SSL_get1_peer_certificate(h2_client_tls_session(c));
  assert_non_null(cert);
  const long serial = ASN1_INTEGER_get(X509_get0_serialNumber(cert));
  X509_free(cert);
  return serial;
}

static void assert_alpn_h2(const h2_client *c) {
  const unsigned char *alpn;
  unsigned int len;
  SSL_get0_alpn_selected(h2_client_tls_session(c), &alpn, &len);
  assert_int_equal(len, 2);
  assert_memory_equal(alpn, "h2", 2);
}

/* ---- Tests ------------------------------------------------------------------------------- */

static void test_tls_client_gets_h2_and_is_served(void **state) {
  fixture *f = *state;
  start_server(f, false);
  h2_client *c = connect_verified(f, NULL, NULL);
  assert_non_null(c);
  assert_alpn_h2(c);
  assert_int_equal(SSL_version(h2_client_tls_session(c)), TLS1_3_VERSION);
  assert_int_equal(served_serial(c), 1);
  assert_int_equal(h2_client_health_check(c), 0);
  assert_int_equal(h2_client_health_check(c), 0); /* the connection stays usable */
  h2_client_free(c);

  /* TLS 1.2 is served too, with an AEAD suite (RFC 9113, section 9.2.2). */
  const h2_client_tls tls12 = {.ca_file = f->ca, .sni = "localhost", .max_version = TLS1_2_VERSION};
  c = h2_client_connect_tls("127.0.0.1", f->port, &tls12);
  assert_non_null(c);
  assert_int_equal(SSL_version(h2_client_tls_session(c)), TLS1_2_VERSION);
  assert_non_null(strstr(SSL_get_cipher_name(h2_client_tls_session(c)), "GCM"));
  assert_alpn_h2(c);
  assert_int_equal(h2_client_health_check(c), 0);
  h2_client_free(c);
}

static void test_old_tls_and_alpn_without_h2_are_refused(void **state) {
  fixture *f = *state;
  start_server(f, false);
  capture_start();
  const h2_client_tls tls11 = {.max_version = TLS1_1_VERSION};
  h2_client *c = h2_client_connect_tls("127.0.0.1", f->port, &tls11);
  const h2_client_tls http1 = {.alpn = "\x08http/1.1"};
  h2_client *c2 = h2_client_connect_tls("127.0.0.1", f->port, &http1);
  char *log = capture_end();
  assert_null(c);
  assert_null(c2);
  assert_int_equal(count_of(log, "TLS handshake failed"), 2);
  assert_int_equal(count_of(log, "unsupported protocol"), 1);
  assert_int_equal(count_of(log, "offered ALPN without h2"), 1);
  free(log);

  /* No ALPN at all: served, since the client then speaks HTTP/2 (prior knowledge). */
  const h2_client_tls none = {.alpn = ""};
  c = h2_client_connect_tls("127.0.0.1", f->port, &none);
  assert_non_null(c);
  assert_int_equal(h2_client_health_check(c), 0);
  h2_client_free(c);
}

static void test_mutual_tls(void **state) {
  fixture *f = *state;
  start_server(f, true);
  capture_start();
  h2_client *anonymous = connect_verified(f, NULL, NULL);
  h2_client *stranger = connect_verified(f, f->other_cert, f->other_key);
  char *log = capture_end();
  assert_null(anonymous);
  assert_null(stranger);
  assert_int_equal(count_of(log, "TLS handshake failed"), 2);
  assert_int_equal(count_of(log, "peer did not return a certificate"), 1);
  assert_int_equal(count_of(log, "client certificate refused"), 1);
  free(log);

  h2_client *envoy = connect_verified(f, f->client_cert, f->client_key);
  assert_non_null(envoy);
  assert_alpn_h2(envoy);
  assert_int_equal(h2_client_health_check(envoy), 0);
  h2_client_free(envoy);
}

static void test_cleartext_client_on_tls_port(void **state) {
  fixture *f = *state;
  start_server(f, false);
  capture_start();
  h2_client *c = h2_client_connect_tcp("127.0.0.1", f->port);
  char *log = capture_end();
  assert_null(c); /* closed before any SETTINGS */
  assert_int_equal(count_of(log, "cleartext HTTP/2 on a TLS port"), 1);
  assert_int_equal(count_of(log, " WARN "), 1);
  free(log);
}

/* Reads until the server closes the connection (bounded). */
static void wait_closed(int fd) {
  const int64_t deadline = now_ms() + WAIT_MS;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    const int64_t left = deadline - now_ms();
    if (left <= 0) fail_msg("the server did not close the connection within %d ms", WAIT_MS);
    if (poll(&p, 1, (int)left) <= 0) continue;
    uint8_t buf[512];
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return;
  }
}

static void test_handshake_timeout_covers_tls(void **state) {
  fixture *f = *state;
  start_server(f, false);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)f->port)};
  sa.sin_addr.s_addr = htonl(0x7f000001);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  /* Half a ClientHello: a TLS record header promising more than comes. */
  const uint8_t partial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
  assert_int_equal(send(fd, partial, sizeof(partial), 0), (ssize_t)sizeof(partial));
  capture_start();
  const int64_t start = now_ms();
  wait_closed(fd);
  char *log = capture_end();
  assert_true(now_ms() - start >= HANDSHAKE_MS - 100); /* not before it was due */
  assert_int_equal(count_of(log, "no TLS handshake in time"), 1);
  free(log);
  close(fd);
}

/* Connects until a new connection is served certificate `serial` (the watcher polls). */
static bool wait_for_serial(const fixture *f, long serial) {
  const int64_t deadline = now_ms() + WAIT_MS;
  while (now_ms() < deadline) {
    h2_client *c = connect_verified(f, NULL, NULL);
    const long got = c ? served_serial(c) : -1;
    h2_client_free(c);
    if (got == serial) return true;
    sleep_ms(100);
  }
  return false;
}

static void test_reload(void **state) {
  fixture *f = *state;
  start_server(f, false);
  h2_client *old = connect_verified(f, NULL, NULL);
  assert_non_null(old);
  assert_int_equal(served_serial(old), 1);

  /* Replaced files (new key too), reloaded on request: a new connection gets serial 2. */
  assert_int_equal(test_cert_write(f->server_ca, "localhost", 2, true, f->cert, f->key), 0);
  assert_int_equal(extproc_server_reload_tls(f->srv), 0);
  h2_client *fresh = connect_verified(f, NULL, NULL);
  assert_non_null(fresh);
  assert_int_equal(served_serial(fresh), 2);
  assert_int_equal(h2_client_health_check(fresh), 0);
  /* The open connection keeps its session and is still served. */
  assert_int_equal(served_serial(old), 1);
  assert_int_equal(h2_client_health_check(old), 0);
  h2_client_free(fresh);

  /* Replaced again, reloaded by the file watcher alone. */
  assert_int_equal(test_cert_write(f->server_ca, "localhost", 3, true, f->cert, f->key), 0);
  assert_true(wait_for_serial(f, 3));

  /* A bad certificate file: refused, the previous certificate stays. */
  char bad[128];
  path_in(f, bad, sizeof(bad), "bad.pem");
  FILE *fp = fopen(bad, "w");
  assert_non_null(fp);
  fputs("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", fp);
  fclose(fp);
  assert_int_equal(rename(bad, f->cert), 0);
  capture_start();
  const int rv = extproc_server_reload_tls(f->srv);
  char *log = capture_end();
  assert_int_equal(rv, EXTPROC_EINVAL);
  assert_int_equal(count_of(log, "still get the previous certificate"), 1);
  free(log);
  h2_client *after = connect_verified(f, NULL, NULL);
  assert_non_null(after);
  assert_int_equal(served_serial(after), 3);
  assert_int_equal(h2_client_health_check(after), 0);
  h2_client_free(after);
  assert_int_equal(h2_client_health_check(old), 0);
  h2_client_free(old);
}

static int new_server(const char *cert, const char *key, const char *ca) {
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.tls_cert_file = cert;
  opts.tls_key_file = key;
  opts.tls_client_ca_file = ca;
  extproc_server *srv = NULL;
  const int rv = extproc_server_new(&srv, &opts);
  if (rv == 0) {
    assert_non_null(srv);
    extproc_server_free(srv);
  } else {
    assert_null(srv);
  }
  return rv;
}

static void test_bad_files_are_refused_at_new(void **state) {
  fixture *f = *state;
  assert_int_equal(new_server(f->cert, f->key, NULL), 0);
  assert_int_equal(new_server(f->cert, f->key, f->ca), 0);
  char missing[128];
  path_in(f, missing, sizeof(missing), "missing.pem");
  assert_int_equal(new_server(missing, f->key, NULL), EXTPROC_EIO);
  assert_int_equal(new_server(f->cert, missing, NULL), EXTPROC_EIO);
  assert_int_equal(new_server(f->cert, f->key, missing), EXTPROC_EIO);
  assert_int_equal(new_server(f->key, f->key, NULL), EXTPROC_EINVAL);         /* not a cert */
  assert_int_equal(new_server(f->cert, f->client_key, NULL), EXTPROC_EINVAL); /* wrong key */
  assert_int_equal(new_server(f->cert, f->key, f->key), EXTPROC_EINVAL);      /* no CA in it */
  assert_int_equal(new_server(f->cert, NULL, NULL), EXTPROC_EINVAL);
  assert_int_equal(new_server(NULL, f->key, NULL), EXTPROC_EINVAL);
  assert_int_equal(new_server(NULL, NULL, f->ca), EXTPROC_EINVAL);

  /* Without TLS there is nothing to reload. */
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  assert_int_equal(extproc_server_reload_tls(srv), EXTPROC_ESTATE);
  extproc_server_free(srv);
  assert_int_equal(extproc_server_reload_tls(NULL), EXTPROC_EINVAL);
}

static void test_unix_socket_is_cleartext_with_its_mode(void **state) {
  fixture *f = *state;
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.drain_delay_ms = 0;
  opts.tls_cert_file = f->cert;
  opts.tls_key_file = f->key;
  opts.unix_socket_mode = 0640;
  assert_int_equal(extproc_server_new(&f->srv, &opts), 0);
  char path[128], address[140];
  path_in(f, path, sizeof(path), "tls.sock");
  snprintf(address, sizeof(address), "unix:%s", path);
  assert_true(extproc_server_listen(f->srv, address, f->proc) >= 0);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0640);
  assert_int_equal(extproc_server_start(f->srv), 0);
  h2_client *c = h2_client_connect_unix(path);
  assert_non_null(c);
  assert_int_equal(h2_client_health_check(c), 0);
  h2_client_free(c);

  opts.unix_socket_mode = 01000; /* beyond the permission bits */
  extproc_server *bad = NULL;
  assert_int_equal(extproc_server_new(&bad, &opts), EXTPROC_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_tls_client_gets_h2_and_is_served, setup, teardown),
      cmocka_unit_test_setup_teardown(test_old_tls_and_alpn_without_h2_are_refused, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_mutual_tls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cleartext_client_on_tls_port, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handshake_timeout_covers_tls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_files_are_refused_at_new, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unix_socket_is_cleartext_with_its_mode, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
