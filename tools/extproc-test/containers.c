/* The tool's two containers: lists of (name, value) strings and growable byte buffers. */
#include "containers.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    if (strcasecmp(l->names[i], name) == 0) {
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
    if (strcasecmp(l->names[i], name) == 0) return l->values[i];
  return NULL;
}

void pair_list_clear(pair_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->names[i]);
    free(l->values[i]);
  }
  free(l->names);
  free(l->values);
  *l = (pair_list){0};
}

bool pair_list_assign(pair_list *to, const pair_list *from) {
  pair_list_clear(to);
  return pair_list_copy(to, from);
}

bool pair_list_copy(pair_list *to, const pair_list *from) {
  for (size_t i = 0; i < from->count; i++)
    if (!pair_list_add(to, from->names[i], from->values[i])) return false;
  return true;
}

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
