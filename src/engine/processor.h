/* The processor definition shared by both authoring styles. Immutable once served. */
#ifndef EXTPROC_PROCESSOR_H
#define EXTPROC_PROCESSOR_H

#include "extproc/extproc.h"

struct extproc_processor {
  char *name;
  size_t context_size;
  extproc_context_init_fn context_init;
  extproc_context_cleanup_fn context_cleanup;
  extproc_phase_fn on[EXTPROC_PHASE_COUNT];
  extproc_error_policy on_error;
  uint32_t error_http_status;
  void *user_data;
  char *chain_header; /* NULL unless the chain is revealed */
};

#endif
