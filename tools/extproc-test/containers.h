/* The tool's containers: lists of (name, value) strings (headers, trailers, attributes; the
 * library's pair_list) and growable byte buffers (bodies), both owning what they hold. */
#ifndef EXTPROC_TEST_CONTAINERS_H
#define EXTPROC_TEST_CONTAINERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/pair_list.h" /* pair_list: headers, trailers, attributes */

/* A growable byte buffer. */
typedef struct byte_buf {
  uint8_t *data;
  size_t len, cap;
} byte_buf;

/* Makes room for `extra` more bytes (and the NUL kept after them). */
bool byte_buf_reserve(byte_buf *b, size_t extra);
bool byte_buf_append(byte_buf *b, const void *data, size_t len);
void byte_buf_free(byte_buf *b);

#endif
