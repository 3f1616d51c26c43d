/* Structs a caller fills that may grow: each begins with `size_t struct_size`, the size the
 * caller was compiled with (sizeof of its version of the struct). The library reads what the
 * caller's version has and takes defaults (zero) for fields added since; a caller newer than the
 * library is accepted only if it left every field the library does not know at zero. */
#ifndef EXTPROC_SIZED_STRUCT_H
#define EXTPROC_SIZED_STRUCT_H

#include <stddef.h>

/* Copies the caller's struct `src` into `dst` (the library's version, `dst_size` bytes),
 * zero-filling fields the caller's version lacks; dst's struct_size becomes dst_size.
 * Returns 0, or EXTPROC_EINVAL when src's struct_size is smaller than the size field itself (it
 * was not set) or when src is larger and a byte the library does not know is not zero. */
int sized_struct_read(void *dst, size_t dst_size, const void *src);

/* Writes the library's struct `src` (`src_size` bytes) into the caller's `dst`, as far as the
 * caller's version reaches; dst's struct_size is kept. Returns 0 or EXTPROC_EINVAL (struct_size
 * not set). */
int sized_struct_write(void *dst, const void *src, size_t src_size);

#endif
