/* What the access log gathers about one HTTP exchange, phase by phase, and the JSON line made
 * of it at the end. Everything here is owned by the exchange (plain malloc, not the request's
 * memory), so the line can still be made in context_cleanup, when Envoy ended the exchange
 * early and the request is going away. */
#ifndef ACCESS_LOG_EXCHANGE_H
#define ACCESS_LOG_EXCHANGE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "settings.h"

/* One direction's body: every byte is counted, the first body_cap are kept. */
typedef struct al_body {
  uint8_t *data;  /* the kept prefix */
  size_t len;     /* bytes kept */
  uint64_t total; /* bytes seen in all */
  bool seen;      /* a body phase came (possibly empty) */
  bool truncated; /* more than body_cap bytes came */
} al_body;

typedef struct al_exchange {
  const void *owner; /* the processor's configuration; set at request_headers */
  bool started;      /* request_headers was seen: there is something to log */
  bool emitted;      /* the line has been handed to the writer */
  bool response_started;
  bool request_headers_eos, response_headers_eos; /* headers ended their direction */
  struct timespec wall_start;                     /* CLOCK_REALTIME at request_headers */
  uint64_t t_start;                               /* CLOCK_MONOTONIC ns at request_headers */
  uint64_t t_request_last; /* ... when the last request phase seen was answered */
  uint64_t t_response;     /* ... when response_headers came; 0 if they did not */
  char *method, *path, *authority, *request_id; /* valid UTF-8 copies, or NULL */
  uint32_t status;                              /* response :status; 0 if none */
  int64_t request_length, response_length;      /* content-length; -1 if absent */
  cJSON *request_headers, *response_headers;    /* the chosen headers, as objects */
  al_body request_body, response_body;
} al_exchange;

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t al_now_ns(void);

/* A malloc'd copy of `len` bytes with every invalid UTF-8 sequence replaced by U+FFFD, so that
 * the line stays valid JSON (RFC 8259 requires UTF-8). NULL on out-of-memory. */
char *al_utf8_copy(const char *s, size_t len);

/* Records header `name` = `value` (len bytes) into *obj (created on first use): the value
 * is "[REDACTED]" when the name is in the redaction list, and the values of a repeated header
 * are joined with ", " (RFC 9110 field-line combination). Out of memory leaves it out. */
void al_header_add(cJSON **obj, const al_settings *s, const char *name, const char *value,
                   size_t len);

/* Counts a body chunk and keeps what fits under `cap`. */
void al_body_add(al_body *b, size_t cap, const uint8_t *data, size_t len);

/* The exchange's JSON line (no newline), malloc'd, `*len` bytes; NULL on out-of-memory.
 * `t_end` ends the total duration; `complete` says whether the response's end was seen. The
 * header objects are moved into the line. */
char *al_line_build(al_exchange *x, const al_settings *s, uint64_t t_end, bool complete,
                    size_t *len);

/* Frees what the exchange owns (not the exchange). */
void al_exchange_free(al_exchange *x);

#endif
