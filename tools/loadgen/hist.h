/* A log-linear latency histogram (HDR-like): exact below 256 ns, then 128 linear buckets per
 * power of two, so any recorded value is reported within 0.4 % of itself. Fixed size (about
 * 60 KB), no allocation, O(1) record; percentiles walk the buckets once. */
#ifndef EXTPROC_LOADGEN_HIST_H
#define EXTPROC_LOADGEN_HIST_H

#include <stdint.h>

enum { HIST_SUB_BITS = 8, HIST_HALF = 1 << (HIST_SUB_BITS - 1), HIST_BUCKETS = 58 * HIST_HALF };

typedef struct hist {
  uint64_t count;
  uint64_t sum; /* ns */
  uint64_t min, max;
  uint64_t buckets[HIST_BUCKETS];
} hist;

void hist_init(hist *h);
/* Records one value in nanoseconds. */
void hist_record(hist *h, uint64_t ns);
/* The value at percentile p (0 < p <= 100) in nanoseconds: the middle of its bucket, clamped to
 * the exact minimum and maximum, so results never decrease as p grows. 0 when empty. */
uint64_t hist_percentile(const hist *h, double p);
double hist_mean(const hist *h);

#endif
