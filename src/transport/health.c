/* The gRPC health service (grpc.health.v1.Health), on every listener and, when the server is
 * given a health address, alone on that one.
 *
 * Status: SERVING until the server is asked to stop, NOT_SERVING from then on (the drain: Envoy's
 * active health checker then takes this host out of rotation while it still serves). Known
 * services are the server as a whole ("") and the ext_proc service; any other name is unknown.
 *
 *   Check  unary: the status, or NOT_FOUND for an unknown service (as the protocol says).
 *   Watch  server streaming: the status at once, then again on every change; an unknown service
 *          gets SERVICE_UNKNOWN and the stream stays open (as the protocol says, since the
 *          service might be registered later). A Watch ends (UNAVAILABLE) when the server
 *          closes its listeners, so it never holds a connection through the grace period. */
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "transport/connection.h"

#define EXT_PROC_SERVICE "envoy.service.ext_proc.v3.ExternalProcessor"

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;

static bool service_known(const char *service) {
  return service[0] == '\0' || strcmp(service, EXT_PROC_SERVICE) == 0;
}

static serving_status current_status(const worker *w) {
  return atomic_load(&w->stats->draining)
             ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static int send_status(h2_stream *s, serving_status status) {
  Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  out.status = status;
  const int rv = h2_stream_send(s, &out.base);
  if (rv != 0) h2_stream_finish(s, EXTPROC_GRPC_INTERNAL, "out of memory");
  return rv;
}

static void answer_check(h2_stream *s, bool known) {
  atomic_fetch_add(&s->conn->w->stats->health_checks, 1);
  if (!known) {
    h2_stream_finish(s, EXTPROC_GRPC_NOT_FOUND, "unknown service");
    return;
  }
  /* Unary: one answer, then the status; anything more the client sends is dropped. */
  if (send_status(s, current_status(s->conn->w)) == 0) h2_stream_finish(s, EXTPROC_GRPC_OK, NULL);
}

/* Sends a Watch stream the status it should see now, unless it has seen it already. */
static void update_watch(h2_stream *s) {
  const serving_status now =
      s->watch_known ? current_status(s->conn->w)
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  if (s->finished || s->watch_sent == (int)now) return;
  if (send_status(s, now) == 0) s->watch_sent = (int)now;
}

static void start_watch(h2_stream *s, bool known) {
  atomic_fetch_add(&s->conn->w->stats->health_watches, 1);
  s->watch_started = true;
  s->watch_known = known;
  update_watch(s);
}

void health_on_message(h2_stream *s, const uint8_t *msg, size_t len) {
  if (s->watch_started) return; /* Watch takes one request; later ones are dropped */
  Grpc__Health__V1__HealthCheckRequest *in =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (!in) {
    h2_stream_finish(s, EXTPROC_GRPC_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return;
  }
  const bool known = service_known(in->service);
  grpc__health__v1__health_check_request__free_unpacked(in, NULL);
  if (s->kind == KIND_HEALTH_WATCH)
    start_watch(s, known);
  else
    answer_check(s, known);
}

void health_on_remote_end(h2_stream *s) {
  /* A Watch client half-closes after its request, as any server-streaming client does. */
  if (s->kind == KIND_HEALTH_WATCH && s->watch_started) return;
  h2_stream_finish(s, EXTPROC_GRPC_INVALID_ARGUMENT, "no HealthCheckRequest was sent");
}

/* Calls `fn` on every started Watch stream of `w`, then flushes each connection. */
static void for_each_watch(worker *w, void (*fn)(h2_stream *)) {
  for (dlist_link *cl = w->connections.head, *cnext; cl; cl = cnext) {
    cnext = cl->next; /* a flush may close the connection */
    connection *c = LIST_ITEM(cl, connection, link);
    bool touched = false;
    for (dlist_link *sl = c->streams.head; sl; sl = sl->next) {
      h2_stream *s = stream_of(sl);
      if (s->kind != KIND_HEALTH_WATCH || !s->watch_started) continue;
      fn(s);
      touched = true;
    }
    if (touched) conn_flush(c);
  }
}

void health_notify_watchers(worker *w) { for_each_watch(w, update_watch); }

static void end_watch(h2_stream *s) {
  update_watch(s); /* the last status it may not have seen yet */
  h2_stream_finish(s, EXTPROC_GRPC_UNAVAILABLE, "server is shutting down");
}

void health_end_watches(worker *w) { for_each_watch(w, end_watch); }
