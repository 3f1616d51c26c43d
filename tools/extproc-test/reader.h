/* Reading a scenario file's YAML nodes (libyaml's document API) into typed values. Every
 * function taking a reader returns false (or NULL) on a value of the wrong shape, after
 * recording "path:line: what" in the reader (only the first mistake is kept). */
#ifndef EXTPROC_TEST_READER_H
#define EXTPROC_TEST_READER_H

#include <stdbool.h>
#include <stdint.h>
#include <yaml.h>

#include "containers.h"

/* What one file may expand to: YAML aliases let a few bytes stand for a lot (or for a cycle). */
enum {
  MAX_FILE_BYTES = 16 << 20,  /* the file itself */
  MAX_BODY_BYTES = 256 << 20, /* body chunks, over the whole file, aliases expanded */
  MAX_JSON_NODES = 100000,    /* nodes of expected metadata or overrides, over the whole file */
  MAX_JSON_DEPTH = 32,        /* their nesting */
};

typedef struct reader {
  yaml_document_t doc;
  const char *path;
  char *err;
  size_t errlen;
  bool failed;
  size_t body_bytes; /* chunk bytes read so far */
  size_t json_nodes; /* expected-JSON nodes read so far */
} reader;

/* Records the first mistake: "path:line: " and the formatted text. Returns false. */
bool reader_fail(reader *r, const yaml_node_t *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The node at `index` of the document. */
yaml_node_t *reader_node(reader *r, int index);

/* A scalar's text; NULL for another node, and for a scalar holding a NUL byte. */
const char *reader_scalar(const yaml_node_t *n);

/* The value under `key` in mapping `map` (NULL if absent, or `map` is not a mapping). */
yaml_node_t *reader_get(reader *r, const yaml_node_t *map, const char *key);

/* Fails on a key of `map` not in `known` (NULL-terminated); `what` names `map` in the message. */
bool reader_only_keys(reader *r, const yaml_node_t *map, const char *what,
                      const char *const *known);

/* A plain null (`null`, `~` or nothing). */
bool reader_is_null(const yaml_node_t *n);

/* A string (replacing *out, malloc'd), true/false, a whole number up to `max`. */
bool reader_string(reader *r, const yaml_node_t *n, const char *what, char **out);
bool reader_bool(reader *r, const yaml_node_t *n, const char *what, bool *out);
bool reader_uint(reader *r, const yaml_node_t *n, const char *what, uint64_t max, uint64_t *out);
bool reader_u32(reader *r, const yaml_node_t *n, const char *what, uint32_t *out);

/* Headers, trailers or attributes: a mapping, or a list of [name, value] pairs; no NUL, CR or
 * LF. Appended to `out`. */
bool reader_pairs(reader *r, const yaml_node_t *n, const char *what, pair_list *out);

/* A mapping as compact JSON text (malloc'd), scalars as strings, within the file's budget. */
bool reader_json(reader *r, const yaml_node_t *n, const char *what, char **out);

#endif
