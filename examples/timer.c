/* TimerExtProcService: stamps when the request arrived and how long the exchange took.
 *
 * request_headers: the upstream gets x-request-started, the arrival time in RFC 3339 UTC with
 * microseconds (2026-11-29T17:22:26.123456Z). On the last response phase it sees (the response
 * headers when there is no body, else the body's last chunk) the client gets x-request-started
 * again and x-duration-ns, the nanoseconds since request_headers. */
#include <stdio.h>
#include <time.h>

#include "examples.h"

typedef struct timer_ctx {
  bool started;
  struct timespec start; /* CLOCK_MONOTONIC: durations must not jump with the wall clock */
  char started_at[40];
} timer_ctx;

static extproc_result on_request_headers(extproc_request *req, void *ctx) {
  timer_ctx *t = ctx;
  struct timespec wall;
  struct tm tm;
  clock_gettime(CLOCK_MONOTONIC, &t->start);
  clock_gettime(CLOCK_REALTIME, &wall);
  gmtime_r(&wall.tv_sec, &tm);
  const size_t n = strftime(t->started_at, sizeof(t->started_at), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(t->started_at + n, sizeof(t->started_at) - n, ".%06dZ", (int)(wall.tv_nsec / 1000));
  t->started = true;
  return extproc_header_set(req, "x-request-started", t->started_at) ? EXTPROC_FAIL
                                                                     : EXTPROC_CONTINUE;
}

static extproc_result stamp_response(extproc_request *req, const timer_ctx *t) {
  if (!t->started) return EXTPROC_CONTINUE; /* request headers were not sent to us */
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  const long long ns =
      (long long)(now.tv_sec - t->start.tv_sec) * 1000000000LL + (now.tv_nsec - t->start.tv_nsec);
  char duration[24];
  snprintf(duration, sizeof(duration), "%lld", ns);
  if (extproc_header_set(req, "x-request-started", t->started_at) ||
      extproc_header_set(req, "x-duration-ns", duration))
    return EXTPROC_FAIL;
  return EXTPROC_CONTINUE;
}

static extproc_result on_response_headers(extproc_request *req, void *ctx) {
  /* With a body to come, the response headers are still held by Envoy (BUFFERED), so the stamp
   * waits for the body's last chunk and measures the whole exchange. */
  return extproc_request_end_of_stream(req) ? stamp_response(req, ctx) : EXTPROC_CONTINUE;
}

static extproc_result on_response_body(extproc_request *req, void *ctx) {
  return extproc_request_end_of_stream(req) ? stamp_response(req, ctx) : EXTPROC_CONTINUE;
}

extproc_processor *timer_processor_new(void) {
  static const extproc_processor_def def = {
      .struct_size = sizeof(extproc_processor_def),
      .name = "TimerExtProcService",
      .context_size = sizeof(timer_ctx),
      .request_headers = on_request_headers,
      .response_headers = on_response_headers,
      .response_body = on_response_body,
  };
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
