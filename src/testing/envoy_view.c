/* The headers Envoy would pass on: what the upstream receives and what the client gets, kept
 * as the harness's views and changed by each reply's mutations the way Envoy's filter applies
 * them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/headers.h"
#include "testing/harness_internal.h"

/* ---- Header lists ---------------------------------------------------------------------- */

static void list_clear(header_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->names[i]);
    free(l->values[i]);
  }
  l->count = 0;
}

static bool list_add(header_list *l, const char *name, const char *value) {
  if (l->count == l->cap) {
    const size_t cap = l->cap ? l->cap * 2 : 16;
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

static void list_remove(header_list *l, const char *name) {
  size_t kept = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (header_name_equal(l->names[i], name)) {
      free(l->names[i]);
      free(l->values[i]);
      continue;
    }
    l->names[kept] = l->names[i];
    l->values[kept++] = l->values[i];
  }
  l->count = kept;
}

static size_t list_get_all(const header_list *l, const char *name, const char **values,
                           size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < l->count; i++) {
    if (!header_name_equal(l->names[i], name)) continue;
    if (values && n < max) values[n] = l->values[i];
    n++;
  }
  return n;
}

/* Applies one HeaderValueOption as Envoy's ext_proc filter does: the legacy `append` flag,
 * when present, decides between adding and overwriting; otherwise append_action does. */
static bool list_apply(header_list *l, const extproc_harness_header_write *w, bool has_append) {
  const bool exists = list_get_all(l, w->name, NULL, 0) > 0;
  enum { APPEND = 0, ADD_IF_ABSENT = 1, OVERWRITE_OR_ADD = 2, OVERWRITE_IF_EXISTS = 3 };
  int action = w->append_action;
  if (has_append && action != ADD_IF_ABSENT) action = w->append ? APPEND : OVERWRITE_OR_ADD;
  switch (action) {
  case ADD_IF_ABSENT: return exists || list_add(l, w->name, w->value);
  case OVERWRITE_IF_EXISTS:
    if (!exists) return true;
    /* fall through */
  case OVERWRITE_OR_ADD: list_remove(l, w->name); return list_add(l, w->name, w->value);
  default: return list_add(l, w->name, w->value);
  }
}

static void list_free(header_list *l) {
  list_clear(l);
  free(l->names);
  free(l->values);
}

/* ---- Views ----------------------------------------------------------------------------- */

header_list *envoy_view_of(extproc_harness *h, extproc_phase phase) {
  if (phase == EXTPROC_REQUEST_TRAILERS || phase == EXTPROC_RESPONSE_TRAILERS) return NULL;
  return phase < EXTPROC_RESPONSE_HEADERS ? &h->upstream : &h->client;
}

bool envoy_view_set(header_list *view, const char *const *pairs, size_t n) {
  list_clear(view);
  bool ok = true;
  for (size_t i = 0; i < n; i++)
    ok = list_add(view, pairs[2 * i], pairs[2 * i + 1]) && ok;
  return ok;
}

bool envoy_view_apply(header_list *view, const extproc_harness_reply *r,
                      const Envoy__Service__ExtProc__V3__HeaderMutation *m) {
  /* Envoy applies the removals first, then the writes. */
  for (size_t i = 0; i < r->header_remove_count; i++)
    list_remove(view, r->header_removes[i]);
  for (size_t i = 0; i < r->header_write_count; i++)
    if (!list_apply(view, &r->header_writes[i], m->set_headers[i]->append != NULL)) return false;
  return true;
}

bool envoy_view_immediate(header_list *client, const extproc_harness_reply *r,
                          const Envoy__Service__ExtProc__V3__HeaderMutation *m) {
  list_clear(client);
  char status[12];
  snprintf(status, sizeof(status), "%u", r->immediate_status);
  if (!list_add(client, ":status", status)) return false;
  return !m || envoy_view_apply(client, r, m);
}

bool envoy_view_replace(header_list *client, const extproc_harness_reply *r) {
  list_clear(client);
  for (size_t i = 0; i < r->header_write_count; i++)
    if (!list_add(client, r->header_writes[i].name, r->header_writes[i].value)) return false;
  return true;
}

void envoy_view_free(extproc_harness *h) {
  list_free(&h->upstream);
  list_free(&h->client);
}

/* ---- Inspection ------------------------------------------------------------------------ */

const char *extproc_harness_upstream_header(const extproc_harness *h, const char *name) {
  const char *v = NULL;
  return (h && name && list_get_all(&h->upstream, name, &v, 1)) ? v : NULL;
}

const char *extproc_harness_client_header(const extproc_harness *h, const char *name) {
  const char *v = NULL;
  return (h && name && list_get_all(&h->client, name, &v, 1)) ? v : NULL;
}

size_t extproc_harness_upstream_header_all(const extproc_harness *h, const char *name,
                                           const char **values, size_t max) {
  return (h && name) ? list_get_all(&h->upstream, name, values, max) : 0;
}

size_t extproc_harness_client_header_all(const extproc_harness *h, const char *name,
                                         const char **values, size_t max) {
  return (h && name) ? list_get_all(&h->client, name, values, max) : 0;
}
