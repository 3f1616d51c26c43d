#include "base/metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/list.h"

struct metric_series {
  queue_link link; /* in its family's series */
  const struct metric_family *family;
  char *label_values[METRIC_MAX_LABELS];
  atomic_int_fast64_t value; /* counter, gauge, or a histogram's count */
  atomic_uint_fast64_t sum;  /* histogram: sum of observations, observed unit */
  atomic_uint_fast64_t buckets[METRIC_MAX_BUCKETS]; /* histogram: in (bound[i-1], bound[i]] */
};

struct metric_family {
  queue_link link; /* in the registry */
  metrics *owner;
  char *name, *help;
  metric_type type;
  char *label_names[METRIC_MAX_LABELS];
  size_t label_count;
  uint64_t bounds[METRIC_MAX_BUCKETS];
  size_t bucket_count;
  double scale;
  queue series;
};

struct metrics {
  pthread_mutex_t lock; /* guards the lists; values are atomics */
  queue families;
};

metrics *metrics_new(void) {
  metrics *m = calloc(1, sizeof(*m));
  if (!m) return NULL;
  pthread_mutex_init(&m->lock, NULL);
  return m;
}

static void series_free(metric_series *s) {
  for (size_t i = 0; i < METRIC_MAX_LABELS; i++)
    free(s->label_values[i]);
  free(s);
}

static void family_free(metric_family *f) {
  queue_link *l;
  while ((l = queue_pop(&f->series)))
    series_free(LIST_ITEM(l, metric_series, link));
  for (size_t i = 0; i < f->label_count; i++)
    free(f->label_names[i]);
  free(f->name);
  free(f->help);
  free(f);
}

void metrics_free(metrics *m) {
  if (!m) return;
  queue_link *l;
  while ((l = queue_pop(&m->families)))
    family_free(LIST_ITEM(l, metric_family, link));
  pthread_mutex_destroy(&m->lock);
  free(m);
}

static metric_family *find_family(metrics *m, const char *name) {
  for (queue_link *l = m->families.head; l; l = l->next) {
    metric_family *f = LIST_ITEM(l, metric_family, link);
    if (strcmp(f->name, name) == 0) return f;
  }
  return NULL;
}

static metric_family *family_create(metrics *m, const char *name, const char *help,
                                    metric_type type, const char *const *label_names,
                                    size_t label_count, const uint64_t *bounds, size_t bucket_count,
                                    double scale) {
  metric_family *f = calloc(1, sizeof(*f));
  if (!f) return NULL;
  f->owner = m;
  f->type = type;
  f->name = strdup(name);
  f->help = strdup(help);
  bool ok = f->name && f->help;
  for (size_t i = 0; i < label_count; i++, f->label_count++)
    ok = (f->label_names[i] = strdup(label_names[i])) && ok;
  if (type == METRIC_HISTOGRAM) {
    memcpy(f->bounds, bounds, bucket_count * sizeof(*bounds));
    f->bucket_count = bucket_count;
    f->scale = scale;
  }
  if (!ok) {
    family_free(f);
    return NULL;
  }
  return f;
}

metric_family *metrics_family(metrics *m, const char *name, const char *help, metric_type type,
                              const char *const *label_names, size_t label_count,
                              const uint64_t *bounds, size_t bucket_count, double scale) {
  if (!m || !name || !help || label_count > METRIC_MAX_LABELS || (label_count && !label_names))
    return NULL;
  if (type == METRIC_HISTOGRAM &&
      (!bounds || bucket_count == 0 || bucket_count > METRIC_MAX_BUCKETS))
    return NULL;
  pthread_mutex_lock(&m->lock);
  metric_family *f = find_family(m, name);
  if (!f) {
    f = family_create(m, name, help, type, label_names, label_count, bounds, bucket_count, scale);
    if (f) queue_push(&m->families, &f->link);
  }
  pthread_mutex_unlock(&m->lock);
  return f;
}

static bool same_labels(const metric_family *f, const metric_series *s, const char *const *values) {
  for (size_t i = 0; i < f->label_count; i++)
    if (strcmp(s->label_values[i], values[i]) != 0) return false;
  return true;
}

metric_series *metrics_series(metric_family *f, const char *const *label_values) {
  if (!f || (f->label_count && !label_values)) return NULL;
  pthread_mutex_lock(&f->owner->lock);
  metric_series *found = NULL;
  for (queue_link *l = f->series.head; l && !found; l = l->next) {
    metric_series *s = LIST_ITEM(l, metric_series, link);
    if (same_labels(f, s, label_values)) found = s;
  }
  if (!found && (found = calloc(1, sizeof(*found)))) {
    found->family = f;
    bool ok = true;
    for (size_t i = 0; i < f->label_count; i++)
      ok = (found->label_values[i] = strdup(label_values[i])) && ok;
    if (ok) {
      queue_push(&f->series, &found->link);
    } else {
      series_free(found);
      found = NULL;
    }
  }
  pthread_mutex_unlock(&f->owner->lock);
  return found;
}

void metric_add(metric_series *s, uint64_t n) {
  if (s) atomic_fetch_add_explicit(&s->value, (int_fast64_t)n, memory_order_relaxed);
}

void metric_sub(metric_series *s, uint64_t n) {
  if (s) atomic_fetch_sub_explicit(&s->value, (int_fast64_t)n, memory_order_relaxed);
}

void metric_set(metric_series *s, int64_t value) {
  if (s) atomic_store_explicit(&s->value, value, memory_order_relaxed);
}

void metric_observe(metric_series *s, uint64_t value) {
  if (!s) return;
  const metric_family *f = s->family;
  for (size_t i = 0; i < f->bucket_count; i++) {
    if (value > f->bounds[i]) continue;
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    break;
  }
  atomic_fetch_add_explicit(&s->sum, value, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

int64_t metric_value(const metric_series *s) {
  return s ? atomic_load_explicit(&((metric_series *)s)->value, memory_order_relaxed) : 0;
}

/* ---- Exposition ------------------------------------------------------------------------- */

/* Label values escape backslash, double quote and newline; help text backslash and newline. */
static void put_escaped(FILE *out, const char *text, bool quote) {
  for (const char *p = text; *p; p++) {
    if (*p == '\\')
      fputs("\\\\", out);
    else if (*p == '\n')
      fputs("\\n", out);
    else if (quote && *p == '"')
      fputs("\\\"", out);
    else
      fputc(*p, out);
  }
}

/* `{a="x",b="y"` plus `extra` (e.g. le="0.5") if any, then `}`; nothing without labels. */
static void put_labels(FILE *out, const metric_family *f, const metric_series *s,
                       const char *extra) {
  if (f->label_count == 0 && !extra) return;
  fputc('{', out);
  for (size_t i = 0; i < f->label_count; i++) {
    fprintf(out, "%s%s=\"", i ? "," : "", f->label_names[i]);
    put_escaped(out, s->label_values[i], true);
    fputc('"', out);
  }
  if (extra) fprintf(out, "%s%s", f->label_count ? "," : "", extra);
  fputc('}', out);
}

static uint64_t load(const atomic_uint_fast64_t *v) {
  return atomic_load_explicit((atomic_uint_fast64_t *)v, memory_order_relaxed);
}

static void put_histogram(FILE *out, const metric_family *f, const metric_series *s) {
  uint64_t cumulative = 0;
  char le[48];
  for (size_t i = 0; i < f->bucket_count; i++) {
    cumulative += load(&s->buckets[i]);
    snprintf(le, sizeof(le), "le=\"%.9g\"", (double)f->bounds[i] * f->scale);
    fprintf(out, "%s_bucket", f->name);
    put_labels(out, f, s, le);
    fprintf(out, " %llu\n", (unsigned long long)cumulative);
  }
  /* The count is read once, for +Inf and _count, so they always agree. */
  const uint64_t count = (uint64_t)metric_value(s);
  fprintf(out, "%s_bucket", f->name);
  put_labels(out, f, s, "le=\"+Inf\"");
  fprintf(out, " %llu\n%s_sum", (unsigned long long)count, f->name);
  put_labels(out, f, s, NULL);
  fprintf(out, " %.9g\n%s_count", (double)load(&s->sum) * f->scale, f->name);
  put_labels(out, f, s, NULL);
  fprintf(out, " %llu\n", (unsigned long long)count);
}

static const char *type_name(metric_type t) {
  return t == METRIC_COUNTER ? "counter" : t == METRIC_GAUGE ? "gauge" : "histogram";
}

char *metrics_render(metrics *m, size_t *len) {
  char *text = NULL;
  size_t size = 0;
  FILE *out = open_memstream(&text, &size);
  if (!out) return NULL;
  pthread_mutex_lock(&m->lock);
  for (const queue_link *fl = m->families.head; fl; fl = fl->next) {
    const metric_family *f = LIST_ITEM(fl, metric_family, link);
    fprintf(out, "# HELP %s ", f->name);
    put_escaped(out, f->help, false);
    fprintf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
    for (const queue_link *sl = f->series.head; sl; sl = sl->next) {
      const metric_series *s = LIST_ITEM(sl, metric_series, link);
      if (f->type == METRIC_HISTOGRAM) {
        put_histogram(out, f, s);
        continue;
      }
      fputs(f->name, out);
      put_labels(out, f, s, NULL);
      fprintf(out, " %lld\n", (long long)metric_value(s));
    }
  }
  pthread_mutex_unlock(&m->lock);
  const bool failed = ferror(out) != 0;
  if (fclose(out) != 0 || failed) {
    free(text);
    return NULL;
  }
  if (len) *len = size;
  return text;
}
