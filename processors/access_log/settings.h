/* The access log's settings, read from EXTPROC_ACCESS_LOG_* environment variables (the README's
 * "API call logging (access-log)" section lists them with their defaults). */
#ifndef ACCESS_LOG_SETTINGS_H
#define ACCESS_LOG_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A list of lower-case names from a comma-separated setting. */
typedef struct al_names {
  char **names;
  size_t count;
  bool all; /* the setting was "*" */
} al_names;

typedef struct al_settings {
  char *path;              /* EXTPROC_ACCESS_LOG_PATH: a file, or "-" for stdout */
  uint64_t max_bytes;      /* EXTPROC_ACCESS_LOG_MAX_BYTES: rotate past this; 0: never */
  unsigned keep;           /* EXTPROC_ACCESS_LOG_KEEP: rotated files kept */
  al_names headers;        /* EXTPROC_ACCESS_LOG_HEADERS: headers logged, both directions */
  al_names redact_headers; /* EXTPROC_ACCESS_LOG_REDACT_HEADERS: logged as "[REDACTED]" */
  al_names redact_fields;  /* EXTPROC_ACCESS_LOG_REDACT_FIELDS: JSON body fields redacted */
  size_t body_cap;         /* EXTPROC_ACCESS_LOG_BODY_CAP: body bytes kept; 0: no bodies */
  size_t queue_lines;      /* EXTPROC_ACCESS_LOG_QUEUE: lines waiting for the writer */
  size_t queue_bytes;      /* EXTPROC_ACCESS_LOG_QUEUE_BYTES: bytes waiting for the writer */
} al_settings;

/* Reads the settings from the environment. Returns 0, or -1 after logging which setting is
 * bad (then nothing needs freeing). */
int al_settings_read(al_settings *s);

/* Frees what al_settings_read allocated. */
void al_settings_free(al_settings *s);

/* True when `name` (any case) is in the list, or the list is "*". */
bool al_names_has(const al_names *list, const char *name);

#endif
