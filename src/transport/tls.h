/* TLS for the TCP listeners, with OpenSSL through memory BIOs: the socket I/O stays libuv's
 * (connection.c), and OpenSSL only transforms bytes. Input goes socket -> BIO_write(rbio) ->
 * SSL_read -> nghttp2; output goes nghttp2 -> SSL_write -> BIO_read(wbio) -> the connection's
 * one coalesced write per round.
 *
 *   tls_store  the server-wide SSL_CTX built from the certificate, key and client CA files, and
 *              its replacement on a reload. Worker threads take the current context when they
 *              accept (SSL_new holds a reference, so an open connection keeps its context after
 *              a reload); a reload swaps in a new one under a mutex and drops the store's
 *              reference to the old one.
 *   tls_conn   one connection's SSL object and its two memory BIOs. Loop thread only. */
#ifndef EXTPROC_TLS_H
#define EXTPROC_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "transport/transport.h"

/* The PEM files a store is built from. cert and key are both set; client_ca may be NULL (no
 * client certificates asked for). */
typedef struct tls_files {
  const char *cert_file;
  const char *key_file;
  const char *client_ca_file;
} tls_files;

typedef struct tls_store tls_store;
typedef struct tls_conn tls_conn;

/* Builds a store from `files` (copied). Returns 0, EXTPROC_EIO (a file cannot be read),
 * EXTPROC_EINVAL (a file holds no valid PEM certificate or key, or the key does not match the
 * certificate) or EXTPROC_ENOMEM, after logging one error line naming the file and the reason. */
int tls_store_new(tls_store **out, const tls_files *files);

/* Builds a new context from the same files and, if that works, makes new connections use it;
 * otherwise the current context stays, and one error line says why. `why` names the trigger in
 * the log line ("SIGHUP", "files changed", ...). Counts the result in `stats`. One reload at a
 * time; callable from any thread. Returns 0 or an error as tls_store_new. */
int tls_store_reload(tls_store *s, transport_stats *stats, const char *why);

/* True if one of the store's files was replaced or changed (inode, size or modification time)
 * since the context was last built or a reload was last tried. Any thread. */
bool tls_store_files_changed(tls_store *s);

/* Frees the store; connections still open keep their own reference to their context. */
void tls_store_free(tls_store *s);

/* A connection's TLS state, from the store's current context, waiting for a ClientHello. NULL
 * on out-of-memory. */
tls_conn *tls_conn_new(tls_store *s);
void tls_conn_free(tls_conn *t);

/* Hands bytes read from the socket to OpenSSL. False on out-of-memory. */
bool tls_conn_feed(tls_conn *t, const uint8_t *data, size_t len);

typedef enum tls_step { TLS_STEP_DONE, TLS_STEP_WANT_INPUT, TLS_STEP_FAILED } tls_step;

/* Advances the handshake with the input fed so far. Its output (and on failure the alert) waits
 * in the connection for tls_conn_take_output(). On TLS_STEP_FAILED, tls_conn_error() says why. */
tls_step tls_conn_handshake(tls_conn *t);

/* The handshake has completed. */
bool tls_conn_established(const tls_conn *t);

/* Why the handshake failed, as one phrase for a log line. */
void tls_conn_error(const tls_conn *t, char *out, size_t cap);

/* A description of the session for a debug line: protocol version, cipher, ALPN. */
void tls_conn_describe(const tls_conn *t, char *out, size_t cap);

/* Decrypted input: up to `cap` bytes into `buf`. Returns the byte count (> 0), 0 when nothing
 * more is buffered, or -1 when the peer ended the TLS session (close_notify) or sent something
 * invalid. */
ssize_t tls_conn_read(tls_conn *t, uint8_t *buf, size_t cap);

/* Encrypts `len` plaintext bytes (0 is fine) and appends everything the connection has to send
 * (handshake messages, alerts, records) to the buffer `*buf` (capacity `*cap`, grown with
 * realloc), whose used length is `*len`. False on out-of-memory or an OpenSSL error. */
bool tls_conn_output(tls_conn *t, const uint8_t *plain, size_t plain_len, uint8_t **buf,
                     size_t *cap, size_t *len);

/* Queues a close_notify (once; later calls return false). */
bool tls_conn_shutdown(tls_conn *t);

#endif
