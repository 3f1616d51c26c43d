/* A pre-flight check of a message's wire encoding, before protobuf-c unpacks it.
 *
 * protobuf-c unpacks nested messages by recursion, with no depth limit, so a small message of
 * deeply nested google.protobuf.Struct values (attributes, metadata_context) would overflow the
 * loop thread's stack; and a message of millions of tiny sub-messages would decode into a
 * hundred times its size. This walk follows the schema iteratively, with an explicit stack, and
 * bounds both. */
#include "engine/wire_check.h"

#include <stdbool.h>

typedef struct frame {
  const ProtobufCMessageDescriptor *desc;
  const uint8_t *end;
} frame;

/* A message with no message-typed field (HeaderValue, say) cannot nest: its bytes need no walk. */
static bool is_leaf(const ProtobufCMessageDescriptor *desc) {
  for (unsigned i = 0; i < desc->n_fields; i++)
    if (desc->fields[i].type == PROTOBUF_C_TYPE_MESSAGE) return false;
  return true;
}

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
    const uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

wire_check_result wire_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                             size_t len, unsigned max_depth, size_t max_messages) {
  frame stack[WIRE_CHECK_MAX_DEPTH + 1];
  if (max_depth > WIRE_CHECK_MAX_DEPTH) max_depth = WIRE_CHECK_MAX_DEPTH;
  unsigned depth = 0;
  size_t messages = 0;
  stack[0] = (frame){desc, data + len};
  const uint8_t *p = data;
  for (;;) {
    while (depth > 0 && p == stack[depth].end)
      depth--;                                 /* end of a sub-message */
    if (p == stack[depth].end) return WIRE_OK; /* end of the whole message */
    const uint8_t *end = stack[depth].end;
    uint64_t key, n;
    if (!read_varint(&p, end, &key)) return WIRE_MALFORMED;
    switch (key & 7) {
    case 0: /* varint */
      if (!read_varint(&p, end, &n)) return WIRE_MALFORMED;
      break;
    case 1: /* fixed64 */
      if (end - p < 8) return WIRE_MALFORMED;
      p += 8;
      break;
    case 5: /* fixed32 */
      if (end - p < 4) return WIRE_MALFORMED;
      p += 4;
      break;
    case 2: { /* length-delimited: bytes, a string, packed numbers, or a sub-message */
      if (!read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return WIRE_MALFORMED;
      const ProtobufCFieldDescriptor *f =
          key >> 3 <= UINT32_MAX
              ? protobuf_c_message_descriptor_get_field(stack[depth].desc, (unsigned)(key >> 3))
              : NULL;
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
        if (++messages > max_messages) return WIRE_TOO_MANY_MESSAGES;
        if (depth + 1 > max_depth) return WIRE_TOO_DEEP;
        if (is_leaf(f->descriptor))
          p += n;
        else
          stack[++depth] = (frame){f->descriptor, p + n};
      } else {
        p += n;
      }
      break;
    }
    default: /* groups (3, 4) are not in proto3 and protobuf-c rejects them */
      return WIRE_MALFORMED;
    }
    if (p > end) return WIRE_MALFORMED;
  }
}
