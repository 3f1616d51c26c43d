/* Bounds a message's nesting depth and sub-message count before it is unpacked. */
#ifndef EXTPROC_WIRE_CHECK_H
#define EXTPROC_WIRE_CHECK_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

/* The deepest nesting ever allowed (protobuf's own default recursion limit). */
enum { WIRE_CHECK_MAX_DEPTH = 100 };

typedef enum wire_check_result {
  WIRE_OK,
  WIRE_MALFORMED,        /* not a valid encoding (protobuf-c would refuse it too) */
  WIRE_TOO_DEEP,         /* sub-messages nested deeper than max_depth */
  WIRE_TOO_MANY_MESSAGES /* more than max_messages sub-messages in all */
} wire_check_result;

/* Walks `len` bytes encoding a `desc` message, without recursion or allocation. max_depth is
 * capped at WIRE_CHECK_MAX_DEPTH. */
wire_check_result wire_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                             size_t len, unsigned max_depth, size_t max_messages);

#endif
