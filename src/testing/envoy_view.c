/* The headers Envoy would pass on: what the upstream receives and what the client gets, kept
 * as the harness's views and changed by each reply's mutations the way Envoy's filter applies
 * them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testing/harness_internal.h"

/* Applies one HeaderValueOption as Envoy's ext_proc filter does: the legacy `append` flag,
 * when present, decides between adding and overwriting; otherwise append_action does. */
static bool list_apply(pair_list *l, const extproc_harness_header_write *w, bool has_append) {
  const bool exists = pair_list_get_all(l, w->name, NULL, 0) > 0;
  enum { APPEND = 0, ADD_IF_ABSENT = 1, OVERWRITE_OR_ADD = 2, OVERWRITE_IF_EXISTS = 3 };
  int action = w->append_action;
  if (has_append && action != ADD_IF_ABSENT) action = w->append ? APPEND : OVERWRITE_OR_ADD;
  switch (action) {
  case ADD_IF_ABSENT: return exists || pair_list_add(l, w->name, w->value);
  case OVERWRITE_IF_EXISTS:
    if (!exists) return true;
    /* fall through */
  case OVERWRITE_OR_ADD: pair_list_remove(l, w->name); return pair_list_add(l, w->name, w->value);
  default: return pair_list_add(l, w->name, w->value);
  }
}

/* ---- Views ----------------------------------------------------------------------------- */

pair_list *envoy_view_of(extproc_harness *h, extproc_phase phase) {
  if (phase == EXTPROC_REQUEST_TRAILERS || phase == EXTPROC_RESPONSE_TRAILERS) return NULL;
  return phase < EXTPROC_RESPONSE_HEADERS ? &h->upstream : &h->client;
}

bool envoy_view_set(pair_list *view, const char *const *pairs, size_t n) {
  pair_list_empty(view);
  bool ok = true;
  for (size_t i = 0; i < n; i++)
    ok = pair_list_add(view, pairs[2 * i], pairs[2 * i + 1]) && ok;
  return ok;
}

bool envoy_view_apply(pair_list *view, const extproc_harness_reply *r,
                      const Envoy__Service__ExtProc__V3__HeaderMutation *m) {
  /* Envoy applies the removals first, then the writes. */
  for (size_t i = 0; i < r->header_remove_count; i++)
    pair_list_remove(view, r->header_removes[i]);
  for (size_t i = 0; i < r->header_write_count; i++)
    if (!list_apply(view, &r->header_writes[i], m->set_headers[i]->append != NULL)) return false;
  return true;
}

bool envoy_view_immediate(pair_list *client, const extproc_harness_reply *r,
                          const Envoy__Service__ExtProc__V3__HeaderMutation *m) {
  pair_list_empty(client);
  char status[12];
  snprintf(status, sizeof(status), "%u", r->immediate_status);
  if (!pair_list_add(client, ":status", status)) return false;
  return !m || envoy_view_apply(client, r, m);
}

bool envoy_view_replace(pair_list *client, const extproc_harness_reply *r) {
  pair_list_empty(client);
  for (size_t i = 0; i < r->header_write_count; i++)
    if (!pair_list_add(client, r->header_writes[i].name, r->header_writes[i].value)) return false;
  return true;
}

void envoy_view_free(extproc_harness *h) {
  pair_list_clear(&h->upstream);
  pair_list_clear(&h->client);
}

/* ---- Inspection ------------------------------------------------------------------------ */

const char *extproc_harness_upstream_header(const extproc_harness *h, const char *name) {
  return (h && name) ? pair_list_get(&h->upstream, name) : NULL;
}

const char *extproc_harness_client_header(const extproc_harness *h, const char *name) {
  return (h && name) ? pair_list_get(&h->client, name) : NULL;
}

size_t extproc_harness_upstream_header_all(const extproc_harness *h, const char *name,
                                           const char **values, size_t max) {
  return (h && name) ? pair_list_get_all(&h->upstream, name, values, max) : 0;
}

size_t extproc_harness_client_header_all(const extproc_harness *h, const char *name,
                                         const char **values, size_t max) {
  return (h && name) ? pair_list_get_all(&h->client, name, values, max) : 0;
}
