/* One scenario played against a server: Envoy's picture of the HTTP exchange as the replies
 * change it (the outcome), and the judgments Envoy 1.40 would make along the way. */
#ifndef EXTPROC_TEST_EXCHANGE_H
#define EXTPROC_TEST_EXCHANGE_H

#include <cjson/cJSON.h>

#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc_test.h"
#include "scenario.h"

typedef Envoy__Service__ExtProc__V3__ProcessingResponse processing_response;
typedef Envoy__Service__ExtProc__V3__CommonResponse common_response;
typedef Envoy__Service__ExtProc__V3__HeaderMutation header_mutation;

/* One thing Envoy would do about a reply: a code (docs/scenarios.md) and a sentence. */
typedef struct judgment {
  const char *code; /* static */
  char *message;
} judgment;

/* A side of the exchange as Envoy forwards it. */
typedef struct side_outcome {
  bool reached; /* upstream: the request reached it; client: a response arrived */
  int status;   /* client: the HTTP status */
  pair_list headers;
  byte_buf body;
  bool has_trailers;
  pair_list trailers;
} side_outcome;

typedef struct outcome {
  side_outcome upstream, client;
  cJSON *dynamic_metadata; /* namespaces of every reply's dynamic_metadata, merged; or NULL */
  cJSON *mode_override;    /* the last mode_override sent, as {field: NAME}; or NULL */
  int grpc_status;         /* how the gRPC stream ended; -1: reset, or still open */
  int keeps_serving;       /* after a fault: 1 answered, 0 not; -1 not checked */
  judgment *judgments;
  size_t judgment_count;
} outcome;

/* Checks a target address: 0 with the numeric host (NUL-terminated in `host`) and `*port`, or
 * `*port` 0 for "unix:PATH"; -1 with why in `err`. */
int target_parse(const char *address, char *host, size_t hostlen, int *port, char *err,
                 size_t errlen);

/* Adds a judgment (message formatted). Out of memory loses the message, never the code. */
void outcome_judge(outcome *o, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool outcome_has_judgment(const outcome *o, const char *code);
void outcome_free(outcome *o);

/* The outcome as JSON: {upstream, client, dynamic_metadata, mode_override, grpc_status,
 * keeps_serving, envoy_says}. The caller frees it with cJSON_Delete. */
cJSON *outcome_to_json(const outcome *o);

/* Checks `o` against the scenario's expectations; each mismatch is appended to `failures` as a
 * sentence. Returns the number of mismatches. */
size_t outcome_check(const scenario *s, const outcome *o, pair_list *failures);

/* Plays `s` against `t`, filling `*o` (zeroed by the caller). Returns 0, or -1 when the
 * scenario could not be played at all (no connection...), with why in `err`. */
int play_scenario(const scenario *s, const extest_target *t, outcome *o, char *err, size_t errlen);

/* ---- Envoy's side of each reply (envoy_apply.c) ----------------------------------------- */

/* The state of one direction as Envoy holds it while the processor works on it. */
typedef struct direction {
  bool is_request;
  pair_list headers;
  byte_buf body;
  bool body_changed;
  bool has_trailers;
  pair_list trailers;
  bool content_length_dropped; /* Envoy removed content-length itself (streaming modes) */
  bool attributes_sent;        /* the direction's attributes went with its first message */
  bool headers_forwarded;      /* Envoy passed the headers on before the body was processed
                                  (STREAMED, FULL_DUPLEX_STREAMED) */
  byte_buf forwarded;          /* the body passed on so far, in those modes */
} direction;

/* Judges the header mutation `m` of a reply (value vs raw_value, mutations Envoy's default
 * mutation_rules ignore) and applies it to `headers` as Envoy does: removals first, then the
 * writes. `skip_content_length`: a write of content-length is ignored (Envoy removed it).
 * Returns false when Envoy would fail the request (value and raw_value both set). */
bool envoy_apply_header_mutation(outcome *o, const char *phase, const header_mutation *m,
                                 pair_list *headers, bool skip_content_length);

/* Whether a header name the encoded reply sets or removes holds a NUL byte, which protobuf-c
 * would cut off and Envoy refuses (`len` bytes, already bounded by wire_check). */
bool envoy_reply_names_hold_nul(const uint8_t *data, size_t len);

/* Merges a reply's dynamic_metadata into the outcome. */
void envoy_merge_dynamic_metadata(outcome *o, const processing_response *r);

/* Records a mode_override as sent. */
void envoy_record_mode_override(outcome *o, const processing_response *r);

#endif
