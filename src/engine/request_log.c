/* extproc_log: a log line that names the request it is about. The engine knows the processor,
 * phase and request id; the peer's address is the one the transport gave stream_set_peer(). */
#include <stdarg.h>

#include "base/log.h"
#include "engine/request.h"

void extproc_log(const extproc_request *req, extproc_log_level level, const char *fmt, ...) {
  if (!log_enabled(level)) return;
  log_context ctx = {0};
  if (req) {
    ctx = (log_context){.processor = req->proc->name,
                        .phase = extproc_phase_name(req->msg.phase),
                        .request_id = req->info.request_id,
                        .peer = req->peer};
  }
  va_list ap;
  va_start(ap, fmt);
  log_emit(level, req ? &ctx : NULL, fmt, ap);
  va_end(ap);
}
