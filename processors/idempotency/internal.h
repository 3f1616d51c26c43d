/* What the idempotency processor's files share: settings, the per-loop Redis links and the
 * stored-response record. Everything here runs on a worker's loop thread unless said. */
#ifndef EXTPROC_PROCESSORS_IDEMPOTENCY_INTERNAL_H
#define EXTPROC_PROCESSORS_IDEMPOTENCY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <extproc/extproc.h>

/* ---- Settings (settings.c) ------------------------------------------------------------- */

typedef enum idem_on_error {
  IDEM_REJECT = 0,    /* answer 503 with retry-after: the client retries with the same key */
  IDEM_FAIL_OPEN = 1, /* let the request through unprotected */
} idem_on_error;

enum {
  IDEM_HEADER_MAX = 64, /* a header name longer than this is a configuration mistake */
  IDEM_ADDR_MAX = 256,  /* host:port or a unix socket path (sun_path holds 108 bytes) */
};

typedef struct idem_settings {
  char host[IDEM_ADDR_MAX]; /* TCP: an IP address (hiredis resolves names on the loop) */
  int port;
  char unix_path[IDEM_ADDR_MAX]; /* set instead of host for a unix socket */
  char address[IDEM_ADDR_MAX];   /* as configured, for log lines */
  uint64_t ttl_ms;               /* how long a stored response is kept */
  uint64_t in_flight_ttl_ms;     /* how long a claim lives without its response */
  uint32_t timeout_ms;           /* deadline of one Redis round trip */
  idem_on_error on_error;
  char header[IDEM_HEADER_MAX]; /* lower case, as Envoy sends header names */
} idem_settings;

/* Fills `s` from EXTPROC_IDEMPOTENCY_* (defaults for unset ones). Returns 0, or -1 after
 * logging the variable that is wrong. Any thread. */
int idem_settings_load(idem_settings *s);

/* ---- Redis links, one per worker loop (redis_link.c) ----------------------------------- */

typedef struct idem_links idem_links;
typedef struct idem_link idem_link;
struct redisReply;

/* A command's outcome: `reply` (not an error reply) or, with reply NULL, `error` (timed out,
 * connection lost, or Redis's error). Called exactly once, on the loop thread, never from
 * within idem_link_command(). */
typedef void (*idem_reply_fn)(void *arg, const struct redisReply *reply, const char *error);

/* The registry of one processor. Any thread. NULL on out-of-memory. Never freed: its links
 * belong to loops that are gone when the processor is freed (see extproc_request_loop). */
idem_links *idem_links_new(const idem_settings *s);

/* The link of `loop` (a uv_loop_t), made on first use. Any thread, but a link is used only on
 * its loop's thread. NULL on out-of-memory. */
idem_link *idem_link_for(idem_links *links, void *loop);

/* Sends a command (argv as in redisAsyncCommandArgv), connecting first if needed. Returns 0
 * when sent (`fn` is then called once, within the settings' timeout), or -1 when Redis is not
 * reachable now (down, or backing off after a failure; `fn` is not called). */
int idem_link_command(idem_link *link, idem_reply_fn fn, void *arg, int argc, const char **argv,
                      const size_t *lens);

/* Sends a command whose answer nobody waits for, if connected. */
void idem_link_send(idem_link *link, int argc, const char **argv, const size_t *lens);

/* ---- Stored responses (record.c) ------------------------------------------------------- */

enum { IDEM_FP_HEX = 64 }; /* a fingerprint: hex SHA-256 */

/* A response as stored: "done:<fingerprint>\n<status>\n<name>: <value>\n...\n\n<body>". */
typedef struct idem_record {
  char fp[IDEM_FP_HEX + 1];
  uint32_t status;
  const char *headers; /* "name: value\n" lines, not NUL-terminated */
  size_t headers_len;
  const uint8_t *body;
  size_t body_len;
} idem_record;

/* Reads a stored value. Returns 1 for a response (filled in, pointing into `value`), 2 for a
 * claim in flight ("in-flight:<fingerprint>:<token>"; fp filled in), 0 for anything else. */
int idem_record_parse(const char *value, size_t len, idem_record *out);

/* Builds the stored form of a response into memory of `req` (lives as long as it). Returns the
 * value and its length in *len, or NULL on out-of-memory. */
char *idem_record_build(extproc_request *req, const char *fp, uint32_t status, const char *headers,
                        size_t headers_len, const uint8_t *body, size_t body_len, size_t *len);

/* True for the response headers worth replaying (name in lower case). */
bool idem_header_replayed(const char *name);

#endif
