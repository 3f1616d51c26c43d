/* Scenarios as read from a scenario file (docs/scenarios.md): what to play against an ext_proc
 * server and what must come back. Everything a scenario holds is owned by its suite and freed
 * with it; strings are NUL-terminated copies, bodies are byte buffers with a length. */
#ifndef EXTPROC_TEST_SCENARIO_H
#define EXTPROC_TEST_SCENARIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "containers.h"
#include "extproc/extproc.h"

/* One side of an HTTP exchange as the scenario gives it: the client's request or the upstream's
 * response. */
typedef struct http_message {
  pair_list headers; /* pseudo-headers filled in when the scenario left them out */
  byte_buf *chunks;  /* the body, chunk by chunk as Envoy receives it */
  size_t chunk_count;
  bool has_trailers;
  pair_list trailers;
} http_message;

typedef enum fault_kind {
  FAULT_NONE,
  FAULT_CANCEL_AFTER,           /* RST_STREAM (CANCEL) after `fault_arg` messages */
  FAULT_RESET_CONNECTION_AFTER, /* TCP RST after `fault_arg` messages */
  FAULT_OVERSIZE,               /* a first request_body of `fault_arg` bytes */
  FAULT_MALFORMED,              /* a first message that is not a ProcessingRequest */
  FAULT_SILENT,                 /* `fault_arg` ms of silence after the first message */
} fault_kind;

/* A header expectation: the values `name` must have (all of them, in order), or absence. */
typedef struct header_expect {
  char *name;
  bool absent;
  char **values;
  size_t value_count;
} header_expect;

typedef struct header_expects {
  header_expect *items;
  size_t count;
} header_expects;

/* What one side (the upstream's request, the client's response) must look like. */
typedef struct side_expect {
  bool given;       /* the scenario said anything about this side */
  bool not_reached; /* `upstream: none` */
  int status;       /* client only; 0: not checked */
  header_expects headers;
  bool has_body;
  byte_buf body;
  header_expects trailers;
} side_expect;

typedef struct scenario_expect {
  side_expect upstream, client;
  char *dynamic_metadata_json; /* the expected namespaces as JSON (an object), or NULL */
  char *mode_override_json;    /* expected mode_override fields as JSON, or NULL */
  bool has_grpc_status;
  int grpc_status;
  bool has_keeps_serving;
  bool keeps_serving;
  char **envoy_says; /* judgment codes expected, each once */
  size_t envoy_says_count;
} scenario_expect;

typedef struct scenario {
  char *file; /* the scenario file's path, as given */
  char *name;
  int line; /* where the scenario starts in its file (1-based) */
  extproc_processing_mode mode;
  bool allow_mode_override;
  bool failure_mode_allow;
  bool observability_mode;
  uint32_t message_timeout_ms;
  uint32_t max_message_timeout_ms;
  pair_list request_attributes, response_attributes;
  pair_list metadata_keys;   /* names: "namespace", values: "key" ... */
  pair_list metadata_values; /* ... paired by index with these values */
  http_message request, response;
  uint32_t pause_ms;
  fault_kind fault;
  uint64_t fault_arg;
  scenario_expect expect;
  char *golden_path; /* resolved against the file's directory, or NULL */
  char *envoy_skip;  /* why real Envoy cannot show this scenario, or NULL */
} scenario;

/* Opens `path` with fopen's `mode` ("rb", or "w" creating or truncating it), if it is a regular
 * file of at most `max_bytes` (a FIFO, a device or a folder is refused without blocking).
 * NULL with "path: why" in `err` otherwise. */
FILE *open_regular_file(const char *path, const char *mode, size_t max_bytes, char *err,
                        size_t errlen);

/* Reads every scenario of the file at `path` and appends them to `*list` (`*count` grows).
 * Returns 0, or -1 with a message "path:line: what" in `err` (the list keeps what it had). */
int scenario_file_load(const char *path, scenario **list, size_t *count, char *err, size_t errlen);

void scenario_free(scenario *s);

/* The filled-in body of `m`, chunks joined, into `out` (appended). */
bool http_message_body(const http_message *m, byte_buf *out);

/* Envoy's enum names for the processing-mode fields. NULL when out of range. */
const char *header_mode_name(extproc_header_mode m);
const char *body_mode_name(extproc_body_mode m);

#endif
