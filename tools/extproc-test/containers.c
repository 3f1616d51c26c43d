/* The tool's growable byte buffers (its lists of string pairs are the library's pair_list). */
#include "containers.h"

#include <stdlib.h>
#include <string.h>

bool byte_buf_reserve(byte_buf *b, size_t extra) {
  if (b->len + extra + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
      cap *= 2;
    uint8_t *d = realloc(b->data, cap);
    if (!d) return false;
    b->data = d;
    b->cap = cap;
  }
  return true;
}

bool byte_buf_append(byte_buf *b, const void *data, size_t len) {
  if (!byte_buf_reserve(b, len)) return false;
  if (len) memcpy(b->data + b->len, data, len);
  b->len += len;
  b->data[b->len] = 0; /* always a C string too, for messages and JSON */
  return true;
}

void byte_buf_free(byte_buf *b) {
  free(b->data);
  *b = (byte_buf){0};
}
