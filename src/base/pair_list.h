/* A growable list of (name, value) string pairs that owns copies of both, in the order added,
 * with names compared ASCII-caselessly as HTTP header names are. It holds the headers Envoy
 * would pass on in the testing harness, and the headers, trailers and attributes of
 * extproc-test's scenarios. Not thread-safe: one owner at a time. */
#ifndef EXTPROC_PAIR_LIST_H
#define EXTPROC_PAIR_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pair_list {
  char **names;  /* NUL-terminated, owned */
  char **values; /* NUL-terminated, owned */
  size_t count, cap;
} pair_list;

/* Appends copies of `name` and `value`. Returns false on out-of-memory, the list unchanged. */
bool pair_list_add(pair_list *l, const char *name, const char *value);

/* Removes every pair named `name`. */
void pair_list_remove(pair_list *l, const char *name);

/* The first value of `name`, or NULL; valid until the list changes. */
const char *pair_list_get(const pair_list *l, const char *name);

/* Stores up to `max` values of `name` in `values` (NULL when max is 0), in order, and returns how
 * many there are in all. Valid until the list changes. */
size_t pair_list_get_all(const pair_list *l, const char *name, const char **values, size_t max);

/* Removes every pair and keeps the storage for the next ones. */
void pair_list_empty(pair_list *l);

/* Frees everything; the list is empty (all zeros) afterwards. */
void pair_list_clear(pair_list *l);

/* Appends copies of every pair of `from`. Returns false on out-of-memory (some may be added). */
bool pair_list_copy(pair_list *to, const pair_list *from);

/* Makes `to` a copy of `from`. Returns false on out-of-memory. */
bool pair_list_assign(pair_list *to, const pair_list *from);

#endif
