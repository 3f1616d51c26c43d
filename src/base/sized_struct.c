#include "base/sized_struct.h"

#include <stdint.h>
#include <string.h>

#include "extproc/extproc.h"

static size_t struct_size_of(const void *s) {
  size_t n;
  memcpy(&n, s, sizeof(n));
  return n;
}

int sized_struct_read(void *dst, size_t dst_size, const void *src) {
  const size_t src_size = struct_size_of(src);
  if (src_size < sizeof(size_t)) return EXTPROC_EINVAL;
  const uint8_t *bytes = src;
  for (size_t i = dst_size; i < src_size; i++)
    if (bytes[i] != 0) return EXTPROC_EINVAL; /* a field this library does not know is in use */
  memset(dst, 0, dst_size);
  memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
  memcpy(dst, &dst_size, sizeof(dst_size));
  return 0;
}

int sized_struct_write(void *dst, const void *src, size_t src_size) {
  const size_t dst_size = struct_size_of(dst);
  if (dst_size < sizeof(size_t)) return EXTPROC_EINVAL;
  const size_t n = dst_size < src_size ? dst_size : src_size;
  memcpy((uint8_t *)dst + sizeof(size_t), (const uint8_t *)src + sizeof(size_t),
         n - sizeof(size_t));
  return 0;
}
