/* Log-linear histogram; see hist.h. */
#include "hist.h"

#include <string.h>

void hist_init(hist *h) {
  memset(h, 0, sizeof(*h));
  h->min = UINT64_MAX;
}

static unsigned bucket_of(uint64_t v) {
  if (v < 2 * HIST_HALF) return (unsigned)v;
  const unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  const unsigned shift = msb - (HIST_SUB_BITS - 1);
  return shift * HIST_HALF + (unsigned)(v >> shift); /* v >> shift is in [HALF, 2 * HALF) */
}

/* The middle of bucket i's value range. */
static uint64_t bucket_middle(unsigned i) {
  if (i < 2 * HIST_HALF) return i;
  const unsigned shift = i / HIST_HALF - 1;
  const uint64_t low = (uint64_t)(i - shift * HIST_HALF) << shift;
  return low + ((1ull << shift) - 1) / 2;
}

void hist_record(hist *h, uint64_t ns) {
  unsigned i = bucket_of(ns);
  if (i >= HIST_BUCKETS) i = HIST_BUCKETS - 1; /* ~2^57 ns: never in practice */
  h->buckets[i]++;
  h->count++;
  h->sum += ns;
  if (ns < h->min) h->min = ns;
  if (ns > h->max) h->max = ns;
}

uint64_t hist_percentile(const hist *h, double p) {
  if (h->count == 0) return 0;
  uint64_t rank = (uint64_t)(p / 100.0 * (double)h->count + 0.999999);
  if (rank < 1) rank = 1;
  if (rank > h->count) rank = h->count;
  uint64_t seen = 0;
  for (unsigned i = 0; i < HIST_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen < rank) continue;
    uint64_t v = bucket_middle(i);
    if (v < h->min) v = h->min;
    if (v > h->max) v = h->max;
    return v;
  }
  return h->max;
}

double hist_mean(const hist *h) { return h->count ? (double)h->sum / (double)h->count : 0.0; }
