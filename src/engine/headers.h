/* Header maps: decoding Envoy's HeaderMap into the author's view, and the checks every header
 * write goes through. */
#ifndef EXTPROC_HEADERS_H
#define EXTPROC_HEADERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "base/list.h"
#include "envoy/config/core/v3/base.pb-c.h"
#include "extproc/extproc.h"

/* A header write recorded by a callback, in call order. */
typedef enum header_op { HEADER_SET, HEADER_APPEND, HEADER_ADD_IF_ABSENT, HEADER_REMOVE } header_op;

typedef struct header_edit {
  queue_link link;
  header_op op;
  char *name;  /* lower case, NUL-terminated */
  char *value; /* NUL-terminated; NULL for HEADER_REMOVE */
  size_t value_len;
} header_edit;

typedef struct header_edits {
  queue items; /* header_edit, in call order */
  size_t sets, removes;
} header_edits;

/* Copies `map` into an array of NUL-terminated name/value pairs in `a`, reading each value
 * from raw_value and falling back to value (Envoy fills raw_value; older senders fill value).
 * Returns false on out-of-memory. */
bool headers_load(arena *a, const Envoy__Config__Core__V3__HeaderMap *map, extproc_header **out,
                  size_t *count);

/* ASCII case-insensitive equality of a NUL-terminated string and a header name. */
bool header_name_equal(const char *a, const char *b);

/* True for a valid HTTP header name: RFC 9110 token characters, optionally after one leading
 * ':' (pseudo-headers such as :path may be rewritten). */
bool header_name_valid(const char *name);

/* True for a valid HTTP field value of `len` bytes: no control characters (CR, LF, NUL and the
 * rest) except horizontal tab; bytes from 0x80 up are allowed. */
bool header_value_valid(const char *value, size_t len);

/* The edit holding queue link `l`. */
static inline header_edit *header_edit_of(const queue_link *l) {
  return LIST_ITEM(l, header_edit, link);
}

/* Appends a validated edit (name lower-cased and copied, value copied) to `edits`, in `a`.
 * Returns 0, EXTPROC_EINVAL for a bad name or value, or EXTPROC_ENOMEM. */
int header_edits_add(arena *a, header_edits *edits, header_op op, const char *name,
                     const char *value);

/* The first value of header `name` (ASCII case-insensitive) among `count` headers, or NULL. */
const char *headers_find(const extproc_header *headers, size_t count, const char *name);

/* Parses a non-negative decimal integer of `len` bytes (surrounding spaces allowed). Returns -1
 * if it is empty, malformed or above 2^62. */
int64_t header_parse_length(const char *s, size_t len);

#endif
