/* Decoding a ProcessingRequest into what the engine uses of it.
 *
 * Two decoders give the same view. decode_direct reads the shapes Envoy sends straight from
 * the wire: headers copied once into one block, a body chunk left where it arrived. For
 * anything it does not cover (attributes, metadata_context, flow-control fields, unknown or
 * repeated fields, unusual encodings, malformed input) it answers DECODE_INDIRECT, and the
 * caller unpacks the message with protobuf-c and converts it with decode_unpacked. A
 * differential fuzz test (tests/unit/test_decode.c) holds the two to the same result. */
#ifndef EXTPROC_DECODE_H
#define EXTPROC_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest ProcessingRequest;
typedef Envoy__Service__ExtProc__V3__ProcessingRequest__AttributesEntry AttributesEntry;

/* What the engine uses of one ProcessingRequest. */
typedef struct decoded_request {
  /* The `request` oneof's field number: 2 request_headers ... 7 response_trailers; 0 when no
   * phase is set. */
  unsigned phase_field;
  bool end_of_stream; /* HttpHeaders/HttpBody.end_of_stream; false for trailers */
  bool observability_mode;
  bool has_protocol_config;
  int32_t request_body_mode; /* ProtocolConfiguration fields, when has_protocol_config */
  int32_t response_body_mode;
  bool send_body_without_waiting_for_header_response;
  /* Headers or trailers: names cut at a NUL as C strings are; values from raw_value when it is
   * not empty, else from value (cut likewise). All NUL-terminated, in the arena. */
  extproc_header *headers;
  size_t header_count;
  /* A body phase's chunk ("" when empty). decode_direct leaves it in the input bytes. */
  const uint8_t *body;
  size_t body_len;
  bool body_in_input; /* the body lies in the decoded bytes (decode_direct, not empty) */
  /* Only through protobuf-c (decode_unpacked); they point into its unpacked message. */
  const Envoy__Config__Core__V3__Metadata *metadata_context;
  AttributesEntry *const *attributes;
  size_t attribute_count;
} decoded_request;

typedef enum decode_result {
  DECODE_OK,       /* *out holds the message */
  DECODE_INDIRECT, /* not a shape decode_direct reads: unpack it with protobuf-c */
  DECODE_NO_MEMORY
} decode_result;

/* Decodes `len` bytes of a ProcessingRequest into *out, headers in `a`. On DECODE_OK the body
 * points into `data`, which the caller keeps alive while it uses the view. Never fails on input
 * protobuf-c would accept differently: what it is not sure of is DECODE_INDIRECT. */
decode_result decode_direct(arena *a, const uint8_t *data, size_t len, decoded_request *out);

/* The view of a message protobuf-c unpacked, headers copied into `a`; the rest points into
 * `msg`. Returns false on out-of-memory. */
bool decode_unpacked(arena *a, const ProcessingRequest *msg, decoded_request *out);

#endif
