/* One asynchronous Redis connection per worker loop, made on first use, through hiredis's
 * libuv adapter on that loop: a command never blocks the loop, and a link is touched only by
 * its loop's thread, so it needs no lock (only the registry that finds it has one).
 *
 * hiredis 0.14 has no command timeouts, so each command waiting for an answer has a timer of
 * its own: past the deadline its caller is answered with an error at once, and the connection
 * is dropped (every other command waiting on it is answered with an error too), since a Redis
 * that does not answer one command will not answer those behind it. After a failure (connect
 * refused, connection lost, deadline) no connection is tried for a backoff that doubles from
 * BACKOFF_FIRST_MS to BACKOFF_MAX_MS; commands meanwhile fail at once. The next command after
 * the backoff reconnects, so recovery needs no timer of its own.
 *
 * Every handle made here is unreferenced (uv_unref): it must not keep a stopping server's loop
 * running (see extproc_request_loop()). */
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdlib.h>
#include <uv.h>

#include "internal.h"

enum {
  BACKOFF_FIRST_MS = 100,
  /* Short, so that a restarted Redis is used again within a second. */
  BACKOFF_MAX_MS = 1000,
};

struct idem_links {
  const idem_settings *s;
  uv_mutex_t lock; /* guards head: streams of every loop look their link up */
  idem_link *head;
};

struct idem_link {
  idem_link *next;
  const idem_settings *s;
  uv_loop_t *loop;
  redisAsyncContext *ac; /* NULL while down */
  bool connected;        /* the connect callback said OK */
  bool down_logged;      /* a failure was logged: log the recovery too */
  uint32_t backoff_ms;   /* 0 after a success */
  uint64_t retry_at;     /* loop time (ms) before which no connection is tried */
};

/* One command waiting for its answer. Freed once hiredis is done with it and its timer is
 * closed. */
typedef struct link_op {
  idem_link *link;
  uv_timer_t timer;
  idem_reply_fn fn;
  void *arg;
  bool answered;      /* fn was called */
  bool reply_pending; /* hiredis still holds the op as its callback's privdata */
} link_op;

idem_links *idem_links_new(const idem_settings *s) {
  idem_links *links = calloc(1, sizeof(*links));
  if (!links) return NULL;
  links->s = s;
  if (uv_mutex_init(&links->lock) != 0) {
    free(links);
    return NULL;
  }
  return links;
}

idem_link *idem_link_for(idem_links *links, void *loop) {
  uv_mutex_lock(&links->lock);
  idem_link *link = links->head;
  while (link && link->loop != loop)
    link = link->next;
  if (!link && (link = calloc(1, sizeof(*link)))) {
    link->s = links->s;
    link->loop = loop;
    link->next = links->head;
    links->head = link;
  }
  uv_mutex_unlock(&links->lock);
  return link;
}

/* host:port or the socket's path, for log lines. */
static const char *where(const idem_link *link) { return link->s->address; }

static void back_off(idem_link *link, const char *why) {
  link->connected = false;
  link->backoff_ms = link->backoff_ms ? link->backoff_ms * 2 : BACKOFF_FIRST_MS;
  if (link->backoff_ms > BACKOFF_MAX_MS) link->backoff_ms = BACKOFF_MAX_MS;
  link->retry_at = uv_now(link->loop) + link->backoff_ms;
  link->down_logged = true;
  extproc_log(NULL, EXTPROC_LOG_WARN, "redis at %s unavailable (%s): retrying in %u ms",
              where(link), why, link->backoff_ms);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  idem_link *link = ac->data;
  if (link->ac != ac) return;
  if (status != REDIS_OK) {
    link->ac = NULL; /* hiredis frees it after this callback */
    back_off(link, ac->errstr[0] ? ac->errstr : "cannot connect");
    return;
  }
  link->connected = true;
  link->backoff_ms = 0;
  if (link->down_logged)
    extproc_log(NULL, EXTPROC_LOG_INFO, "redis at %s connected again", where(link));
  link->down_logged = false;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  idem_link *link = ac->data;
  if (link->ac != ac) return; /* dropped by us: already backing off */
  link->ac = NULL;
  back_off(link, status == REDIS_OK ? "closed" : ac->errstr[0] ? ac->errstr : "connection lost");
}

static int link_connect(idem_link *link) {
  if (link->ac) return 0; /* connected, or connecting: hiredis sends queued commands then */
  if (uv_now(link->loop) < link->retry_at) return -1;
  const idem_settings *s = link->s;
  redisAsyncContext *ac =
      s->unix_path[0] ? redisAsyncConnectUnix(s->unix_path) : redisAsyncConnect(s->host, s->port);
  if (!ac) {
    back_off(link, "out of memory");
    return -1;
  }
  if (ac->err) {
    back_off(link, ac->errstr);
    redisAsyncFree(ac);
    return -1;
  }
  if (redisLibuvAttach(ac, link->loop) != REDIS_OK) {
    back_off(link, "cannot watch the socket");
    redisAsyncFree(ac);
    return -1;
  }
  uv_unref((uv_handle_t *)&((redisLibuvEvents *)ac->ev.data)->handle);
  ac->data = link;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  link->ac = ac;
  return 0;
}

/* Drops the connection at once: hiredis answers every waiting command with no reply. */
static void link_drop(idem_link *link, const char *why) {
  redisAsyncContext *ac = link->ac;
  if (!ac) return;
  link->ac = NULL;
  back_off(link, why); /* before the free: callbacks it runs must not reconnect */
  redisAsyncFree(ac);
}

static void on_timer_closed(uv_handle_t *h) { free(h->data); }

static void op_release(link_op *op) {
  if (op->reply_pending || uv_is_closing((uv_handle_t *)&op->timer)) return;
  uv_close((uv_handle_t *)&op->timer, on_timer_closed);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata) {
  link_op *op = privdata;
  const redisReply *reply = r;
  op->reply_pending = false;
  if (!op->answered) {
    op->answered = true;
    uv_timer_stop(&op->timer);
    if (!reply)
      op->fn(op->arg, NULL, ac->errstr[0] ? ac->errstr : "connection lost");
    else if (reply->type == REDIS_REPLY_ERROR)
      op->fn(op->arg, NULL, reply->str);
    else
      op->fn(op->arg, reply, NULL);
  }
  op_release(op);
}

static void on_deadline(uv_timer_t *timer) {
  link_op *op = timer->data;
  op->answered = true; /* the drop below answers the others, not this one */
  link_drop(op->link, "no answer within the timeout");
  op->fn(op->arg, NULL, "no answer within the timeout");
  op_release(op);
}

int idem_link_command(idem_link *link, idem_reply_fn fn, void *arg, int argc, const char **argv,
                      const size_t *lens) {
  if (link_connect(link) != 0) return -1;
  link_op *op = calloc(1, sizeof(*op));
  if (!op) return -1;
  *op = (link_op){.link = link, .fn = fn, .arg = arg};
  uv_timer_init(link->loop, &op->timer); /* cannot fail for a timer */
  op->timer.data = op;
  uv_unref((uv_handle_t *)&op->timer);
  if (redisAsyncCommandArgv(link->ac, on_reply, op, argc, argv, lens) != REDIS_OK) {
    uv_close((uv_handle_t *)&op->timer, on_timer_closed);
    return -1;
  }
  op->reply_pending = true;
  uv_timer_start(&op->timer, on_deadline, link->s->timeout_ms, 0);
  return 0;
}

void idem_link_send(idem_link *link, int argc, const char **argv, const size_t *lens) {
  if (link->ac && link->connected) redisAsyncCommandArgv(link->ac, NULL, NULL, argc, argv, lens);
}
