/* TLS through OpenSSL memory BIOs (see tls.h): building the server's SSL_CTX from PEM files,
 * reloading it, and each connection's handshake and record transforms. */
#include "transport/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/log.h"

/* ALPN: gRPC runs over HTTP/2 only, "h2" (RFC 7301 wire format: a length byte, the name). */
static const unsigned char ALPN_H2[] = {2, 'h', '2'};

/* TLS 1.2 cipher suites: forward secrecy and AEAD only, as RFC 9113 section 9.2.2 requires of
 * HTTP/2 over TLS 1.2 (Envoy's default client list offers these). TLS 1.3 suites are
 * OpenSSL's defaults, all AEAD. */
static const char TLS12_CIPHERS[] = "ECDHE+AESGCM:ECDHE+CHACHA20";

/* With client verification on, OpenSSL refuses to resume a session without this context. */
static const unsigned char SESSION_ID_CONTEXT[] = "libextproc";

enum { TLS_FILE_COUNT = 3 };

/* What identifies a file's content without reading it: a rename puts a new inode in place,
 * an overwrite changes size or modification time. */
typedef struct file_stamp {
  bool exists;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
} file_stamp;

struct tls_store {
  uv_mutex_t ctx_lock; /* guards ctx: taken by every accept and by the swap */
  SSL_CTX *ctx;
  uv_mutex_t reload_lock;      /* one reload at a time; guards stamps */
  char *paths[TLS_FILE_COUNT]; /* cert, key, client CA (may be NULL) */
  file_stamp stamps[TLS_FILE_COUNT];
};

struct tls_conn {
  SSL *ssl;
  BIO *rbio, *wbio; /* owned by ssl */
  bool established;
  bool alpn_refused;  /* the client offered ALPN without h2 */
  bool shutdown_sent; /* close_notify queued */
};

/* ---- Building a context ---------------------------------------------------------------- */

/* The reasons of OpenSSL's first and last errors on this thread (the first is the cause, the
 * last what gave up: "bad base64 decode (PEM lib)"), then the thread's queue is cleared (it is
 * per thread, and a stale entry would be blamed on the next connection). */
static void take_openssl_error(char *out, size_t cap) {
  const unsigned long first = ERR_peek_error(), last = ERR_peek_last_error();
  const char *cause = first ? ERR_reason_error_string(first) : NULL;
  const char *outcome = last ? ERR_reason_error_string(last) : NULL;
  if (!cause) cause = "unknown OpenSSL error";
  if (outcome && last != first && strcmp(outcome, cause) != 0)
    snprintf(out, cap, "%s (%s)", cause, outcome);
  else
    snprintf(out, cap, "%s", cause);
  ERR_clear_error();
}

/* A file we cannot open is a deployment problem (EIO); one we can open but not use is a wrong
 * file (EINVAL). */
static int check_readable(const char *what, const char *path) {
  FILE *f = fopen(path, "r");
  if (f) {
    fclose(f);
    return 0;
  }
  log_line(EXTPROC_LOG_ERROR, "TLS: cannot read the %s file %s: %s", what, path, strerror(errno));
  return EXTPROC_EIO;
}

static int load_failed(const char *what, const char *path) {
  char reason[160];
  take_openssl_error(reason, sizeof(reason));
  log_line(EXTPROC_LOG_ERROR, "TLS: the %s file %s is not usable: %s", what, path, reason);
  return EXTPROC_EINVAL;
}

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg) {
  (void)arg;
  unsigned char *chosen;
  if (SSL_select_next_proto(&chosen, outlen, ALPN_H2, sizeof(ALPN_H2), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    tls_conn *t = SSL_get_app_data(ssl);
    if (t) t->alpn_refused = true;
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol (RFC 7301, section 3.2) */
  }
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

static int load_client_ca(SSL_CTX *ctx, const char *path) {
  int rv = check_readable("client CA", path);
  if (rv != 0) return rv;
  if (SSL_CTX_load_verify_locations(ctx, path, NULL) != 1) return load_failed("client CA", path);
  STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(path);
  if (!names) return load_failed("client CA", path);
  SSL_CTX_set_client_CA_list(ctx, names); /* named in the CertificateRequest */
  /* A client without a certificate signed by one of these CAs is refused in the handshake. */
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  return 0;
}

static int configure(SSL_CTX *ctx, char *const paths[TLS_FILE_COUNT]) {
  int rv;
  if ((rv = check_readable("certificate", paths[0])) != 0 ||
      (rv = check_readable("private key", paths[1])) != 0)
    return rv;
  if (SSL_CTX_use_certificate_chain_file(ctx, paths[0]) != 1)
    return load_failed("certificate", paths[0]);
  if (SSL_CTX_use_PrivateKey_file(ctx, paths[1], SSL_FILETYPE_PEM) != 1)
    return load_failed("private key", paths[1]);
  if (SSL_CTX_check_private_key(ctx) != 1) return load_failed("private key", paths[1]);
  if (paths[2] && (rv = load_client_ca(ctx, paths[2])) != 0) return rv;
  /* RFC 9113, section 9.2: HTTP/2 needs TLS 1.2 or later; older versions have known attacks. */
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1 ||
      SSL_CTX_set_session_id_context(ctx, SESSION_ID_CONTEXT, sizeof(SESSION_ID_CONTEXT) - 1) != 1)
    return load_failed("certificate", paths[0]);
  /* Renegotiation (TLS 1.2) lets a client make the server redo expensive work at will; HTTP/2
   * forbids it anyway (RFC 9113, section 9.2.1). */
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  /* Idle connections give their record buffers back: thousands of Envoy connections may idle. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
  return 0;
}

static int build_context(char *const paths[TLS_FILE_COUNT], SSL_CTX **out) {
  ERR_clear_error();
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    ERR_clear_error();
    return EXTPROC_ENOMEM;
  }
  const int rv = configure(ctx, paths);
  if (rv != 0) {
    SSL_CTX_free(ctx);
    return rv;
  }
  *out = ctx;
  return 0;
}

/* "subject ..., serial ..., valid until ..." of the context's certificate, for the log. */
static void describe_certificate(SSL_CTX *ctx, char *out, size_t cap) {
  X509 *cert = SSL_CTX_get0_certificate(ctx);
  char subject[256] = "?", serial[80] = "?", until[40] = "?";
  if (cert) {
    X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex) snprintf(serial, sizeof(serial), "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem && ASN1_TIME_print(mem, X509_get0_notAfter(cert)) == 1) {
      const int n = BIO_read(mem, until, sizeof(until) - 1);
      until[n > 0 ? n : 0] = '\0';
    }
    BIO_free(mem);
  }
  snprintf(out, cap, "subject %s, serial %s, valid until %s", subject, serial, until);
}

static void stamp_files(char *const paths[TLS_FILE_COUNT], file_stamp stamps[TLS_FILE_COUNT]) {
  for (int i = 0; i < TLS_FILE_COUNT; i++) {
    struct stat st;
    stamps[i] = (file_stamp){0};
    if (!paths[i] || stat(paths[i], &st) != 0) continue;
    stamps[i] = (file_stamp){.exists = true,
                             .dev = st.st_dev,
                             .ino = st.st_ino,
                             .size = st.st_size,
                             .mtime = st.st_mtim};
  }
}

static bool same_stamp(const file_stamp *a, const file_stamp *b) {
  return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static char *copy_path(const char *path) { return path ? strdup(path) : NULL; }

void tls_store_free(tls_store *s) {
  if (!s) return;
  SSL_CTX_free(s->ctx);
  for (int i = 0; i < TLS_FILE_COUNT; i++)
    free(s->paths[i]);
  uv_mutex_destroy(&s->ctx_lock);
  uv_mutex_destroy(&s->reload_lock);
  free(s);
}

int tls_store_new(tls_store **out, const tls_files *files) {
  *out = NULL;
  tls_store *s = calloc(1, sizeof(*s));
  if (!s) return EXTPROC_ENOMEM;
  if (uv_mutex_init(&s->ctx_lock) != 0) {
    free(s);
    return EXTPROC_ENOMEM;
  }
  if (uv_mutex_init(&s->reload_lock) != 0) {
    uv_mutex_destroy(&s->ctx_lock);
    free(s);
    return EXTPROC_ENOMEM;
  }
  s->paths[0] = copy_path(files->cert_file);
  s->paths[1] = copy_path(files->key_file);
  s->paths[2] = copy_path(files->client_ca_file);
  if (!s->paths[0] || !s->paths[1] || (files->client_ca_file && !s->paths[2])) {
    tls_store_free(s);
    return EXTPROC_ENOMEM;
  }
  stamp_files(s->paths, s->stamps);
  const int rv = build_context(s->paths, &s->ctx);
  if (rv != 0) {
    tls_store_free(s);
    return rv;
  }
  char what[512];
  describe_certificate(s->ctx, what, sizeof(what));
  log_line(EXTPROC_LOG_INFO, "TLS: serving %s%s", what,
           s->paths[2] ? "; client certificates required (mutual TLS)" : "");
  *out = s;
  return 0;
}

int tls_store_reload(tls_store *s, transport_stats *stats, const char *why) {
  uv_mutex_lock(&s->reload_lock);
  stamp_files(s->paths, s->stamps); /* before reading: a change from now on is seen again */
  SSL_CTX *fresh = NULL;
  const int rv = build_context(s->paths, &fresh);
  if (rv != 0) {
    uv_mutex_unlock(&s->reload_lock);
    atomic_fetch_add(&stats->tls_reloads_failed_total, 1);
    log_line(EXTPROC_LOG_ERROR,
             "TLS: reload (%s) failed: %s; new connections still get the previous certificate", why,
             extproc_strerror(rv));
    return rv;
  }
  uv_mutex_lock(&s->ctx_lock);
  SSL_CTX *old = s->ctx;
  s->ctx = fresh;
  uv_mutex_unlock(&s->ctx_lock);
  SSL_CTX_free(old); /* open connections hold their own references */
  uv_mutex_unlock(&s->reload_lock);
  atomic_fetch_add(&stats->tls_reloads_ok_total, 1);
  char what[512];
  describe_certificate(fresh, what, sizeof(what));
  log_line(EXTPROC_LOG_INFO, "TLS: reloaded (%s): new connections get %s", why, what);
  return 0;
}

bool tls_store_files_changed(tls_store *s) {
  file_stamp now[TLS_FILE_COUNT];
  stamp_files(s->paths, now);
  uv_mutex_lock(&s->reload_lock);
  bool changed = false;
  for (int i = 0; i < TLS_FILE_COUNT; i++)
    changed = changed || !same_stamp(&now[i], &s->stamps[i]);
  uv_mutex_unlock(&s->reload_lock);
  return changed;
}

/* ---- One connection --------------------------------------------------------------------- */

tls_conn *tls_conn_new(tls_store *s) {
  tls_conn *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  uv_mutex_lock(&s->ctx_lock);
  t->ssl = SSL_new(s->ctx); /* takes its own reference to the context */
  uv_mutex_unlock(&s->ctx_lock);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->ssl || !t->rbio || !t->wbio) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    SSL_free(t->ssl);
    free(t);
    ERR_clear_error();
    return NULL;
  }
  /* An empty read BIO means "no more input yet" (SSL_ERROR_WANT_READ), not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_app_data(t->ssl, t);
  SSL_set_accept_state(t->ssl);
  return t;
}

void tls_conn_free(tls_conn *t) {
  if (!t) return;
  SSL_free(t->ssl); /* frees both BIOs */
  free(t);
}

bool tls_conn_feed(tls_conn *t, const uint8_t *data, size_t len) {
  while (len > 0) {
    const int chunk = len > INT32_MAX ? INT32_MAX : (int)len;
    const int n = BIO_write(t->rbio, data, chunk);
    if (n <= 0) return false;
    data += n;
    len -= (size_t)n;
  }
  return true;
}

tls_step tls_conn_handshake(tls_conn *t) {
  if (t->established) return TLS_STEP_DONE;
  ERR_clear_error();
  const int rv = SSL_do_handshake(t->ssl);
  if (rv == 1) {
    t->established = true;
    return TLS_STEP_DONE;
  }
  const int err = SSL_get_error(t->ssl, rv);
  if (err == SSL_ERROR_WANT_READ) return TLS_STEP_WANT_INPUT;
  return TLS_STEP_FAILED; /* the error stays queued for tls_conn_error() */
}

bool tls_conn_established(const tls_conn *t) { return t->established; }

void tls_conn_error(const tls_conn *t, char *out, size_t cap) {
  if (t->alpn_refused) {
    snprintf(out, cap, "the client offered ALPN without h2 (this port speaks HTTP/2 only)");
    ERR_clear_error();
    return;
  }
  const long verify = SSL_get_verify_result(t->ssl);
  char reason[160];
  take_openssl_error(reason, sizeof(reason));
  if (verify != X509_V_OK)
    snprintf(out, cap, "client certificate refused: %s (%s)", X509_verify_cert_error_string(verify),
             reason);
  else
    snprintf(out, cap, "%s", reason);
}

void tls_conn_describe(const tls_conn *t, char *out, size_t cap) {
  const unsigned char *alpn = NULL;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
  snprintf(out, cap, "%s, %s, ALPN %.*s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl),
           alpn_len ? (int)alpn_len : 4, alpn_len ? (const char *)alpn : "none");
}

ssize_t tls_conn_read(tls_conn *t, uint8_t *buf, size_t cap) {
  ERR_clear_error();
  const int n = SSL_read(t->ssl, buf, cap > INT32_MAX ? INT32_MAX : (int)cap);
  if (n > 0) return n;
  const int err = SSL_get_error(t->ssl, n);
  if (err == SSL_ERROR_WANT_READ) return 0;
  ERR_clear_error(); /* close_notify or a bad record: the caller closes */
  return -1;
}

bool tls_conn_output(tls_conn *t, const uint8_t *plain, size_t plain_len, uint8_t **buf,
                     size_t *cap, size_t *len) {
  ERR_clear_error();
  while (plain_len > 0) { /* memory BIOs take everything: no partial writes */
    const int chunk = plain_len > INT32_MAX ? INT32_MAX : (int)plain_len;
    const int n = SSL_write(t->ssl, plain, chunk);
    if (n <= 0) {
      ERR_clear_error();
      return false;
    }
    plain += n;
    plain_len -= (size_t)n;
  }
  const size_t pending = BIO_ctrl_pending(t->wbio);
  if (pending == 0) return true;
  if (*len + pending > *cap) {
    size_t grown = *cap ? *cap : 16384;
    while (grown < *len + pending)
      grown *= 2;
    uint8_t *nb = realloc(*buf, grown);
    if (!nb) return false;
    *buf = nb;
    *cap = grown;
  }
  const int n = BIO_read(t->wbio, *buf + *len, (int)pending);
  if (n > 0) *len += (size_t)n;
  return true;
}

bool tls_conn_shutdown(tls_conn *t) {
  if (t->shutdown_sent || !t->established) return false;
  t->shutdown_sent = true;
  ERR_clear_error();
  (void)SSL_shutdown(t->ssl); /* queues close_notify; we do not wait for the peer's */
  ERR_clear_error();
  return true;
}
