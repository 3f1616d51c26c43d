/* extproc-test as a C library: load scenario files, play them against an ext_proc server as
 * Envoy 1.40 would, and report. The `extproc-test` program is a thin command line over it; a
 * C test suite can call it directly. The scenario format is docs/scenarios.md.
 *
 * Thread-safety: a suite is used by one thread at a time; extest_suite_run() starts its own
 * worker threads and joins them before returning. Functions returning int return 0 on success
 * and -1 on failure, with a sentence in the `err` buffer the caller passes. */
#ifndef EXTPROC_TEST_H
#define EXTPROC_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* The scenarios of one or more files, and after extest_suite_run() their results. Opaque. */
typedef struct extest_suite extest_suite;

/* Where the server listens. Strings are borrowed: they must outlive the run. */
typedef struct extest_target {
  const char *address;   /* "IPV4:PORT", "[IPV6]:PORT" (numeric addresses) or "unix:PATH" */
  bool tls;              /* speak TLS (ALPN h2) */
  const char *ca_file;   /* TLS: verify the server against this CA (PEM); NULL: no check */
  const char *cert_file; /* TLS: a client certificate for mutual TLS (PEM); NULL: none */
  const char *key_file;  /* its key */
  const char *sni;       /* TLS: server name sent and verified; NULL: none */
} extest_target;

typedef struct extest_options {
  unsigned jobs;      /* scenarios played at once, each on its own connection; 0 means 1 */
  const char *filter; /* only scenarios whose name contains this text; NULL: all */
  bool update_golden; /* write each scenario's `golden` file from what was seen, instead of
                         comparing with it */
} extest_options;

typedef enum extest_status {
  EXTEST_PASSED,  /* every expectation held, and Envoy would not object to anything */
  EXTEST_FAILED,  /* an expectation did not hold (see the failures) */
  EXTEST_ERROR,   /* the scenario could not be played (no connection, unreadable golden file) */
  EXTEST_SKIPPED, /* left out by the filter */
} extest_status;

/* One scenario's result. Owned by the suite: `file` and `name` live as long as the suite; the
 * rest (failures, judgments, outcome) until the next extest_suite_run() or extest_suite_free(). */
typedef struct extest_result {
  const char *file; /* the scenario file, as given */
  const char *name; /* the scenario's name */
  extest_status status;
  const char *const *failures; /* sentences, one per expectation that failed */
  size_t failure_count;
  const char *const *judgment_codes;    /* what Envoy would say (docs/scenarios.md), e.g. */
  const char *const *judgment_messages; /* "value_only", with the sentence explaining it */
  size_t judgment_count;
  const char *outcome_json; /* what the tool saw, as Envoy would forward it (JSON) */
  double duration_ms;       /* wall time to play it, in milliseconds */
} extest_result;

/* Checks `t->address` (the only thing a run cannot report per scenario), without connecting:
 * 0, or -1 with why in `err` (`errlen` bytes), also for a NULL `t` or address. */
int extest_target_check(const extest_target *t, char *err, size_t errlen);

/* Loads every scenario of the `count` files at `paths` (copied; the caller keeps its strings)
 * into a new suite in `*out`, which the caller frees with extest_suite_free(). On error
 * (unreadable file, malformed YAML, unknown key, bad value, a limit of docs/scenarios.md
 * passed, out of memory) returns -1 with "path:line: what" in `err` (`errlen` bytes) and sets
 * `*out` to NULL. */
int extest_suite_load(extest_suite **out, const char *const *paths, size_t count, char *err,
                      size_t errlen);

/* The number of scenarios loaded. */
size_t extest_suite_count(const extest_suite *s);

/* Plays every scenario against `t`, with options `o` (NULL: one at a time, no filter); both are
 * borrowed for the call. Blocks until every scenario is played: each waits at most its
 * message_timeout_ms per reply, plus a few seconds for connecting and faults. Returns the
 * number of scenarios that failed or could not be played (0: all passed or were skipped); a
 * scenario that cannot be played (no connection, say) is an EXTEST_ERROR result, with why, not
 * a failure of the call. Results are read with extest_suite_result(). Connection failures are
 * also printed on stderr unless h2_client_set_quiet() (tools/common/h2_client.h) was called. */
size_t extest_suite_run(extest_suite *s, const extest_target *t, const extest_options *o);

/* Scenario `i`'s result (in file order), or NULL if `i` is out of range; see extest_result for
 * how long it stays valid. Before a run every status is EXTEST_SKIPPED. */
const extest_result *extest_suite_result(const extest_suite *s, size_t i);

/* Reports of the last run, written to `f` (borrowed, flushed, not closed): a readable summary
 * (what failed and why; with `verbose`, every judgment and outcome too), JSON (one object:
 * {"passed", "failed", "errors", "skipped", "scenarios": [{file, name, status, failures,
 * envoy_says, outcome, duration_ms}]}, as docs/scenarios.md describes) and JUnit XML (one
 * testsuite per file). Bytes a server sent that are not UTF-8 are replaced, so both parse.
 * Return 0, or -1 if writing or flushing failed (errno tells why). */
int extest_report_text(const extest_suite *s, FILE *f, bool verbose);
int extest_report_json(const extest_suite *s, FILE *f);
int extest_report_junit(const extest_suite *s, FILE *f);

/* Frees the suite and its results. NULL is ignored. */
void extest_suite_free(extest_suite *s);

#endif
