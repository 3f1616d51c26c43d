/* extproc_log: a log line that names the request it is about (processor, phase, request id). */
#include <stdarg.h>
#include <stdio.h>

#include "base/log.h"
#include "engine/request.h"

void extproc_log(const extproc_request *req, extproc_log_level level, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  char prefix[512] = "";
  if (req) {
    const char *rid = req->info.request_id ? req->info.request_id : "-";
    snprintf(prefix, sizeof(prefix), "processor=%s phase=%s request_id=%s: ", req->proc->name,
             extproc_phase_name(req->msg.phase), rid);
  }
  va_list ap;
  va_start(ap, fmt);
  log_linev(level, prefix, fmt, ap);
  va_end(ap);
}
