/* What the load generator reads about the server process from /proc. */
#ifndef EXTPROC_LOADGEN_PROCSTAT_H
#define EXTPROC_LOADGEN_PROCSTAT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct proc_sample {
  bool ok;
  /* utime + stime from /proc/PID/stat, in clock ticks converted to µs: 10 ms steps at the usual
   * USER_HZ of 100. */
  uint64_t stat_user_us, stat_system_us;
  /* The process's CPU clock (clock_getcpuclockid): all threads, nanosecond resolution; false
   * where the kernel refuses it. */
  bool clock_ok;
  uint64_t clock_ns;
} proc_sample;

typedef struct proc_memory {
  bool ok;
  uint64_t rss_kib, peak_rss_kib; /* VmRSS, VmHWM from /proc/PID/status */
} proc_memory;

/* Whether pid names a live process we can read. */
bool proc_exists(pid_t pid);
proc_sample proc_sample_cpu(pid_t pid);
proc_memory proc_read_memory(pid_t pid);
/* Resets the process's peak RSS (VmHWM) to its current RSS (/proc/PID/clear_refs, Linux 4.0 and
 * later; needs the right to write it), so the next peak read is the peak since now. Touches
 * nothing else of the process. Returns false when the kernel refused. */
bool proc_reset_peak_rss(pid_t pid);

#endif
