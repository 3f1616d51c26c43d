/* Encoding the replies: the same bytes protobuf_c_message_pack writes, without its reflective
 * walk for the ProcessingResponses the engine sends on every phase.
 *
 * A ProcessingResponse made of headers, body and trailers replies (CommonResponse,
 * HeaderMutation, BodyMutation, StreamedBodyResponse) and mode_override is encoded directly;
 * any other message, or one carrying fields encoded rarely (immediate responses, dynamic
 * metadata, timeouts, unknown fields), is handed to protobuf-c. tests/unit/test_encode.c holds
 * the two to byte-identical output. */
#ifndef EXTPROC_ENCODE_H
#define EXTPROC_ENCODE_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sub-messages whose sizes a plan remembers between sizing and writing; a reply with more
 * (dozens of header writes) goes to protobuf-c. */
enum { ENCODE_MAX_SUBMESSAGES = 64 };

/* What encode_size learnt, for encode_pack. Lives on the caller's stack. */
typedef struct encode_plan {
  bool direct; /* false: protobuf-c packs it */
  size_t count;
  size_t sizes[ENCODE_MAX_SUBMESSAGES];
} encode_plan;

/* The encoded size of `msg` in bytes, filling *plan. */
size_t encode_size(const ProtobufCMessage *msg, encode_plan *plan);

/* Writes `msg` to `out`, which has room for encode_size's answer; `plan` is what that call
 * filled for the same, unchanged message. Returns the bytes written. */
size_t encode_pack(const ProtobufCMessage *msg, const encode_plan *plan, uint8_t *out);

#endif
