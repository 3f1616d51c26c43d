#include "server/metrics_http.h"

#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "extproc/extproc.h"
#include "transport/listener.h"

/* Scrapes served at once; more connections wait in the listen queue. A scraper (Prometheus, a
 * person with curl) uses one or two; each connection takes a descriptor from the process, so
 * without a bound slow or many clients of this port would take the descriptors the processors'
 * connections need (the reserve kept out of max_connections covers this many, see server.c). */
enum { MAX_SCRAPE_CONNECTIONS = 16 };

/* An idle or slow scrape connection is closed after this many seconds. */
enum { SCRAPE_TIMEOUT_SECONDS = 10 };

/* The Prometheus text exposition format, version 0.0.4. */
#define EXPOSITION_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct metrics_endpoint {
  struct MHD_Daemon *daemon;
  metrics *registry;
  metrics_collect_fn collect;
  void *collect_data;
};

static enum MHD_Result reply(struct MHD_Connection *connection, unsigned status, char *body,
                             size_t len, const char *content_type) {
  struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  const enum MHD_Result rv = MHD_queue_response(connection, status, r);
  MHD_destroy_response(r);
  return rv;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  (void)version, (void)upload_data, (void)upload_data_size, (void)con_cls;
  metrics_endpoint *e = cls;
  const bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
  if (!get || strcmp(url, "/metrics") != 0) {
    const char *why = get ? "not found: the metrics are at /metrics\n" : "only GET is served\n";
    return reply(connection, get ? MHD_HTTP_NOT_FOUND : MHD_HTTP_METHOD_NOT_ALLOWED, strdup(why),
                 strlen(why), "text/plain; charset=utf-8");
  }
  if (e->collect) e->collect(e->collect_data);
  size_t len = 0;
  char *text = metrics_render(e->registry, &len);
  if (!text) return MHD_NO; /* out of memory: the client sees the connection close */
  return reply(connection, MHD_HTTP_OK, text, len, EXPOSITION_CONTENT_TYPE);
}

int metrics_endpoint_start(metrics_endpoint **out, const char *address, metrics *m,
                           metrics_collect_fn collect, void *collect_data) {
  *out = NULL;
  metrics_endpoint *e = calloc(1, sizeof(*e));
  if (!e) return EXTPROC_ENOMEM;
  int port = 0;
  const int fd = listener_open_single(address, &port);
  if (fd < 0) {
    free(e);
    return fd;
  }
  e->registry = m;
  e->collect = collect;
  e->collect_data = collect_data;
  /* One internal thread serves scrapes one at a time: a scrape is small and rare. poll(), not
   * epoll: with epoll (edge-triggered in libmicrohttpd) a connection whose client had sent its
   * bytes and closed before it was accepted is seen only at its timeout, so such clients held
   * the few slots for 10 s each; poll sees the close at once. */
  e->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL, on_request, e,
      MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)SCRAPE_TIMEOUT_SECONDS,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)MAX_SCRAPE_CONNECTIONS, MHD_OPTION_END);
  if (!e->daemon) {
    log_line(EXTPROC_LOG_ERROR, "metrics on %s: could not start the HTTP server", address);
    close(fd);
    free(e);
    return EXTPROC_EIO;
  }
  *out = e;
  return port;
}

void metrics_endpoint_stop(metrics_endpoint *e) {
  if (!e) return;
  MHD_stop_daemon(e->daemon); /* closes the listening socket it was given */
  free(e);
}
