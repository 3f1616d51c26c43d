/* A suite: the scenarios of several files, played in parallel, each result kept for the
 * reports; golden files compared or written. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/arena.h"
#include "exchange.h"
#include "extproc_test.h"

typedef struct entry {
  scenario s;
  extest_result r;
  pair_list failures; /* values are the sentences */
  char **codes, **messages;
  char *outcome_json;
} entry;

struct extest_suite {
  entry *entries;
  size_t count;
  /* During a run. */
  const extest_target *target;
  const extest_options *options;
  atomic_size_t next;
};

int extest_suite_load(extest_suite **out, const char *const *paths, size_t count, char *err,
                      size_t errlen) {
  *out = NULL;
  scenario *list = NULL;
  size_t n = 0;
  for (size_t i = 0; i < count; i++) {
    if (scenario_file_load(paths[i], &list, &n, err, errlen) != 0) {
      for (size_t k = 0; k < n; k++)
        scenario_free(&list[k]);
      free(list);
      return -1;
    }
  }
  extest_suite *s = calloc(1, sizeof(*s));
  if (s) s->entries = calloc(n ? n : 1, sizeof(*s->entries));
  if (!s || !s->entries) {
    snprintf(err, errlen, "out of memory");
    free(s);
    for (size_t k = 0; k < n; k++)
      scenario_free(&list[k]);
    free(list);
    return -1;
  }
  s->count = n;
  for (size_t i = 0; i < n; i++) {
    entry *e = &s->entries[i];
    e->s = list[i];
    e->r = (extest_result){.file = e->s.file, .name = e->s.name, .status = EXTEST_SKIPPED};
  }
  free(list);
  *out = s;
  return 0;
}

size_t extest_suite_count(const extest_suite *s) { return s ? s->count : 0; }

int extest_target_check(const extest_target *t, char *err, size_t errlen) {
  char host[64];
  int port;
  if (!t || !t->address) {
    snprintf(err, errlen, "no target");
    return -1;
  }
  return target_parse(t->address, host, sizeof(host), &port, err, errlen);
}

const extest_result *extest_suite_result(const extest_suite *s, size_t i) {
  return s && i < s->count ? &s->entries[i].r : NULL;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Creates the folders above `path` that do not exist yet (mkdir -p of its dirname). */
static void make_parents(const char *path) {
  char *copy = strdup(path);
  for (char *slash = copy ? strchr(copy + 1, '/') : NULL; slash; slash = strchr(slash + 1, '/')) {
    *slash = 0;
    mkdir(copy, 0777); /* an existing folder is fine; a real failure shows at fopen */
    *slash = '/';
  }
  free(copy);
}

/* Compares the outcome with the scenario's golden file, or writes it. */
static void check_golden(entry *e, const cJSON *got, bool update) {
  enum { MAX_GOLDEN_BYTES = 64 << 20 };
  char msg[2048], err[512];
  char *text = cJSON_Print(got);
  if (!text) return;
  if (update) {
    make_parents(e->s.golden_path);
    FILE *f = open_regular_file(e->s.golden_path, "w", SIZE_MAX, err, sizeof(err));
    const bool ok = f && fprintf(f, "%s\n", text) >= 0;
    if ((f && fclose(f) != 0) || (f && !ok))
      snprintf(err, sizeof(err), "%s: %s", e->s.golden_path, strerror(errno));
    if (!f || !ok) {
      snprintf(msg, sizeof(msg), "golden: cannot write %s", err);
      pair_list_add(&e->failures, "", msg);
    }
    free(text);
    return;
  }
  free(text);
  FILE *f = open_regular_file(e->s.golden_path, "rb", MAX_GOLDEN_BYTES, err, sizeof(err));
  if (!f) {
    snprintf(msg, sizeof(msg), "golden: cannot read %s (write it with --update-golden)", err);
    pair_list_add(&e->failures, "", msg);
    return;
  }
  byte_buf content = {0};
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), f)) > 0;)
    byte_buf_append(&content, buf, n);
  fclose(f);
  cJSON *want = content.data ? cJSON_Parse((const char *)content.data) : NULL;
  byte_buf_free(&content);
  if (!cJSON_Compare(want, got, true)) {
    char *g = cJSON_PrintUnformatted(got);
    snprintf(msg, sizeof(msg), "golden: %s differs; seen: %.1800s", e->s.golden_path, g ? g : "?");
    pair_list_add(&e->failures, "", msg);
    free(g);
  }
  cJSON_Delete(want);
}

static void run_one(extest_suite *s, entry *e) {
  const extest_options *o = s->options;
  if (o->filter && !strstr(e->s.name, o->filter)) return;
  outcome out = {0};
  char err[512] = "";
  const double start = now_ms();
  const int played = play_scenario(&e->s, s->target, &out, err, sizeof(err));
  e->r.duration_ms = now_ms() - start;
  if (played != 0) {
    pair_list_add(&e->failures, "", err);
    e->r.status = EXTEST_ERROR;
  } else {
    outcome_check(&e->s, &out, &e->failures);
    cJSON *j = outcome_to_json(&out);
    if (j && e->s.golden_path) check_golden(e, j, o->update_golden);
    e->outcome_json = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    e->codes = calloc(out.judgment_count + 1, sizeof(char *));
    e->messages = calloc(out.judgment_count + 1, sizeof(char *));
    for (size_t i = 0; e->codes && e->messages && i < out.judgment_count; i++) {
      e->codes[i] = strdup(out.judgments[i].code);
      e->messages[i] = strdup(out.judgments[i].message ? out.judgments[i].message : "");
      e->r.judgment_count++;
    }
    e->r.status = e->failures.count ? EXTEST_FAILED : EXTEST_PASSED;
  }
  outcome_free(&out);
  e->r.failures = (const char *const *)e->failures.values;
  e->r.failure_count = e->failures.count;
  e->r.judgment_codes = (const char *const *)e->codes;
  e->r.judgment_messages = (const char *const *)e->messages;
  e->r.outcome_json = e->outcome_json;
}

static void *worker(void *arg) {
  extest_suite *s = arg;
  for (size_t i; (i = atomic_fetch_add(&s->next, 1)) < s->count;)
    run_one(s, &s->entries[i]);
  arena_cache_release(); /* this thread's cached arena blocks */
  return NULL;
}

static void entry_reset(entry *e) {
  pair_list_clear(&e->failures);
  for (size_t i = 0; i < e->r.judgment_count; i++) {
    free(e->codes[i]);
    free(e->messages[i]);
  }
  free(e->codes);
  free(e->messages);
  free(e->outcome_json);
  e->codes = e->messages = NULL;
  e->outcome_json = NULL;
  e->r = (extest_result){.file = e->s.file, .name = e->s.name, .status = EXTEST_SKIPPED};
}

size_t extest_suite_run(extest_suite *s, const extest_target *t, const extest_options *o) {
  const extest_options none = {0};
  s->target = t;
  s->options = o ? o : &none;
  for (size_t i = 0; i < s->count; i++)
    entry_reset(&s->entries[i]);
  atomic_store(&s->next, 0);
  size_t jobs = s->options->jobs ? s->options->jobs : 1;
  if (jobs > s->count) jobs = s->count ? s->count : 1;
  pthread_t *threads = calloc(jobs, sizeof(*threads));
  size_t started = 0;
  for (; threads && started + 1 < jobs; started++)
    if (pthread_create(&threads[started], NULL, worker, s) != 0) break;
  worker(s); /* this thread works too, so a run never depends on thread creation */
  for (size_t i = 0; i < started; i++)
    pthread_join(threads[i], NULL);
  free(threads);
  size_t bad = 0;
  for (size_t i = 0; i < s->count; i++)
    bad += s->entries[i].r.status == EXTEST_FAILED || s->entries[i].r.status == EXTEST_ERROR;
  return bad;
}

void extest_suite_free(extest_suite *s) {
  if (!s) return;
  for (size_t i = 0; i < s->count; i++) {
    entry_reset(&s->entries[i]);
    scenario_free(&s->entries[i].s);
  }
  free(s->entries);
  free(s);
}
