#include "base/pair_list.h"

#include <stdlib.h>
#include <string.h>

static bool ascii_caseless_equal(const char *a, const char *b) {
  for (; *a && *b; a++, b++) {
    const unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
    if ((x >= 'A' && x <= 'Z' ? x + 32 : x) != (y >= 'A' && y <= 'Z' ? y + 32 : y)) return false;
  }
  return *a == *b;
}

bool pair_list_add(pair_list *l, const char *name, const char *value) {
  if (l->count == l->cap) {
    const size_t cap = l->cap ? 2 * l->cap : 8;
    char **n = realloc(l->names, cap * sizeof(*n));
    if (!n) return false;
    l->names = n;
    char **v = realloc(l->values, cap * sizeof(*v));
    if (!v) return false;
    l->values = v;
    l->cap = cap;
  }
  char *nc = strdup(name), *vc = strdup(value);
  if (!nc || !vc) {
    free(nc);
    free(vc);
    return false;
  }
  l->names[l->count] = nc;
  l->values[l->count++] = vc;
  return true;
}

void pair_list_remove(pair_list *l, const char *name) {
  size_t kept = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (ascii_caseless_equal(l->names[i], name)) {
      free(l->names[i]);
      free(l->values[i]);
      continue;
    }
    l->names[kept] = l->names[i];
    l->values[kept++] = l->values[i];
  }
  l->count = kept;
}

const char *pair_list_get(const pair_list *l, const char *name) {
  for (size_t i = 0; i < l->count; i++)
    if (ascii_caseless_equal(l->names[i], name)) return l->values[i];
  return NULL;
}

size_t pair_list_get_all(const pair_list *l, const char *name, const char **values, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (!ascii_caseless_equal(l->names[i], name)) continue;
    if (values && n < max) values[n] = l->values[i];
    n++;
  }
  return n;
}

void pair_list_empty(pair_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->names[i]);
    free(l->values[i]);
  }
  l->count = 0;
}

void pair_list_clear(pair_list *l) {
  pair_list_empty(l);
  free(l->names);
  free(l->values);
  *l = (pair_list){0};
}

bool pair_list_copy(pair_list *to, const pair_list *from) {
  for (size_t i = 0; i < from->count; i++)
    if (!pair_list_add(to, from->names[i], from->values[i])) return false;
  return true;
}

bool pair_list_assign(pair_list *to, const pair_list *from) {
  pair_list_clear(to);
  return pair_list_copy(to, from);
}
