/* What the transport knows of the peer at the other end of a connection: its address, for log
 * lines, and, when it does not speak HTTP/2 at all, what it speaks instead (peer.c). */
#ifndef EXTPROC_PEER_H
#define EXTPROC_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "extproc/extproc.h"
#include "transport/transport.h"

typedef struct connection connection;

/* Room for "[IPV6%SCOPE]:PORT" or "unix:" and a unix socket path (sun_path is 108 bytes). */
enum { PEER_TEXT_BYTES = 120 };

/* The HTTP/2 client connection preface (RFC 9113, section 3.4) is 24 bytes: a peer whose first
 * bytes differ is not an HTTP/2 client, and those bytes are enough to tell what it is. */
enum { PEER_HEAD_BYTES = 24 };

/* Writes the peer whose address accept() returned into `out` ("HOST:PORT", "[IPV6]:PORT"), or
 * "unix:PATH" with the listener's path (`unix_path`) for a unix socket, whose peers have no
 * name. */
void peer_describe(const struct sockaddr_storage *ss, const char *unix_path, char *out, size_t cap);

/* A client spoke something other than HTTP/2 (nghttp2 found no connection preface). `data` is
 * what it sent first. Logs one warning naming the protocol and the peer, and for an HTTP/1.x
 * request answers with a short 505 explaining the port's protocol; the caller closes. */
void peer_refuse_foreign(connection *c, const uint8_t *data, size_t len);

/* The TLS handshake of `c` failed for `why` (tls_conn_error). Logs one warning: the reason, or,
 * when the client's first bytes (c->head) are not a TLS ClientHello, what it speaks instead
 * (cleartext HTTP/2, HTTP/1.x). Returns true if the client speaks TLS, so that the alert is worth
 * sending; the caller closes. */
bool peer_refuse_handshake(connection *c, const char *why);

/* A log line about connection `c`, naming its peer. printf-style. */
void conn_log(const connection *c, extproc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
