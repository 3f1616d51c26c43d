/* IdempotencyExtProcService, after the IETF httpapi draft "The Idempotency-Key HTTP Header
 * Field": a POST or PATCH carrying the key header goes upstream once; its response is kept in
 * Redis, and a repeat with the same key gets it back as an immediate response.
 *
 *   request (headers, then the buffered body): the fingerprint is SHA-256 over method, path and
 *     the body's SHA-256. One atomic Redis script claims the key (SET NX with the in-flight
 *     TTL) or returns what it holds: the claim of a request in flight (409 Conflict, the
 *     draft's answer to a concurrent repeat), or a stored response, replayed. A fingerprint
 *     that differs from the one stored gets 422 (the draft: a key reused with another
 *     payload).
 *   response (headers, then the buffered body): the owner of the claim stores status, the
 *     headers worth replaying and the body with the TTL, if its claim is still the one in Redis
 *     (a script compares and sets). A 5xx response, or an exchange that ends without a response,
 *     releases the claim instead, so the client's retry is processed afresh: the draft lets the
 *     server choose what it keeps, and a 5xx says the request may not have taken effect.
 *
 * Every Redis round trip is deferred (extproc_request_defer) and answered from hiredis's
 * callback on the stream's own loop. When Redis cannot answer in time (down, slow, or no loop
 * as in the testing harness), EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR decides: 503 with
 * retry-after (the default: a retry with the same key is safe), or fail-open (the request goes
 * upstream unprotected and its response is not stored). */
#include <ctype.h>
#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idempotency.h"
#include "internal.h"

/* The draft sets no limit; 255 is what payment APIs that use the header accept, and keeps a
 * hostile key from making a large Redis key. */
enum { KEY_MAX = 255, TOKEN_BYTES = 8 };
static const char KEY_PREFIX[] = "idempotency:";

/* KEYS[1] the key; ARGV[1] the claim; ARGV[2] its TTL in ms. 1 when claimed, else the value. */
static const char CLAIM_SCRIPT[] =
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end "
    "return redis.call('GET', KEYS[1])";
/* KEYS[1] the key; ARGV[1] our claim; ARGV[2] the response; ARGV[3] its TTL in ms. */
static const char STORE_SCRIPT[] = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
                                   "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1";
/* KEYS[1] the key; ARGV[1] our claim. */
static const char RELEASE_SCRIPT[] = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
                                     "return redis.call('DEL', KEYS[1])";

typedef struct idem_app {
  struct idem_app *next; /* every app stays reachable until exit: see keep() */
  idem_settings s;
  idem_links *links;
} idem_app;

/* Per request. */
typedef struct idem_ctx {
  idem_app *app;
  EVP_MD_CTX *body_md; /* while the request body is read */
  const char *key;     /* the Redis key; NULL when the request is not ours */
  char fp[IDEM_FP_HEX + 1];
  char claim[sizeof("in-flight:") + IDEM_FP_HEX + 2 * TOKEN_BYTES + 2];
  idem_link *link;
  bool owner;   /* we hold the claim: the response must be stored or the claim released */
  bool settled; /* stored or released */
  uint32_t status;
  char *headers; /* the response headers worth replaying, "name: value\n" lines */
  size_t headers_len;
} idem_ctx;

/* ---- Answers --------------------------------------------------------------------------- */

/* A problem details body (RFC 9457), as the draft's examples answer. */
static extproc_result problem(extproc_request *req, uint32_t status, const char *title) {
  char body[256];
  const int n = snprintf(body, sizeof(body), "{\"title\":\"%s\",\"status\":%u}", title, status);
  if (extproc_immediate_response(req, status) != 0 ||
      extproc_immediate_header_set(req, "content-type", "application/problem+json") != 0 ||
      extproc_immediate_body(req, body, (size_t)n) != 0)
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result redis_failed(extproc_request *req, const idem_ctx *c, const char *why) {
  if (c->app->s.on_error == IDEM_FAIL_OPEN) {
    extproc_log(req, EXTPROC_LOG_WARN, "idempotency store unavailable (%s): request let through",
                why);
    return EXTPROC_CONTINUE;
  }
  extproc_log(req, EXTPROC_LOG_WARN, "idempotency store unavailable (%s): answered 503", why);
  if (problem(req, 503, "Idempotency store unavailable") != EXTPROC_CONTINUE ||
      extproc_immediate_header_set(req, "retry-after", "1") != 0)
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result replay(extproc_request *req, const idem_record *r) {
  if (extproc_immediate_response(req, r->status) != 0) return EXTPROC_FAIL;
  const char *p = r->headers, *end = r->headers + r->headers_len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *sep = memchr(p, ':', (size_t)(nl - p));
    char name[64], value[1024];
    if (sep && sep - p < (long)sizeof(name) && nl - sep - 2 < (long)sizeof(value) && nl > sep + 1) {
      memcpy(name, p, (size_t)(sep - p));
      name[sep - p] = '\0';
      memcpy(value, sep + 2, (size_t)(nl - sep - 2));
      value[nl - sep - 2] = '\0';
      if (extproc_immediate_header_set(req, name, value) != 0) return EXTPROC_FAIL;
    }
    p = nl + 1;
  }
  /* Tells the client (and its logs) that nothing was processed this time. */
  if (extproc_immediate_header_set(req, "idempotent-replayed", "true") != 0 ||
      extproc_immediate_body(req, r->body, r->body_len) != 0)
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

/* ---- Request: fingerprint and claim ---------------------------------------------------- */

static void hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

/* SHA-256 over method, NUL, path, NUL and the body's SHA-256. */
static int fingerprint(extproc_request *req, idem_ctx *c) {
  const extproc_request_info *info = extproc_request_get_info(req);
  unsigned char body_sum[EVP_MAX_MD_SIZE], sum[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  const bool body_ok = EVP_DigestFinal_ex(c->body_md, body_sum, &n) == 1 && n == 32;
  EVP_MD_CTX_free(c->body_md);
  c->body_md = NULL;
  if (!body_ok) return -1;
  const char *method = info->method ? info->method : "", *path = info->path ? info->path : "";
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  const bool ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
                  EVP_DigestUpdate(md, method, strlen(method) + 1) &&
                  EVP_DigestUpdate(md, path, strlen(path) + 1) &&
                  EVP_DigestUpdate(md, body_sum, 32) && EVP_DigestFinal_ex(md, sum, &n) == 1;
  EVP_MD_CTX_free(md);
  if (!ok || n != 32) return -1;
  hex(sum, 32, c->fp);
  return 0;
}

static void on_claim(void *arg, const redisReply *reply, const char *error) {
  extproc_request *req = arg;
  idem_ctx *c = extproc_request_context(req);
  extproc_result result;
  idem_record r;
  int kind;
  if (error) {
    result = redis_failed(req, c, error);
  } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
    c->owner = true;
    result = EXTPROC_CONTINUE;
  } else if (reply->type != REDIS_REPLY_STRING ||
             !(kind = idem_record_parse(reply->str, reply->len, &r))) {
    result = redis_failed(req, c, "the key holds a value this processor did not write");
  } else if (strcmp(r.fp, c->fp) != 0) {
    result = problem(req, 422, "Idempotency-Key reused with a different request");
  } else if (kind == 2) {
    result = problem(req, 409, "A request with this Idempotency-Key is being processed");
  } else {
    result = replay(req, &r);
  }
  extproc_request_resume(req, result);
}

static extproc_result claim(extproc_request *req, idem_ctx *c) {
  if (fingerprint(req, c) != 0) return EXTPROC_FAIL;
  unsigned char token[TOKEN_BYTES];
  char token_hex[2 * TOKEN_BYTES + 1];
  if (RAND_bytes(token, sizeof(token)) != 1) return EXTPROC_FAIL;
  hex(token, sizeof(token), token_hex);
  snprintf(c->claim, sizeof(c->claim), "in-flight:%s:%s", c->fp, token_hex);
  void *loop = extproc_request_loop(req);
  if (!loop) return redis_failed(req, c, "no event loop to reach Redis from");
  if (!(c->link = idem_link_for(c->app->links, loop))) return EXTPROC_FAIL;
  char ttl[24];
  snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)c->app->s.in_flight_ttl_ms);
  const char *argv[] = {"EVAL", CLAIM_SCRIPT, "1", c->key, c->claim, ttl};
  if (idem_link_command(c->link, on_claim, req, 6, argv, NULL) != 0)
    return redis_failed(req, c, "not connected");
  extproc_request_defer(req);
  return EXTPROC_DEFER;
}

/* The key header's value: an sf-string per the draft ("..."), or a bare token as many
 * clients send. Returns the key in request memory, or NULL if it is not acceptable. */
static const char *read_key(extproc_request *req, const char *value) {
  size_t len = strlen(value);
  if (len >= 2 && value[0] == '"' && value[len - 1] == '"') value++, len -= 2;
  if (len == 0 || len > KEY_MAX) return NULL;
  for (size_t i = 0; i < len; i++)
    if (!isgraph((unsigned char)value[i]) || value[i] == '"' || value[i] == '\\') return NULL;
  char *key = extproc_request_alloc(req, sizeof(KEY_PREFIX) + len);
  if (!key) return NULL;
  memcpy(key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
  memcpy(key + sizeof(KEY_PREFIX) - 1, value, len);
  key[sizeof(KEY_PREFIX) - 1 + len] = '\0';
  return key;
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  idem_ctx *c = ctx;
  c->app = extproc_request_user_data(req);
  const char *method = extproc_request_get_info(req)->method;
  /* The draft's scope: the non-idempotent methods. */
  if (!method || (strcmp(method, "POST") != 0 && strcmp(method, "PATCH") != 0))
    return EXTPROC_CONTINUE;
  const char *values[2];
  const size_t n = extproc_header_get_all(req, c->app->s.header, values, 2);
  if (n == 0) return EXTPROC_CONTINUE;
  const char *key = n == 1 ? read_key(req, values[0]) : NULL;
  if (!key) return problem(req, 400, "Invalid Idempotency-Key header");
  c->key = key;
  c->body_md = EVP_MD_CTX_new();
  if (!c->body_md || !EVP_DigestInit_ex(c->body_md, EVP_sha256(), NULL)) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? claim(req, c) : EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  idem_ctx *c = ctx;
  if (!c->body_md) return EXTPROC_CONTINUE; /* not ours, or already claimed */
  size_t len;
  const uint8_t *body = extproc_body(req, &len);
  if (!EVP_DigestUpdate(c->body_md, body, len)) return EXTPROC_FAIL;
  return extproc_request_end_of_stream(req) ? claim(req, c) : EXTPROC_CONTINUE;
}

/* ---- Response: store or release -------------------------------------------------------- */

static void on_settled(void *arg, const redisReply *reply, const char *error) {
  extproc_request *req = arg;
  idem_ctx *c = extproc_request_context(req);
  c->settled = true; /* whatever happened: the claim's TTL ends it at worst */
  if (error)
    extproc_log(req, EXTPROC_LOG_WARN, "idempotency: response not stored (%s)", error);
  else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 0)
    extproc_log(req, EXTPROC_LOG_WARN,
                "idempotency: the claim expired before the response came; not stored");
  extproc_request_resume(req, EXTPROC_CONTINUE);
}

static extproc_result settle(extproc_request *req, idem_ctx *c, const uint8_t *body,
                             size_t body_len) {
  const bool keep = c->status >= 100 && c->status < 500;
  char ttl[24];
  snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)c->app->s.ttl_ms);
  size_t record_len = 0;
  const char *record = keep ? idem_record_build(req, c->fp, c->status, c->headers, c->headers_len,
                                                body, body_len, &record_len)
                            : NULL;
  if (keep && !record) return EXTPROC_FAIL;
  const char *argv[] = {"EVAL", keep ? STORE_SCRIPT : RELEASE_SCRIPT, "1", c->key, c->claim, record,
                        ttl};
  size_t lens[] = {4,          strlen(argv[1]), 1, strlen(c->key), strlen(c->claim),
                   record_len, strlen(ttl)};
  if (idem_link_command(c->link, on_settled, req, keep ? 7 : 5, argv, lens) != 0) {
    extproc_log(req, EXTPROC_LOG_WARN,
                "idempotency: redis unavailable, response not stored; the claim expires after "
                "its in-flight TTL");
    c->settled = true;
    return EXTPROC_CONTINUE;
  }
  extproc_request_defer(req);
  return EXTPROC_DEFER;
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  idem_ctx *c = ctx;
  if (!c->owner) return EXTPROC_CONTINUE;
  c->status = extproc_request_get_info(req)->response_status;
  size_t count, len = 0;
  const extproc_header *h = extproc_headers(req, &count);
  for (size_t i = 0; i < count; i++)
    if (idem_header_replayed(h[i].name)) len += h[i].name_len + 2 + h[i].value_len + 1;
  if (len && !(c->headers = extproc_request_alloc(req, len))) return EXTPROC_FAIL;
  for (size_t i = 0; i < count; i++) {
    if (!idem_header_replayed(h[i].name)) continue;
    c->headers_len += (size_t)sprintf(c->headers + c->headers_len, "%s: ", h[i].name);
    memcpy(c->headers + c->headers_len, h[i].value, h[i].value_len);
    c->headers_len += h[i].value_len;
    c->headers[c->headers_len++] = '\n';
  }
  return extproc_request_end_of_stream(req) ? settle(req, c, NULL, 0) : EXTPROC_CONTINUE;
}

static extproc_result on_response_body(extproc_request *req, void *ctx) {
  idem_ctx *c = ctx;
  if (!c->owner || c->settled) return EXTPROC_CONTINUE;
  size_t len;
  const uint8_t *body = extproc_body_accumulate(req, &len);
  if (!body) {
    c->status = 0; /* too large to keep: release instead */
    extproc_log(req, EXTPROC_LOG_WARN, "idempotency: response body not kept (%s)",
                extproc_strerror(extproc_body_accumulate_error(req)));
  }
  if (!extproc_request_end_of_stream(req)) return EXTPROC_CONTINUE;
  return settle(req, c, body, body ? len : 0);
}

/* An exchange that ends while we hold the claim (the client left, the upstream never
 * answered): release it now rather than make repeats wait for the in-flight TTL. */
static void cleanup(void *ctx) {
  idem_ctx *c = ctx;
  EVP_MD_CTX_free(c->body_md);
  if (!c->owner || c->settled || !c->link) return;
  const char *argv[] = {"EVAL", RELEASE_SCRIPT, "1", c->key, c->claim};
  idem_link_send(c->link, 5, argv, NULL);
}

/* ---- The processor --------------------------------------------------------------------- */

/* The SDK has no hook for freeing a processor's user data, and the links belong to loops that
 * are closed by the time the processor is freed: so the settings and links live until the
 * process exits, reachable from this list (one entry per processor made). */
static pthread_mutex_t apps_lock = PTHREAD_MUTEX_INITIALIZER;
static idem_app *apps;

static void keep(idem_app *app) {
  pthread_mutex_lock(&apps_lock);
  app->next = apps;
  apps = app;
  pthread_mutex_unlock(&apps_lock);
}

extproc_processor *idempotency_processor_new(void) {
  idem_app *app = calloc(1, sizeof(*app));
  if (!app) return NULL;
  if (idem_settings_load(&app->s) != 0 || !(app->links = idem_links_new(&app->s))) {
    free(app);
    return NULL;
  }
  keep(app);
  const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "IdempotencyExtProcService",
      .context_size = sizeof(idem_ctx),
      .context_cleanup = cleanup,
      .request_headers = on_request_headers,
      .request_body = on_request_body,
      .response_headers = on_response_headers,
      .response_body = on_response_body,
      .user_data = app,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
