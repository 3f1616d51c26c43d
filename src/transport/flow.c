/* Flow-control budgets. nghttp2 returns window credit only when told (automatic window
 * updates are off), so a stream's received bytes go back to the peer when processed, and are
 * held back to push back, without ever refusing data the peer was allowed to send:
 *  - a deferred phase holds its stream, so Envoy cannot queue input behind it without bound;
 *  - replies the peer does not read hold every stream (the peer is not reading: stop taking);
 *  - past the partial-message budget only the stream with the most buffered is fed, so memory
 *    stays bounded and that message still completes, then the next;
 *  - past the server-wide max_buffered_bytes (all connections of all workers, an atomic
 *    counter) no incomplete message is fed, until messages complete or streams end. */
#include "transport/connection.h"

/* Replies queued but not yet taken by the peer: past this, the connection takes no more input
 * until the peer reads. */
enum { OUTPUT_BUDGET_BYTES = 4 << 20 };

static bool engine_busy(const h2_stream *s) { return s->engine && stream_busy(s->engine); }

static bool over_server_budget(const connection *c) {
  return atomic_load(&c->w->stats->buffered_bytes) > c->w->cfg->max_buffered_bytes;
}

/* The connection's input waits for the server-wide budget: counted and logged once per
 * episode, and retried from a timer, since the budget may be freed by another worker. */
static void hold_for_server_budget(connection *c) {
  worker_retry_budget_later(c->w);
  if (c->held_by_budget) return;
  c->held_by_budget = true;
  limit_hit(c->w->stats, LIMIT_BUFFERED_BYTES,
            "connection from %s: %llu bytes of incomplete messages buffered by the server, over "
            "max_buffered_bytes (%zu): holding its input",
            c->peer, (unsigned long long)atomic_load(&c->w->stats->buffered_bytes),
            c->w->cfg->max_buffered_bytes);
}

static bool may_take_input(connection *c, const h2_stream *s) {
  if (engine_busy(s)) return false;
  if (c->queued_out_bytes > OUTPUT_BUDGET_BYTES) return false;
  if (grpc_reader_idle(&s->reader)) return true;
  /* Over the server-wide budget no incomplete message gets credit, not even the favoured one:
   * every connection could have one, and the total must stay bounded. Messages still complete
   * within the windows already granted, which is where Envoy's (1 MiB by default) fit. */
  if (over_server_budget(c)) {
    hold_for_server_budget(c);
    return false;
  }
  return c->partial_bytes <= 2 * c->w->cfg->max_message_bytes || s == c->favoured;
}

/* Adds the change of a stream's buffered bytes to its connection's and the server's totals. */
static void account(connection *c, size_t before, size_t after) {
  c->partial_bytes = c->partial_bytes + after - before;
  if (after > before)
    atomic_fetch_add(&c->w->stats->buffered_bytes, after - before);
  else if (before > after)
    atomic_fetch_sub(&c->w->stats->buffered_bytes, before - after);
}

void flow_give_back(h2_stream *s) {
  if (s->held_bytes == 0) return;
  nghttp2_session_consume(s->conn->session, s->id, s->held_bytes);
  s->held_bytes = 0;
}

/* The stream with the most of an incomplete message buffered, or NULL: over the partial budget
 * it alone is fed, so it completes and frees its share, then the next one is picked. */
static h2_stream *most_buffered(const connection *c) {
  h2_stream *best = NULL;
  size_t best_bytes = 0;
  for (const dlist_link *l = c->streams.head; l; l = l->next) {
    h2_stream *s = stream_of(l);
    const size_t n = grpc_reader_buffered(&s->reader);
    if (n > best_bytes) {
      best = s;
      best_bytes = n;
    }
  }
  return best;
}

/* The favoured stream is done (message complete, or stream gone): hand the role on, and let the
 * release pass give the new one its held credit, or the connection would stall. */
static void pass_favour(connection *c) {
  c->favoured = most_buffered(c);
  if (c->favoured) c->input_held = true;
}

void flow_on_data(h2_stream *s, size_t len, size_t buffered_before) {
  connection *c = s->conn;
  const size_t after = grpc_reader_buffered(&s->reader);
  account(c, buffered_before, after);
  if (c->favoured == s && after == 0) pass_favour(c); /* its message is complete */
  if (after > 0 && (!c->favoured || after > grpc_reader_buffered(&c->favoured->reader)))
    c->favoured = s;
  s->held_bytes += len;
  if (may_take_input(c, s))
    flow_give_back(s);
  else if (!engine_busy(s))
    c->input_held = true;
}

void flow_on_release(h2_stream *s) {
  connection *c = s->conn;
  /* Bytes we held back still count against the connection window. */
  if (s->held_bytes && !c->closing) nghttp2_session_consume_connection(c->session, s->held_bytes);
  account(c, grpc_reader_buffered(&s->reader), 0);
  for (const queue_link *l = s->out.head; l; l = l->next) {
    const out_chunk *ch = LIST_ITEM(l, out_chunk, link);
    c->queued_out_bytes -= ch->len - ch->off;
  }
  if (c->favoured == s) pass_favour(c);
}

void flow_release_held(connection *c) {
  if (!c->input_held || c->closing) return;
  c->input_held = false;
  for (const dlist_link *l = c->streams.head; l; l = l->next) {
    h2_stream *s = stream_of(l);
    if (!s->held_bytes) continue;
    if (may_take_input(c, s))
      flow_give_back(s);
    else if (!engine_busy(s))
      c->input_held = true;
  }
}

void connections_retry_budget(worker *w) {
  bool any = false;
  for (const dlist_link *l = w->connections.head; l && !any; l = l->next)
    any = LIST_ITEM(l, connection, link)->held_by_budget;
  if (!any) return;
  if (atomic_load(&w->stats->buffered_bytes) > w->cfg->max_buffered_bytes) {
    worker_retry_budget_later(w); /* still over: nothing would change */
    return;
  }
  for (dlist_link *l = w->connections.head, *next; l; l = next) {
    next = l->next; /* conn_flush may close this connection (never another one) */
    connection *c = LIST_ITEM(l, connection, link);
    if (!c->held_by_budget) continue;
    c->held_by_budget = false;
    c->input_held = true;
    conn_flush(c); /* gives back what may flow now, and sends the WINDOW_UPDATEs */
  }
}
