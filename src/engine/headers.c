#include "engine/headers.h"

#include <string.h>

bool headers_load(arena *a, const Envoy__Config__Core__V3__HeaderMap *map, extproc_header **out,
                  size_t *count) {
  *out = NULL;
  *count = 0;
  if (!map || map->n_headers == 0) return true;
  extproc_header *h = arena_alloc(a, map->n_headers * sizeof(*h));
  if (!h) return false;
  for (size_t i = 0; i < map->n_headers; i++) {
    const Envoy__Config__Core__V3__HeaderValue *hv = map->headers[i];
    h[i].name = hv->key ? hv->key : "";
    h[i].name_len = strlen(h[i].name);
    if (hv->raw_value.len > 0) {
      char *v = arena_strndup(a, (const char *)hv->raw_value.data, hv->raw_value.len);
      if (!v) return false;
      h[i].value = v;
      h[i].value_len = hv->raw_value.len;
    } else {
      h[i].value = hv->value ? hv->value : "";
      h[i].value_len = strlen(h[i].value);
    }
  }
  *out = h;
  *count = map->n_headers;
  return true;
}

static unsigned char ascii_lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

bool header_name_equal(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (ascii_lower((unsigned char)*a) != ascii_lower((unsigned char)*b)) return false;
  return *a == *b;
}

/* RFC 9110 token characters ("tchar"), as a table: every header write is checked. */
static bool is_tchar(unsigned char c) {
  static const uint32_t tchar[8] = {0x00000000, /* 0x00-0x1f: controls */
                                    0x03ff6cfa, /* 0x20-0x3f: ! # $ % & ' * + - . 0-9 */
                                    0xc7fffffe, /* 0x40-0x5f: A-Z ^ _ */
                                    0x57ffffff, /* 0x60-0x7f: ` a-z | ~ */
                                    0,          0, 0, 0};
  return (tchar[c >> 5] >> (c & 31)) & 1;
}

bool header_name_valid(const char *name) {
  if (!name) return false;
  if (*name == ':') name++;
  if (!*name) return false;
  for (; *name; name++)
    if (!is_tchar((unsigned char)*name)) return false;
  return true;
}

bool header_value_valid(const char *value, size_t len) {
  if (!value) return false;
  for (size_t i = 0; i < len; i++) {
    const unsigned char c = (unsigned char)value[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

int64_t header_parse_length(const char *s, size_t len) {
  size_t i = 0;
  while (i < len && s[i] == ' ')
    i++;
  while (len > i && s[len - 1] == ' ')
    len--;
  if (i == len) return -1;
  int64_t n = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    if (n > ((int64_t)1 << 62) / 10) return -1;
    n = n * 10 + (s[i] - '0');
  }
  return n;
}

/* ---- Recording writes ---------------------------------------------------------------- */

static char *copy_lower(arena *a, const char *s) {
  const size_t len = strlen(s);
  char *p = arena_alloc(a, len + 1);
  if (!p) return NULL;
  for (size_t i = 0; i <= len; i++)
    p[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + ('a' - 'A')) : s[i];
  return p;
}

int header_edits_add(arena *a, header_edits *edits, header_op op, const char *name,
                     const char *value) {
  if (!header_name_valid(name)) return EXTPROC_EINVAL;
  const size_t value_len = value ? strlen(value) : 0;
  if (op != HEADER_REMOVE && !header_value_valid(value, value_len)) return EXTPROC_EINVAL;
  header_edit *e = arena_calloc(a, sizeof(*e));
  if (!e) return EXTPROC_ENOMEM;
  e->op = op;
  e->name = copy_lower(a, name);
  if (!e->name) return EXTPROC_ENOMEM;
  if (op != HEADER_REMOVE) {
    e->value = arena_strndup(a, value, value_len);
    if (!e->value) return EXTPROC_ENOMEM;
    e->value_len = value_len;
    edits->sets++;
  } else {
    edits->removes++;
  }
  queue_push(&edits->items, &e->link);
  return 0;
}

const char *headers_find(const extproc_header *headers, size_t count, const char *name) {
  const size_t len = strlen(name);
  for (size_t i = 0; i < count; i++)
    if (headers[i].name_len == len && header_name_equal(headers[i].name, name))
      return headers[i].value;
  return NULL;
}
