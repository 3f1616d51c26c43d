/* Server CPU and memory figures from /proc/PID/stat, /proc/PID/status and the process CPU clock. */
#include "procstat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static bool read_file(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) return false;
  const size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = '\0';
  return n > 0;
}

bool proc_exists(pid_t pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
  return read_file(path, buf, sizeof(buf));
}

/* utime and stime are fields 14 and 15 of /proc/PID/stat. The command name (field 2) is in
 * parentheses and may hold spaces, so counting starts after its closing parenthesis. */
static bool read_stat_times(pid_t pid, uint64_t *utime, uint64_t *stime) {
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
  if (!read_file(path, buf, sizeof(buf))) return false;
  const char *p = strrchr(buf, ')');
  if (!p) return false;
  p++;
  for (int field = 3; field <= 15; field++) {
    char *end;
    while (*p == ' ')
      p++;
    if (field == 14 || field == 15) {
      const unsigned long long v = strtoull(p, &end, 10);
      if (end == p) return false;
      *(field == 14 ? utime : stime) = v;
      p = end;
    } else {
      while (*p && *p != ' ')
        p++;
    }
    if (!*p && field < 15) return false;
  }
  return true;
}

proc_sample proc_sample_cpu(pid_t pid) {
  proc_sample s = {0};
  uint64_t utime, stime;
  const long hz = sysconf(_SC_CLK_TCK);
  if (hz > 0 && read_stat_times(pid, &utime, &stime)) {
    s.ok = true;
    s.stat_user_us = utime * 1000000ull / (uint64_t)hz;
    s.stat_system_us = stime * 1000000ull / (uint64_t)hz;
  }
  clockid_t clock;
  struct timespec ts;
  if (clock_getcpuclockid(pid, &clock) == 0 && clock_gettime(clock, &ts) == 0) {
    s.clock_ok = true;
    s.clock_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
  }
  return s;
}

static bool status_kib(const char *text, const char *key, uint64_t *out) {
  const char *p = strstr(text, key);
  if (!p) return false;
  p += strlen(key);
  char *end;
  const unsigned long long v = strtoull(p, &end, 10);
  if (end == p) return false;
  *out = v;
  return true;
}

proc_memory proc_read_memory(pid_t pid) {
  proc_memory m = {0};
  char path[64], buf[8192];
  snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
  if (!read_file(path, buf, sizeof(buf))) return m;
  m.ok = status_kib(buf, "\nVmRSS:", &m.rss_kib) && status_kib(buf, "\nVmHWM:", &m.peak_rss_kib);
  return m;
}

bool proc_reset_peak_rss(pid_t pid) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%ld/clear_refs", (long)pid);
  FILE *f = fopen(path, "w");
  if (!f) return false;
  const bool written = fputs("5", f) >= 0; /* 5: reset the peak RSS, and nothing else */
  return fclose(f) == 0 && written;
}
