/* The stored form of a response, and which response headers are worth replaying. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char DONE[] = "done:", IN_FLIGHT[] = "in-flight:";

/* What a replay carries besides the status and body: the representation's metadata and the
 * headers a client acts on after a write (RFC 9110: content-type, content-language and
 * content-location describe the body; location names what a POST created; etag and
 * last-modified validate it; cache-control says how long it may be reused). Framing,
 * hop-by-hop, date, server, cookies and anything upstream-specific are left out: Envoy makes
 * its own framing, and a replay must not set a cookie twice. */
bool idem_header_replayed(const char *name) {
  static const char *const allowed[] = {
      "content-type", "content-language", "content-location", "location",
      "etag",         "last-modified",    "cache-control"};
  for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
    if (strcmp(name, allowed[i]) == 0) return true;
  return false;
}

static bool is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!strchr("0123456789abcdef", s[i]) || !s[i]) return false;
  return true;
}

int idem_record_parse(const char *value, size_t len, idem_record *out) {
  memset(out, 0, sizeof(*out));
  const char *end = value + len;
  size_t prefix;
  int kind;
  if (len > sizeof(DONE) - 1 && memcmp(value, DONE, sizeof(DONE) - 1) == 0) {
    prefix = sizeof(DONE) - 1;
    kind = 1;
  } else if (len > sizeof(IN_FLIGHT) - 1 && memcmp(value, IN_FLIGHT, sizeof(IN_FLIGHT) - 1) == 0) {
    prefix = sizeof(IN_FLIGHT) - 1;
    kind = 2;
  } else {
    return 0;
  }
  const char *p = value + prefix;
  if ((size_t)(end - p) < IDEM_FP_HEX + 1 || !is_hex(p, IDEM_FP_HEX)) return 0;
  memcpy(out->fp, p, IDEM_FP_HEX);
  p += IDEM_FP_HEX;
  if (kind == 2) return *p == ':' ? 2 : 0;
  if (*p++ != '\n') return 0;
  uint32_t status = 0;
  while (p < end && *p >= '0' && *p <= '9' && status < 1000)
    status = status * 10 + (uint32_t)(*p++ - '0');
  if (p >= end || *p++ != '\n' || status < 100 || status > 599) return 0;
  out->status = status;
  out->headers = p;
  /* Header lines end at an empty line. */
  while (p < end && *p != '\n') {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) return 0;
    p = nl + 1;
  }
  if (p >= end) return 0;
  out->headers_len = (size_t)(p - out->headers);
  out->body = (const uint8_t *)p + 1;
  out->body_len = (size_t)(end - p - 1);
  return 1;
}

char *idem_record_build(extproc_request *req, const char *fp, uint32_t status, const char *headers,
                        size_t headers_len, const uint8_t *body, size_t body_len, size_t *len) {
  char head[sizeof(DONE) + IDEM_FP_HEX + 16];
  const int n = snprintf(head, sizeof(head), "%s%s\n%u\n", DONE, fp, status);
  const size_t total = (size_t)n + headers_len + 1 + body_len;
  char *out = extproc_request_alloc(req, total);
  if (!out) return NULL;
  memcpy(out, head, (size_t)n);
  if (headers_len) memcpy(out + n, headers, headers_len);
  out[(size_t)n + headers_len] = '\n';
  if (body_len) memcpy(out + n + headers_len + 1, body, body_len);
  *len = total;
  return out;
}
