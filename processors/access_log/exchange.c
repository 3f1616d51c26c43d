/* One exchange's record and its JSON line (see exchange.h). cJSON does the escaping; this file
 * makes sure what it is given is valid UTF-8, and redacts. */
#include "exchange.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REDACTED "[REDACTED]"

uint64_t al_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- UTF-8 (RFC 3629) */

/* The length of the well-formed UTF-8 sequence at p (n bytes available), or 0: overlong
 * forms, surrogates and code points past U+10FFFF are ill-formed. */
static size_t utf8_sequence(const uint8_t *p, size_t n) {
  uint8_t c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0)
    len = 2, cp = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0)
    len = 3, cp = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0)
    len = 4, cp = c & 0x07, min = 0x10000;
  else
    return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

/* True for valid UTF-8 without NUL (a NUL would end cJSON's C string early). */
static bool is_text(const uint8_t *p, size_t n) {
  for (size_t i = 0, k; i < n; i += k)
    if (p[i] == 0 || (k = utf8_sequence(p + i, n - i)) == 0) return false;
  return true;
}

/* A body cut at the cap may end inside a character: the length without that partial one. */
static size_t cut_partial_character(const uint8_t *p, size_t n) {
  size_t start = n;
  while (start > 0 && n - start < 4 && (p[start - 1] & 0xC0) == 0x80)
    start--;
  if (start == 0) return n;
  uint8_t lead = p[start - 1];
  size_t want = (lead & 0xE0) == 0xC0   ? 2
                : (lead & 0xF0) == 0xE0 ? 3
                : (lead & 0xF8) == 0xF0 ? 4
                                        : 1;
  return want > n - (start - 1) ? start - 1 : n;
}

char *al_utf8_copy(const char *s, size_t len) {
  /* Each bad byte becomes the 3 bytes of U+FFFD at most. */
  char *out = malloc(len * 3 + 1), *o = out;
  if (!out) return NULL;
  const uint8_t *p = (const uint8_t *)s;
  for (size_t i = 0; i < len;) {
    size_t k = p[i] ? utf8_sequence(p + i, len - i) : 0;
    if (k == 0) {
      memcpy(o, "\xEF\xBF\xBD", 3), o += 3, i++;
      continue;
    }
    memcpy(o, p + i, k), o += k, i += k;
  }
  *o = '\0';
  return out;
}

/* ---------------------------------------------------------------- recording */

void al_header_add(cJSON **obj, const al_settings *s, const char *name, const char *value,
                   size_t len) {
  if (!*obj && !(*obj = cJSON_CreateObject())) return;
  const bool redact = al_names_has(&s->redact_headers, name);
  cJSON *old = cJSON_GetObjectItemCaseSensitive(*obj, name);
  if (old && redact) return; /* already "[REDACTED]" */
  char *text = redact ? strdup(REDACTED) : al_utf8_copy(value, len);
  if (text && old) {
    size_t a = strlen(old->valuestring), b = strlen(text);
    char *joined = malloc(a + 2 + b + 1);
    if (joined) {
      memcpy(joined, old->valuestring, a);
      memcpy(joined + a, ", ", 2);
      memcpy(joined + a + 2, text, b + 1);
    }
    free(text);
    text = joined;
  }
  cJSON *item = text ? cJSON_CreateString(text) : NULL;
  free(text);
  if (!item) return;
  if (old)
    cJSON_ReplaceItemInObjectCaseSensitive(*obj, name, item);
  else
    cJSON_AddItemToObject(*obj, name, item);
}

void al_body_add(al_body *b, size_t cap, const uint8_t *data, size_t len) {
  b->seen = true;
  b->total += len;
  size_t room = cap - b->len;
  if (len > room) b->truncated = true;
  size_t take = len < room ? len : room;
  if (take == 0) return;
  if (!b->data && !(b->data = malloc(cap))) return; /* at most cap: a few KiB typically */
  memcpy(b->data + b->len, data, take);
  b->len += take;
}

/* ---------------------------------------------------------------- the line */

static void add_string(cJSON *o, const char *key, const char *value) {
  if (value)
    cJSON_AddStringToObject(o, key, value);
  else
    cJSON_AddNullToObject(o, key);
}

/* Milliseconds with microsecond precision, so they print short ("12.345"). */
static double ms(uint64_t ns) { return (double)((ns + 500) / 1000) / 1000.0; }

static void add_start_time(cJSON *o, const struct timespec *ts) {
  struct tm tm;
  char text[64], date[40];
  gmtime_r(&ts->tv_sec, &tm);
  strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(text, sizeof(text), "%s.%06ldZ", date, ts->tv_nsec / 1000);
  cJSON_AddStringToObject(o, "start_time", text);
}

/* The body's size: counted when a body phase came; 0 when the headers ended the direction;
 * else content-length if the headers had one (the body was not sent to the processor). */
static void add_size(cJSON *o, const char *key, bool known, const al_body *b, bool headers_eos,
                     int64_t content_length) {
  if (known && b->seen)
    cJSON_AddNumberToObject(o, key, (double)b->total);
  else if (known && headers_eos)
    cJSON_AddNumberToObject(o, key, 0);
  else if (known && content_length >= 0)
    cJSON_AddNumberToObject(o, key, (double)content_length);
  else
    cJSON_AddNullToObject(o, key);
}

/* Replaces, at any depth, the value of every object member whose name is listed (any case).
 * cJSON limits nesting to CJSON_NESTING_LIMIT (1000) when parsing, which bounds the recursion.
 * Returns whether anything was replaced; -1 on out-of-memory (the body is then left out). */
static int redact_fields(cJSON *node, const al_names *fields) {
  int changed = 0;
  for (cJSON *child = node->child; child; child = child->next) {
    if (cJSON_IsObject(node) && child->string && al_names_has(fields, child->string)) {
      cJSON *r = cJSON_CreateString(REDACTED);
      if (!r) return -1;
      r->string = child->string; /* the name moves over; the old item is freed without it */
      r->type |= child->type & cJSON_StringIsConst;
      child->string = NULL;
      cJSON_ReplaceItemViaPointer(node, child, r);
      child = r;
      changed = 1;
      continue;
    }
    if (!cJSON_IsObject(child) && !cJSON_IsArray(child)) continue;
    int sub = redact_fields(child, fields);
    if (sub < 0) return -1;
    changed |= sub;
  }
  return changed;
}

static bool looks_like_json(const uint8_t *p, size_t n) {
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
    i++;
  return i < n && (p[i] == '{' || p[i] == '[');
}

static void add_keyed(cJSON *o, const char *prefix, const char *suffix, cJSON *item) {
  char key[64];
  snprintf(key, sizeof(key), "%s%s", prefix, suffix);
  if (item) cJSON_AddItemToObject(o, key, item);
}

/* A JSON body with its listed fields redacted, as a string; or why it is left out. */
static void add_redacted_json(cJSON *o, const char *key, const al_body *b, size_t len,
                              const al_settings *s, bool text) {
  if (b->truncated || !text) {
    add_keyed(o, key, "_omitted",
              cJSON_CreateString(b->truncated ? "truncated JSON body cannot be redacted"
                                              : "JSON body is not valid UTF-8"));
    return;
  }
  cJSON *doc = cJSON_ParseWithLength((const char *)b->data, len);
  int changed = doc ? redact_fields(doc, &s->redact_fields) : -1;
  char *printed = changed > 0 ? cJSON_PrintUnformatted(doc) : NULL;
  cJSON_Delete(doc);
  if (changed == 0) { /* nothing to hide: the body exactly as it came */
    char *copy = strndup((const char *)b->data, len);
    add_keyed(o, key, "", copy ? cJSON_CreateString(copy) : NULL);
    free(copy);
    return;
  }
  add_keyed(o, key, printed ? "" : "_omitted",
            cJSON_CreateString(printed ? printed : "malformed JSON body cannot be redacted"));
  free(printed);
}

static void add_base64(cJSON *o, const char *key, const uint8_t *p, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (!out) return;
  EVP_EncodeBlock((unsigned char *)out, p, (int)n); /* n is at most the body cap, 1 MiB */
  add_keyed(o, key, "_base64", cJSON_CreateString(out));
  free(out);
}

/* The body as a string (valid UTF-8), as "<key>_base64" (binary), or "<key>_omitted" with
 * the reason when it looks like JSON but cannot be redacted; "<key>_truncated" when cut. */
static void add_body(cJSON *o, const char *key, const al_body *b, const al_settings *s) {
  if (s->body_cap == 0 || !b->seen) return;
  const uint8_t *p = b->data ? b->data : (const uint8_t *)"";
  size_t len = b->truncated ? cut_partial_character(p, b->len) : b->len;
  const bool text = is_text(p, len);
  const bool redacting = s->redact_fields.count > 0 || s->redact_fields.all;
  if (redacting && looks_like_json(p, len))
    add_redacted_json(o, key, b, len, s, text);
  else if (text) {
    char *copy = strndup((const char *)p, len);
    add_keyed(o, key, "", copy ? cJSON_CreateString(copy) : NULL);
    free(copy);
  } else
    add_base64(o, key, p, b->len);
  if (b->truncated) add_keyed(o, key, "_truncated", cJSON_CreateTrue());
}

static void add_headers(cJSON *o, const char *key, cJSON **headers) {
  cJSON *obj = *headers ? *headers : cJSON_CreateObject();
  *headers = NULL;
  if (obj) cJSON_AddItemToObject(o, key, obj);
}

char *al_line_build(al_exchange *x, const al_settings *s, uint64_t t_end, bool complete,
                    size_t *len) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  add_start_time(o, &x->wall_start);
  add_string(o, "method", x->method);
  add_string(o, "path", x->path);
  add_string(o, "authority", x->authority);
  add_string(o, "request_id", x->request_id);
  if (x->status)
    cJSON_AddNumberToObject(o, "status", x->status);
  else
    cJSON_AddNullToObject(o, "status");
  add_size(o, "request_bytes", true, &x->request_body, x->request_headers_eos, x->request_length);
  add_size(o, "response_bytes", x->response_started, &x->response_body, x->response_headers_eos,
           x->response_length);
  cJSON_AddNumberToObject(o, "duration_ms", ms(t_end - x->t_start));
  if (x->t_response)
    cJSON_AddNumberToObject(o, "upstream_ms", ms(x->t_response - x->t_request_last));
  else
    cJSON_AddNullToObject(o, "upstream_ms");
  cJSON_AddBoolToObject(o, "complete", complete);
  add_headers(o, "request_headers", &x->request_headers);
  add_headers(o, "response_headers", &x->response_headers);
  add_body(o, "request_body", &x->request_body, s);
  add_body(o, "response_body", &x->response_body, s);
  char *line = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (line) *len = strlen(line);
  return line;
}

void al_exchange_free(al_exchange *x) {
  free(x->method);
  free(x->path);
  free(x->authority);
  free(x->request_id);
  cJSON_Delete(x->request_headers);
  cJSON_Delete(x->response_headers);
  free(x->request_body.data);
  free(x->response_body.data);
}
