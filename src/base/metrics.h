/* Metrics: counters, gauges and histograms, rendered in the Prometheus text exposition format.
 *
 * A family (name, help, type, label names) holds series, one per set of label values. Families
 * and series are created when the server is set up, or on first use of a label set (under a
 * lock); updating a series is one relaxed atomic operation, so the hot path takes no lock.
 * Series live as long as their registry; a pointer to one may be kept and used from any thread.
 *
 * Naming follows Prometheus conventions: `extproc_` prefix, base units (seconds, bytes),
 * counters end in `_total`. */
#ifndef EXTPROC_METRICS_H
#define EXTPROC_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type;

typedef struct metrics metrics;
typedef struct metric_family metric_family;
typedef struct metric_series metric_series;

enum { METRIC_MAX_LABELS = 4, METRIC_MAX_BUCKETS = 16 };

/* Creates an empty registry. Returns NULL on out-of-memory. */
metrics *metrics_new(void);

/* Frees the registry, its families and series. NULL is ignored. */
void metrics_free(metrics *m);

/* The family `name` (created on first call; later calls return the same one and ignore the
 * other arguments). `label_names` has `label_count` (at most METRIC_MAX_LABELS) names; strings
 * are copied. For METRIC_HISTOGRAM, `bounds` are the `bucket_count` (at most
 * METRIC_MAX_BUCKETS) upper bounds in increasing order, in the unit values are observed in,
 * and `scale` converts that unit to the exposed one (1e-9 for nanoseconds observed, seconds
 * exposed); ignored otherwise. Returns NULL on out-of-memory or bad arguments. Thread-safe. */
metric_family *metrics_family(metrics *m, const char *name, const char *help, metric_type type,
                              const char *const *label_names, size_t label_count,
                              const uint64_t *bounds, size_t bucket_count, double scale);

/* The series of `f` with these label values (as many as the family has label names; copied),
 * created on first use. Returns NULL on out-of-memory. Thread-safe. */
metric_series *metrics_series(metric_family *f, const char *const *label_values);

/* Adds `n` to a counter, or to a gauge. NULL is ignored, so an unset series costs nothing. */
void metric_add(metric_series *s, uint64_t n);

/* Subtracts `n` from a gauge. */
void metric_sub(metric_series *s, uint64_t n);

/* Sets a gauge. */
void metric_set(metric_series *s, int64_t value);

/* Records one observation in a histogram, in its observed unit. */
void metric_observe(metric_series *s, uint64_t value);

/* The current value of a counter or gauge (a histogram: its count). For tests and reports. */
int64_t metric_value(const metric_series *s);

/* Renders every family in the Prometheus text format (version 0.0.4) into a malloc'd,
 * NUL-terminated buffer the caller frees; `*len` receives its length in bytes. Returns NULL on
 * out-of-memory. Thread-safe; values are read without stopping writers, so a scrape sees each
 * value as it was at some moment during the call. */
char *metrics_render(metrics *m, size_t *len);

#endif
