/* The tool's two containers: lists of (name, value) strings (headers, trailers, attributes)
 * and growable byte buffers (bodies), both owning what they hold. */
#ifndef EXTPROC_TEST_CONTAINERS_H
#define EXTPROC_TEST_CONTAINERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable list of (name, value) string pairs: headers, trailers, attributes. */
typedef struct pair_list {
  char **names;
  char **values;
  size_t count, cap;
} pair_list;

bool pair_list_add(pair_list *l, const char *name, const char *value);
void pair_list_remove(pair_list *l, const char *name); /* every entry, name compared caseless */
/* The first value of `name` (caseless), or NULL. */
const char *pair_list_get(const pair_list *l, const char *name);
void pair_list_clear(pair_list *l);
bool pair_list_copy(pair_list *to, const pair_list *from);   /* appends `from` */
bool pair_list_assign(pair_list *to, const pair_list *from); /* `to` becomes a copy of `from` */

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
