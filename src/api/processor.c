/* Defining a processor: from a static table or with the builder, and its settings. */
#include <stdlib.h>
#include <string.h>

#include "base/sized_struct.h"
#include "engine/headers.h"
#include "engine/processor.h"

static int processor_alloc(extproc_processor **out, const char *name) {
  if (out) *out = NULL;
  if (!out || !name) return EXTPROC_EINVAL;
  extproc_processor *p = calloc(1, sizeof(*p));
  if (!p) return EXTPROC_ENOMEM;
  p->name = strdup(name);
  if (!p->name) {
    free(p);
    return EXTPROC_ENOMEM;
  }
  p->error_http_status = 500;
  p->max_body_accumulate_bytes = DEFAULT_MAX_BODY_ACCUMULATE_BYTES;
  *out = p;
  return 0;
}

int extproc_processor_new_from_def(extproc_processor **out, const extproc_processor_def *given) {
  if (out) *out = NULL;
  extproc_processor_def def;
  if (!out || !given || sized_struct_read(&def, sizeof(def), given) != 0) return EXTPROC_EINVAL;
  extproc_processor *p;
  int rv = processor_alloc(&p, def.name);
  if (rv != 0) return rv;
  p->context_size = def.context_size;
  p->context_init = def.context_init;
  p->context_cleanup = def.context_cleanup;
  p->on[EXTPROC_REQUEST_HEADERS] = def.request_headers;
  p->on[EXTPROC_REQUEST_BODY] = def.request_body;
  p->on[EXTPROC_REQUEST_TRAILERS] = def.request_trailers;
  p->on[EXTPROC_RESPONSE_HEADERS] = def.response_headers;
  p->on[EXTPROC_RESPONSE_BODY] = def.response_body;
  p->on[EXTPROC_RESPONSE_TRAILERS] = def.response_trailers;
  p->user_data = def.user_data;
  p->blocking = def.blocking;
  p->deadline_ms = def.deadline_ms;
  extproc_processor_set_max_body_accumulate(p, def.max_body_accumulate_bytes);
  if ((rv = extproc_processor_set_error_policy(p, def.on_error, def.error_http_status)) != 0) {
    extproc_processor_free(p);
    return rv;
  }
  *out = p;
  return 0;
}

int extproc_processor_new(extproc_processor **out, const char *name) {
  return processor_alloc(out, name);
}

int extproc_processor_on(extproc_processor *proc, extproc_phase phase, extproc_phase_fn fn) {
  if (!proc || (unsigned)phase >= EXTPROC_PHASE_COUNT) return EXTPROC_EINVAL;
  proc->on[phase] = fn;
  return 0;
}

int extproc_processor_set_context(extproc_processor *proc, size_t size,
                                  extproc_context_init_fn init,
                                  extproc_context_cleanup_fn cleanup) {
  if (!proc) return EXTPROC_EINVAL;
  proc->context_size = size;
  proc->context_init = init;
  proc->context_cleanup = cleanup;
  return 0;
}

int extproc_processor_set_error_policy(extproc_processor *proc, extproc_error_policy policy,
                                       uint32_t http_status) {
  if (!proc) return EXTPROC_EINVAL;
  if (policy != EXTPROC_ON_ERROR_FAIL_STREAM && policy != EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE)
    return EXTPROC_EINVAL;
  if (http_status == 0) http_status = 500;
  if (http_status < 200 || http_status > 599) return EXTPROC_EINVAL;
  proc->on_error = policy;
  proc->error_http_status = http_status;
  return 0;
}

int extproc_processor_set_chain_header(extproc_processor *proc, const char *header) {
  if (!proc || (header && !header_name_valid(header))) return EXTPROC_EINVAL;
  char *copy = NULL;
  if (header) {
    copy = strdup(header);
    if (!copy) return EXTPROC_ENOMEM;
    for (char *p = copy; *p; p++)
      if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + ('a' - 'A'));
  }
  free(proc->chain_header);
  proc->chain_header = copy;
  return 0;
}

int extproc_processor_set_blocking(extproc_processor *proc, bool blocking) {
  if (!proc) return EXTPROC_EINVAL;
  proc->blocking = blocking;
  return 0;
}

int extproc_processor_set_deadline(extproc_processor *proc, uint32_t ms) {
  if (!proc) return EXTPROC_EINVAL;
  proc->deadline_ms = ms;
  return 0;
}

int extproc_processor_set_max_body_accumulate(extproc_processor *proc, size_t bytes) {
  if (!proc) return EXTPROC_EINVAL;
  proc->max_body_accumulate_bytes = bytes ? bytes : DEFAULT_MAX_BODY_ACCUMULATE_BYTES;
  return 0;
}

void extproc_processor_set_user_data(extproc_processor *proc, void *user_data) {
  if (proc) proc->user_data = user_data;
}

int extproc_processor_set_user_data_free(extproc_processor *proc,
                                         extproc_user_data_free_fn free_fn) {
  if (!proc) return EXTPROC_EINVAL;
  proc->user_data_free = free_fn;
  return 0;
}

const char *extproc_processor_name(const extproc_processor *proc) { return proc ? proc->name : ""; }

void extproc_processor_free(extproc_processor *proc) {
  if (!proc) return;
  if (proc->user_data_free && proc->user_data) proc->user_data_free(proc->user_data);
  free(proc->name);
  free(proc->chain_header);
  free(proc);
}
