/* The server's configuration surface: one table of options (options.c) that drives parsing of
 * command-line flags, the EXTPROC_* environment variables, the --help text, and (through a test
 * comparing --help with it) docs/configuration.md. extproc_main() (main.c) is its user. */
#ifndef EXTPROC_OPTIONS_H
#define EXTPROC_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "extproc/server.h"

/* --service may be given this many times (each a comma-separated list). */
enum { MAX_SERVICE_LISTS = 16 };

/* Everything the options set: the server's options plus what the program around it uses. */
typedef struct main_settings {
  extproc_server_options server;
  const char *listen;         /* where bare service names go */
  const char *metrics_listen; /* where GET /metrics is served; NULL: nowhere */
  extproc_log_level log_level;
  extproc_log_format log_format;
  const char *service_lists[MAX_SERVICE_LISTS]; /* each "SPEC[,SPEC...]"; argv or environ */
  size_t service_list_count;
  bool services_from_env; /* the lists came from EXTPROC_SERVICE, not from --service */
  uint64_t given;         /* bit i: option i of the table was given, by flag or environment */
} main_settings;

/* How a value is written and read. */
typedef enum option_type {
  OPT_COUNT,      /* a whole number */
  OPT_BYTES,      /* bytes; a KiB, MiB or GiB suffix multiplies by 2^10, 2^20, 2^30 */
  OPT_DURATION,   /* seconds (fractions allowed), or with an ms, s or m suffix; kept in ms */
  OPT_OCTAL,      /* a whole number written in octal, e.g. a file mode: 0660 */
  OPT_TEXT,       /* a string, kept as given */
  OPT_SERVICES,   /* a service list; repeatable, each occurrence adds to the list */
  OPT_LOG_LEVEL,  /* debug, info, warn, error, off */
  OPT_LOG_FORMAT, /* text, json */
  OPT_ACTION      /* --help, --version: no value, no environment variable */
} option_type;

/* Where a value goes in main_settings. */
typedef struct option_target {
  size_t offset, size;
} option_target;

typedef struct option_def {
  const char *name; /* the flag without "--"; the variable is EXTPROC_ + NAME in upper
                     * case with '-' as '_' (options_env_name) */
  option_type type;
  const char *value_name; /* the value's name in --help, e.g. BYTES */
  uint64_t min, max;      /* numbers: the allowed range, in the stored unit (count, bytes, ms) */
  option_target to;
  const char *legacy_env; /* another variable read when EXTPROC_* is unset; may be NULL */
  bool zero_is_off;       /* a duration where 0 is stored as EXTPROC_SERVER_TIMEOUT_OFF */
  const char *help;       /* one sentence: what it does, what 0 means if special */
} option_def;

/* The table, in --help order. */
const option_def *options_table(size_t *count);

/* EXTPROC_ + the option's name in upper case, '-' as '_', into `out` (at least 64 bytes). */
void options_env_name(const option_def *o, char *out, size_t cap);

/* An option's default as --help and the docs show it, e.g. "16MiB", "5s", "info". */
void options_default_text(const option_def *o, char *out, size_t cap);

typedef const char *(*env_lookup)(const char *name);

typedef enum options_outcome {
  OPTIONS_RUN,     /* settings filled: serve */
  OPTIONS_HELP,    /* --help was given */
  OPTIONS_VERSION, /* --version was given */
  OPTIONS_BAD      /* `error` names the flag or variable and what is allowed */
} options_outcome;

/* Fills `s` with the defaults, then each option from its flag in argv[1..argc), else from its
 * environment variable (looked up with `env`; NULL reads none), and checks every value. On
 * OPTIONS_BAD, `error` (`error_cap` bytes) holds one line without a newline. `argv` strings
 * and the environment's must outlive `s` (service lists and --listen point into them). */
options_outcome options_parse(main_settings *s, int argc, char *const *argv, env_lookup env,
                              char *error, size_t error_cap);

/* Prints every option: flag, value, variable, default, range, help. */
void options_print_help(FILE *out);

#endif
