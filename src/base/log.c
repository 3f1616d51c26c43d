#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static atomic_int log_threshold = EXTPROC_LOG_INFO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void extproc_log_set_level(extproc_log_level level) { atomic_store(&log_threshold, (int)level); }

int extproc_log_level_parse(const char *text, extproc_log_level *level) {
  static const struct {
    const char *name;
    extproc_log_level level;
  } names[] = {{"debug", EXTPROC_LOG_DEBUG}, {"info", EXTPROC_LOG_INFO},
               {"warn", EXTPROC_LOG_WARN},   {"warning", EXTPROC_LOG_WARN},
               {"error", EXTPROC_LOG_ERROR}, {"off", EXTPROC_LOG_OFF}};
  if (!text || !level) return EXTPROC_EINVAL;
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    const char *a = names[i].name, *b = text;
    while (*a && (*b | 0x20) == *a)
      a++, b++;
    if (!*a && !*b) {
      *level = names[i].level;
      return 0;
    }
  }
  return EXTPROC_EINVAL;
}

bool log_enabled(extproc_log_level level) {
  return level < EXTPROC_LOG_OFF && (int)level >= atomic_load(&log_threshold);
}

void log_linev(extproc_log_level level, const char *prefix, const char *fmt, va_list ap) {
  char line[2048];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %-5s %s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   (long)tv.tv_usec, level_names[level], prefix);
  if (n < 0 || (size_t)n >= sizeof(line)) return;
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  if (m < 0) return;
  size_t len = strlen(line);
  /* Lines carry peer-supplied text (request ids, messages): a control character could forge a
   * line of its own or drive a terminal, so each one is shown as '?'. */
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) line[i] = '?';
  line[len++] = '\n';
  /* One fwrite per line keeps lines from different threads whole. */
  fwrite(line, 1, len, stderr);
}

void log_line(extproc_log_level level, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  va_list ap;
  va_start(ap, fmt);
  log_linev(level, "", fmt, ap);
  va_end(ap);
}
