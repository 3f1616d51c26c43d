/* The peer of a connection: its address for log lines, and naming the protocol of clients that
 * do not speak HTTP/2, instead of nghttp2's "bad client magic". */
#include "transport/peer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "transport/connection.h"

void peer_describe(const struct sockaddr_storage *ss, const char *unix_path, char *out,
                   size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    snprintf(out, cap, "[%s]:%u", host, ntohs(a->sin6_port));
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    snprintf(out, cap, "%s:%u", host, ntohs(a->sin_port));
  } else {
    snprintf(out, cap, "unix:%s", unix_path ? unix_path : "?");
  }
}

void conn_log(const connection *c, extproc_log_level level, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  const log_context ctx = {.peer = c->peer};
  va_list ap;
  va_start(ap, fmt);
  log_emit(level, &ctx, fmt, ap);
  va_end(ap);
}

/* ---- What a client that is not an HTTP/2 client speaks ---------------------------------- */

typedef enum foreign_protocol {
  FOREIGN_UNKNOWN,
  FOREIGN_TLS,
  FOREIGN_HTTP1,
  FOREIGN_HTTP2 /* cleartext HTTP/2, on a TLS port */
} foreign_protocol;

/* A TLS record of type handshake (22) with major version 3: every ClientHello from SSL 3.0 to
 * TLS 1.3 starts so (RFC 8446, section 5.1). */
static bool is_tls(const uint8_t *d, size_t len) { return len >= 2 && d[0] == 0x16 && d[1] == 3; }

/* An HTTP/1.x request line (RFC 9112, section 3): a method token, a space, the target, and
 * " HTTP/1.x" before the line's end. When the line's end was not received, the method and a
 * printable rest are taken as enough. */
static bool is_http1(const uint8_t *d, size_t len) {
  size_t i = 0;
  while (i < len && i < 20 && d[i] >= 'A' && d[i] <= 'Z')
    i++;
  if (i == 0 || i == len || d[i] != ' ') return false;
  const uint8_t *nl = memchr(d, '\n', len);
  size_t end = nl ? (size_t)(nl - d) : len;
  if (nl && end > 0 && d[end - 1] == '\r') end--;
  for (size_t j = i; j < end; j++)
    if (d[j] < 0x20 || d[j] == 0x7f) return false;
  if (!nl) return true;
  static const char version[] = " HTTP/1.";
  const size_t vlen = sizeof(version) - 1;
  return end >= i + vlen + 1 && memcmp(d + end - vlen - 1, version, vlen) == 0 &&
         d[end - 1] >= '0' && d[end - 1] <= '9';
}

/* The start of the HTTP/2 connection preface (RFC 9113, section 3.4). */
static bool is_h2_preface(const uint8_t *d, size_t len) {
  static const char preface[] = "PRI * HTTP/2.0";
  return len >= sizeof(preface) - 1 && memcmp(d, preface, sizeof(preface) - 1) == 0;
}

static foreign_protocol classify(const uint8_t *d, size_t len) {
  if (is_tls(d, len)) return FOREIGN_TLS;
  if (is_h2_preface(d, len)) return FOREIGN_HTTP2;
  if (is_http1(d, len)) return FOREIGN_HTTP1;
  return FOREIGN_UNKNOWN;
}

/* Inside an established TLS session (the client offered no ALPN, so nothing refused it
 * earlier): only an HTTP/1.x request gets an answer. */
static void refuse_foreign_in_tls(connection *c, const uint8_t *data, size_t len);

/* Best effort, then the caller closes: an HTTP/1.1 client (curl, a browser, an Envoy cluster
 * left at its HTTP/1.1 default) shows the status and the reason instead of a bare reset. */
static void answer_http1(connection *c) {
  static const char cleartext[] =
      "This port serves gRPC (Envoy ext_proc) over cleartext HTTP/2 with prior knowledge only.\n"
      "Connect with HTTP/2 (h2c); an Envoy cluster needs http2_protocol_options.\n";
  static const char over_tls[] =
      "This port serves gRPC (Envoy ext_proc) over HTTP/2 over TLS only.\n"
      "Offer ALPN h2; an Envoy cluster needs http2_protocol_options.\n";
  const char *body = c->tls ? over_tls : cleartext;
  char reply[512];
  const int n = snprintf(reply, sizeof(reply),
                         "HTTP/1.1 505 HTTP Version Not Supported\r\n"
                         "content-type: text/plain\r\n"
                         "connection: close\r\n"
                         "content-length: %zu\r\n\r\n%s",
                         strlen(body), body);
  conn_write_now(c, (const uint8_t *)reply, (size_t)n);
}

void peer_refuse_foreign(connection *c, const uint8_t *data, size_t len) {
  if (c->tls) {
    refuse_foreign_in_tls(c, data, len);
    return;
  }
  switch (classify(data, len)) {
  case FOREIGN_TLS:
    conn_log(c, EXTPROC_LOG_WARN,
             "TLS handshake on a cleartext HTTP/2 port: closed (this port speaks gRPC over "
             "HTTP/2 without TLS; connect without TLS)");
    break;
  case FOREIGN_HTTP1:
    answer_http1(c);
    conn_log(c, EXTPROC_LOG_WARN,
             "HTTP/1.x request on a cleartext HTTP/2 port: answered 505 and closed (this port "
             "speaks gRPC over HTTP/2 with prior knowledge; an Envoy cluster needs "
             "http2_protocol_options)");
    break;
  case FOREIGN_HTTP2: /* nghttp2 would have taken it */
  case FOREIGN_UNKNOWN:
    conn_log(c, EXTPROC_LOG_WARN,
             "not an HTTP/2 client (no HTTP/2 connection preface): closed (this port speaks "
             "gRPC over cleartext HTTP/2)");
    break;
  }
}

bool peer_refuse_handshake(connection *c, const char *why) {
  switch (classify(c->head, c->head_len)) {
  case FOREIGN_TLS:
    conn_log(c, EXTPROC_LOG_WARN, "TLS handshake failed: %s; closed", why);
    return true;
  case FOREIGN_HTTP2:
    conn_log(c, EXTPROC_LOG_WARN,
             "cleartext HTTP/2 on a TLS port: closed (this port speaks gRPC over HTTP/2 over "
             "TLS; an Envoy cluster needs a TLS transport_socket)");
    return false;
  case FOREIGN_HTTP1:
    conn_log(c, EXTPROC_LOG_WARN,
             "cleartext HTTP/1.x request on a TLS port: closed (this port speaks gRPC over "
             "HTTP/2 over TLS)");
    return false;
  case FOREIGN_UNKNOWN: break;
  }
  conn_log(c, EXTPROC_LOG_WARN,
           "not a TLS client (no TLS ClientHello) on a TLS port: closed (this port speaks gRPC "
           "over HTTP/2 over TLS)");
  return false;
}

static void refuse_foreign_in_tls(connection *c, const uint8_t *data, size_t len) {
  if (classify(data, len) == FOREIGN_HTTP1) {
    answer_http1(c);
    conn_log(c, EXTPROC_LOG_WARN,
             "HTTP/1.x request over TLS without ALPN: answered 505 and closed (this port speaks "
             "gRPC over HTTP/2; offer ALPN h2)");
    return;
  }
  conn_log(c, EXTPROC_LOG_WARN,
           "not an HTTP/2 client (no HTTP/2 connection preface after the TLS handshake): closed");
}
