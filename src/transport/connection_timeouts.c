/* A connection's deadlines, on one timer each:
 *  - handshake: the peer's connection preface and SETTINGS (on TLS: after the TLS handshake)
 *    must arrive within handshake_timeout_ms of the accept (a silent TCP connection would otherwise
 * hold a descriptor and a max_connections slot forever);
 *  - keepalive: after keepalive_interval_ms without input the server sends a PING; no ACK
 *    within keepalive_timeout_ms means the peer is gone (a host that vanished never sends a FIN
 *    or RST, and a connection waiting on a deferred answer would wait forever);
 *  - idle: after idle_timeout_ms with no open stream, a GOAWAY (NO_ERROR) and close.
 *
 * The timer is lazy: input and stream changes only record a time (uv_now, the loop's cached
 * clock, costs nothing), and when the timer fires it works out which deadline really passed
 * and re-arms for the next one. So the request path never touches the timer heap. */
#include "transport/connection.h"
#include "transport/tls.h"

static uint64_t deadline(uint64_t since, uint32_t timeout_ms) {
  return timeout_ms == TIMEOUT_OFF ? UINT64_MAX : since + timeout_ms;
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* The earliest deadline that applies now, or UINT64_MAX. */
static uint64_t next_deadline(const connection *c) {
  const transport_config *cfg = c->w->cfg;
  if (!c->handshake_done) return deadline(c->accepted_ms, cfg->handshake_timeout_ms);
  uint64_t next = c->ping_outstanding ? deadline(c->ping_sent_ms, cfg->keepalive_timeout_ms)
                                      : deadline(c->last_input_ms, cfg->keepalive_interval_ms);
  if (!c->streams.head) next = min_u64(next, deadline(c->idle_since_ms, cfg->idle_timeout_ms));
  return next;
}

static void on_deadline(uv_timer_t *timer);

static void arm(connection *c) {
  const uint64_t next = next_deadline(c);
  if (next == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  const uint64_t now = uv_now(&c->w->loop);
  uv_timer_start(&c->timer, on_deadline, next > now ? next - now : 0, 0);
}

/* A limit ended the connection: counted, logged (rate-limited), told to the peer in a GOAWAY
 * whose debug data names the limit, and closed without waiting for the peer. */
static void close_for(connection *c, transport_limit limit, const char *what, uint32_t ms) {
  limit_hit(c->w->stats, limit, "connection from %s: %s (%u ms), closing", c->peer, what, ms);
  conn_goaway(c, NGHTTP2_NO_ERROR, what);
  conn_close(c);
}

static void send_ping(connection *c, uint64_t now) {
  if (nghttp2_submit_ping(c->session, NGHTTP2_FLAG_NONE, NULL) != 0) return;
  c->ping_outstanding = true;
  c->ping_sent_ms = now;
  conn_flush(c);
}

static void on_deadline(uv_timer_t *timer) {
  connection *c = timer->data;
  if (c->closing) return;
  const transport_config *cfg = c->w->cfg;
  const uint64_t now = uv_now(&c->w->loop);
  if (!c->handshake_done) {
    if (now >= deadline(c->accepted_ms, cfg->handshake_timeout_ms)) {
      close_for(c, LIMIT_HANDSHAKE_TIMEOUT,
                c->tls && !tls_conn_established(c->tls) ? "no TLS handshake in time"
                                                        : "no HTTP/2 preface and SETTINGS in time",
                cfg->handshake_timeout_ms);
      return;
    }
  } else if (c->ping_outstanding) {
    if (now >= deadline(c->ping_sent_ms, cfg->keepalive_timeout_ms)) {
      close_for(c, LIMIT_KEEPALIVE_TIMEOUT, "keepalive PING not acknowledged in time",
                cfg->keepalive_timeout_ms);
      return;
    }
  } else if (now >= deadline(c->last_input_ms, cfg->keepalive_interval_ms)) {
    send_ping(c, now);
    if (c->closing) return;
  }
  if (c->handshake_done && !c->streams.head &&
      now >= deadline(c->idle_since_ms, cfg->idle_timeout_ms)) {
    /* Graceful: the GOAWAY tells the peer nothing was lost, and the connection closes by itself
     * once it is written (no stream is open). */
    limit_hit(c->w->stats, LIMIT_IDLE_TIMEOUT, "connection from %s: no stream for %u ms, closing",
              c->peer, cfg->idle_timeout_ms);
    conn_goaway(c, NGHTTP2_NO_ERROR, "idle timeout");
    if (!c->closing) uv_timer_stop(&c->timer);
    return;
  }
  arm(c);
}

void conn_deadlines_start(connection *c) {
  const uint64_t now = uv_now(&c->w->loop);
  c->accepted_ms = c->last_input_ms = c->idle_since_ms = now;
  arm(c);
}

void conn_note_handshake(connection *c) {
  if (c->handshake_done) return;
  c->handshake_done = true;
  c->idle_since_ms = uv_now(&c->w->loop);
  arm(c);
  worker_release_idle_later(c->w);
}

void conn_note_ping_ack(connection *c) {
  c->ping_outstanding = false;
  worker_release_idle_later(c->w); /* the PING and its ACK touched the session's pages */
}

void conn_note_idle(connection *c) {
  if (c->closing) return;
  c->idle_since_ms = uv_now(&c->w->loop);
  /* The timer may be off (keepalive disabled, streams were open): the idle deadline needs it. */
  if (c->handshake_done && !uv_is_active((uv_handle_t *)&c->timer)) arm(c);
  worker_release_idle_later(c->w);
}
