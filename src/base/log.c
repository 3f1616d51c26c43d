#include "base/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static atomic_int log_threshold = EXTPROC_LOG_INFO;
static atomic_int log_format = EXTPROC_LOG_FORMAT_TEXT;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void extproc_log_set_level(extproc_log_level level) { atomic_store(&log_threshold, (int)level); }

void extproc_log_set_format(extproc_log_format format) {
  if (format == EXTPROC_LOG_FORMAT_TEXT || format == EXTPROC_LOG_FORMAT_JSON)
    atomic_store(&log_format, (int)format);
}

/* Case-insensitive equality with a lowercase `word`. */
static bool same_word(const char *word, const char *text) {
  while (*word && (*text | 0x20) == *word)
    word++, text++;
  return !*word && !*text;
}

int extproc_log_level_parse(const char *text, extproc_log_level *level) {
  static const struct {
    const char *name;
    extproc_log_level level;
  } names[] = {{"debug", EXTPROC_LOG_DEBUG}, {"info", EXTPROC_LOG_INFO},
               {"warn", EXTPROC_LOG_WARN},   {"warning", EXTPROC_LOG_WARN},
               {"error", EXTPROC_LOG_ERROR}, {"off", EXTPROC_LOG_OFF}};
  if (!text || !level) return EXTPROC_EINVAL;
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    if (same_word(names[i].name, text)) {
      *level = names[i].level;
      return 0;
    }
  }
  return EXTPROC_EINVAL;
}

int extproc_log_format_parse(const char *text, extproc_log_format *format) {
  if (!text || !format) return EXTPROC_EINVAL;
  if (same_word("text", text)) {
    *format = EXTPROC_LOG_FORMAT_TEXT;
  } else if (same_word("json", text)) {
    *format = EXTPROC_LOG_FORMAT_JSON;
  } else {
    return EXTPROC_EINVAL;
  }
  return 0;
}

bool log_enabled(extproc_log_level level) {
  return level < EXTPROC_LOG_OFF && (int)level >= atomic_load(&log_threshold);
}

/* ---- Rate limit ------------------------------------------------------------------------ */

/* Keys are call sites, of which a program has a few dozen that warn; a key that collides with
 * another in this direct-mapped table takes the slot over (its pending count is lost). */
enum { RATE_SLOTS = 64 };

typedef struct rate_slot {
  const char *key;
  long second;              /* the window: monotonic seconds */
  unsigned printed;         /* lines printed in this window */
  unsigned long suppressed; /* lines dropped since the last one printed */
} rate_slot;

static rate_slot rate_slots[RATE_SLOTS];
static pthread_mutex_t rate_lock = PTHREAD_MUTEX_INITIALIZER;

/* Whether a line with `key` may be printed now; if so, stores how many lines with that key were
 * dropped before it (to be reported on it). */
static bool rate_admit(const char *key, unsigned long *suppressed) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  rate_slot *s = &rate_slots[((uintptr_t)key >> 3) % RATE_SLOTS];
  bool admit = true;
  pthread_mutex_lock(&rate_lock);
  if (s->key != key) *s = (rate_slot){.key = key, .second = now.tv_sec};
  if (s->second != now.tv_sec) {
    s->second = now.tv_sec;
    s->printed = 0;
  }
  if (s->printed < LOG_BURST) {
    s->printed++;
    *suppressed = s->suppressed;
    s->suppressed = 0;
  } else {
    s->suppressed++;
    admit = false;
  }
  pthread_mutex_unlock(&rate_lock);
  return admit;
}

/* ---- Line building --------------------------------------------------------------------- */

/* Room kept at the end of a line for what closes it (a JSON object's end, the suppressed count,
 * the newline), so a long message is cut short instead of leaving a broken line. */
enum { LINE_BYTES = 8192, LINE_CLOSING_RESERVE = 96 };

typedef struct line_buf {
  char data[LINE_BYTES];
  size_t len;
} line_buf;

static bool has_room(const line_buf *b, size_t n) {
  return b->len + n + LINE_CLOSING_RESERVE <= sizeof(b->data);
}

/* Appends unconditionally within the buffer (used for the closing part and short fields). */
static void put_raw(line_buf *b, const char *s, size_t n) {
  if (b->len + n >= sizeof(b->data)) n = sizeof(b->data) - 1 - b->len;
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

static void put_str(line_buf *b, const char *s) { put_raw(b, s, strlen(s)); }

/* Text: peer-supplied text (request ids, messages) with a control character could forge a line
 * of its own or drive a terminal, so each one is shown as '?'. */
static void put_masked(line_buf *b, const char *s) {
  for (; *s && has_room(b, 1); s++) {
    const unsigned char c = (unsigned char)*s;
    b->data[b->len++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
  }
}

/* Length of the valid UTF-8 sequence at `s` (RFC 3629: no overlongs, no surrogates, at most
 * U+10FFFF), or 0 if it is not one. */
static size_t utf8_sequence(const unsigned char *s) {
  const unsigned char c = s[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (s[i] < 0x80 || s[i] > 0xbf) return 0;
  return n;
}

/* JSON (RFC 8259): a quoted string; quotes, backslashes and control characters are escaped,
 * and bytes that are not valid UTF-8 become U+FFFD, so every line parses. */
static void put_json_string(line_buf *b, const char *text) {
  put_raw(b, "\"", 1);
  const unsigned char *s = (const unsigned char *)text;
  while (*s) {
    char esc[8];
    size_t n = 1;
    const char *out = (const char *)s;
    if (*s == '"' || *s == '\\') {
      esc[0] = '\\', esc[1] = (char)*s;
      out = esc, n = 2;
    } else if (*s < 0x20 || *s == 0x7f) {
      snprintf(esc, sizeof(esc), "\\u%04x", *s);
      out = esc, n = 6;
    } else if (*s >= 0x80) {
      n = utf8_sequence(s);
      if (n == 0) out = "\\ufffd", n = 6;
    }
    if (!has_room(b, n)) break;
    put_raw(b, out, n);
    s += (out == (const char *)s) ? n : 1;
  }
  put_raw(b, "\"", 1);
}

static void put_json_field(line_buf *b, const char *name, const char *value) {
  if (!value) return;
  put_raw(b, ",\"", 2);
  put_str(b, name);
  put_raw(b, "\":", 2);
  put_json_string(b, value);
}

static void put_text_field(line_buf *b, const char *name, const char *value) {
  if (!value) return;
  put_str(b, name);
  put_raw(b, "=", 1);
  put_masked(b, value);
  put_raw(b, " ", 1);
}

static void format_text(line_buf *b, const char *time, extproc_log_level level,
                        const log_context *ctx, const char *message, unsigned long suppressed) {
  char head[128];
  snprintf(head, sizeof(head), "%s %-5s ", time, level_names[level]);
  put_str(b, head);
  if (ctx && (ctx->processor || ctx->phase || ctx->request_id || ctx->peer)) {
    put_text_field(b, "processor", ctx->processor);
    put_text_field(b, "phase", ctx->phase);
    put_text_field(b, "request_id", ctx->request_id);
    put_text_field(b, "peer", ctx->peer);
    b->len--; /* the last field's space */
    put_raw(b, ": ", 2);
  }
  put_masked(b, message);
  if (suppressed) {
    char tail[64];
    snprintf(tail, sizeof(tail), " (%lu similar lines suppressed)", suppressed);
    put_str(b, tail);
  }
}

static void format_json(line_buf *b, const char *time, extproc_log_level level,
                        const log_context *ctx, const char *message, unsigned long suppressed) {
  put_str(b, "{\"time\":\"");
  put_str(b, time);
  put_str(b, "\",\"level\":\"");
  put_str(b, level_names[level]);
  put_str(b, "\"");
  if (ctx) {
    put_json_field(b, "processor", ctx->processor);
    put_json_field(b, "phase", ctx->phase);
    put_json_field(b, "request_id", ctx->request_id);
    put_json_field(b, "peer", ctx->peer);
  }
  if (suppressed) {
    char count[64];
    snprintf(count, sizeof(count), ",\"suppressed\":%lu", suppressed);
    put_str(b, count);
  }
  put_str(b, ",\"message\":");
  put_json_string(b, message);
  if (suppressed) {
    char tail[64];
    snprintf(tail, sizeof(tail), " (%lu similar lines suppressed)\"", suppressed);
    b->len--; /* reopen the string: the count is plain ASCII */
    put_str(b, tail);
  }
  put_str(b, "}");
}

void log_emit(extproc_log_level level, const log_context *ctx, const char *fmt, va_list ap) {
  unsigned long suppressed = 0;
  if (level >= EXTPROC_LOG_WARN && !rate_admit(fmt, &suppressed)) return;
  char message[LINE_BYTES / 2];
  if (vsnprintf(message, sizeof(message), fmt, ap) < 0) return;
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  char time[80]; /* the compiler cannot bound tm's fields: room for their widest values */
  snprintf(time, sizeof(time), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
           tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)tv.tv_usec);
  line_buf b;
  b.len = 0;
  if (atomic_load(&log_format) == EXTPROC_LOG_FORMAT_JSON)
    format_json(&b, time, level, ctx, message, suppressed);
  else
    format_text(&b, time, level, ctx, message, suppressed);
  b.data[b.len++] = '\n';
  /* One fwrite per line keeps lines from different threads whole. */
  fwrite(b.data, 1, b.len, stderr);
}

void log_line(extproc_log_level level, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  va_list ap;
  va_start(ap, fmt);
  log_emit(level, NULL, fmt, ap);
  va_end(ap);
}

void log_ctx_line(extproc_log_level level, const log_context *ctx, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  va_list ap;
  va_start(ap, fmt);
  log_emit(level, ctx, fmt, ap);
  va_end(ap);
}
