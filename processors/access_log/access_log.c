/* AccessLogExtProcService: one JSON line per HTTP exchange (see access_log.h).
 *
 * The phases fill the per-request context (an al_exchange); the line is made when the
 * response's last part has been seen: response headers that end the response (or a response
 * body mode of NONE, where no body phase follows), the body chunk with end_of_stream, or the
 * trailers. If the exchange ends before that (the client went away, the upstream reset, Envoy's
 * timeout, a BUFFERED_PARTIAL body cut at Envoy's limit), context_cleanup makes the line from
 * what was gathered, with "complete": false. Either way the line goes to the writer thread's
 * queue; nothing here waits for the disk, and logging never fails a request.
 *
 * Times are taken on the processor's side: "duration_ms" runs from request_headers to the
 * response's last part (or the stream's end); "upstream_ms" from the processor's answer to the
 * last request phase it saw before the response began to the arrival of response_headers, which
 * is the upstream's time plus Envoy's forwarding both ways. Needs request and response headers
 * SEND; works with every body mode. */
#include "access_log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "exchange.h"
#include "settings.h"
#include "writer.h"

/* One processor's settings and writer, freed with the processor (its user_data), which writes out
 * what is queued. Every live one is also on a list, for access_log_flush(). */
typedef struct al_config {
  al_settings settings;
  al_writer *writer;
  struct al_config *next;
} al_config;

static pthread_mutex_t configs_mu = PTHREAD_MUTEX_INITIALIZER;
static al_config *configs;

static void config_free(al_config *c) {
  al_writer_free(c->writer);
  al_settings_free(&c->settings);
  free(c);
}

/* The processor's user_data_free: off the list, then the queued lines written and all freed. */
static void config_release(void *data) {
  al_config *c = data;
  pthread_mutex_lock(&configs_mu);
  for (al_config **at = &configs; *at; at = &(*at)->next) {
    if (*at != c) continue;
    *at = c->next;
    break;
  }
  pthread_mutex_unlock(&configs_mu);
  config_free(c);
}

void access_log_flush(void) {
  pthread_mutex_lock(&configs_mu);
  for (al_config *c = configs; c; c = c->next)
    al_writer_flush(c->writer);
  pthread_mutex_unlock(&configs_mu);
}

/* ---------------------------------------------------------------- the phases */

static char *copy(const char *s) { return s ? al_utf8_copy(s, strlen(s)) : NULL; }

static void record_headers(cJSON **obj, const al_settings *s, const extproc_request *req) {
  if (!s->headers.all && s->headers.count == 0) return;
  size_t n;
  const extproc_header *h = extproc_headers(req, &n);
  for (size_t i = 0; i < n; i++) {
    if (h[i].name[0] == ':' || !al_names_has(&s->headers, h[i].name)) continue;
    al_header_add(obj, s, h[i].name, h[i].value, h[i].value_len);
  }
}

/* The upstream's time starts at the last request phase answered before the response began. */
static void request_phase_seen(al_exchange *x) {
  if (!x->response_started) x->t_request_last = al_now_ns();
}

static void finish(al_exchange *x, bool complete) {
  if (!x->started || x->emitted) return;
  x->emitted = true;
  const al_config *c = x->owner;
  size_t len = 0;
  char *line = al_line_build(x, &c->settings, al_now_ns(), complete, &len);
  if (!line) {
    extproc_log(NULL, EXTPROC_LOG_WARN, "access-log: out of memory; a line is lost");
    return;
  }
  al_writer_push(c->writer, line, len);
}

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  al_exchange *x = ctx;
  const al_config *c = extproc_request_user_data(req);
  x->owner = c;
  x->started = true;
  clock_gettime(CLOCK_REALTIME, &x->wall_start);
  x->t_start = al_now_ns();
  const extproc_request_info *info = extproc_request_get_info(req);
  x->method = copy(info->method);
  x->path = copy(info->path);
  x->authority = copy(info->authority);
  x->request_id = copy(info->request_id);
  x->request_length = info->content_length;
  x->request_headers_eos = extproc_request_end_of_stream(req);
  record_headers(&x->request_headers, &c->settings, req);
  request_phase_seen(x);
  return EXTPROC_CONTINUE;
}

static extproc_result on_request_body(extproc_request *req, void *ctx) {
  al_exchange *x = ctx;
  if (!x->started) return EXTPROC_CONTINUE;
  const al_config *c = x->owner;
  size_t len;
  const uint8_t *data = extproc_body(req, &len);
  al_body_add(&x->request_body, c->settings.body_cap, data, len);
  request_phase_seen(x);
  return EXTPROC_CONTINUE;
}

static extproc_result on_request_trailers(extproc_request *req, void *ctx) {
  (void)req;
  al_exchange *x = ctx;
  if (x->started) request_phase_seen(x);
  return EXTPROC_CONTINUE;
}

static int64_t content_length(const extproc_request *req) {
  const char *v = extproc_header_get(req, "content-length");
  if (!v || *v < '0' || *v > '9') return -1;
  char *end;
  long long n = strtoll(v, &end, 10);
  return *end ? -1 : (int64_t)n;
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  al_exchange *x = ctx;
  if (!x->started || x->response_started) return EXTPROC_CONTINUE;
  const al_config *c = x->owner;
  x->t_response = al_now_ns();
  x->response_started = true;
  x->status = extproc_request_get_info(req)->response_status;
  x->response_length = content_length(req);
  x->response_headers_eos = extproc_request_end_of_stream(req);
  record_headers(&x->response_headers, &c->settings, req);
  /* With body mode NONE no body phase follows: these headers are all the processor sees. */
  if (x->response_headers_eos || extproc_request_body_mode(req) == EXTPROC_BODY_NONE)
    finish(x, true);
  return EXTPROC_CONTINUE;
}

static extproc_result on_response_body(extproc_request *req, void *ctx) {
  al_exchange *x = ctx;
  if (!x->started || x->emitted) return EXTPROC_CONTINUE;
  const al_config *c = x->owner;
  size_t len;
  const uint8_t *data = extproc_body(req, &len);
  al_body_add(&x->response_body, c->settings.body_cap, data, len);
  if (extproc_request_end_of_stream(req)) finish(x, true);
  return EXTPROC_CONTINUE;
}

static extproc_result on_response_trailers(extproc_request *req, void *ctx) {
  (void)req;
  finish(ctx, true);
  return EXTPROC_CONTINUE;
}

/* The stream ended: normally after finish(), else Envoy ended the exchange early. */
static void on_cleanup(void *ctx) {
  al_exchange *x = ctx;
  finish(x, false);
  al_exchange_free(x);
}

/* ---------------------------------------------------------------- the processor */

static al_config *config_new(void) {
  al_config *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  if (al_settings_read(&c->settings) != 0) {
    free(c);
    return NULL;
  }
  const al_settings *s = &c->settings;
  const al_writer_options opts = {.path = s->path,
                                  .max_bytes = s->max_bytes,
                                  .keep = s->keep,
                                  .queue_lines = s->queue_lines,
                                  .queue_bytes = s->queue_bytes};
  if (al_writer_new(&c->writer, &opts) != 0) {
    al_settings_free(&c->settings);
    free(c);
    return NULL;
  }
  return c;
}

extproc_processor *access_log_processor_new(void) {
  al_config *c = config_new();
  if (!c) return NULL;
  const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "AccessLogExtProcService",
      .context_size = sizeof(al_exchange),
      .context_cleanup = on_cleanup,
      .request_headers = on_request_headers,
      .request_body = on_request_body,
      .request_trailers = on_request_trailers,
      .response_headers = on_response_headers,
      .response_body = on_response_body,
      .response_trailers = on_response_trailers,
      .user_data = c,
  };
  extproc_processor *p;
  if (extproc_processor_new_from_def(&p, &def) != 0) {
    config_free(c);
    return NULL;
  }
  extproc_processor_set_user_data_free(p, config_release);
  pthread_mutex_lock(&configs_mu);
  c->next = configs;
  configs = c;
  pthread_mutex_unlock(&configs_mu);
  return p;
}
