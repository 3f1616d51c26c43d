/* The processor definition shared by both authoring styles. Immutable once served. */
#ifndef EXTPROC_PROCESSOR_H
#define EXTPROC_PROCESSOR_H

#include "extproc/extproc.h"

/* extproc_body_accumulate()'s default cap per direction: max_message_bytes' default, since a
 * body Envoy buffers whole could not be larger than one message either. */
enum { DEFAULT_MAX_BODY_ACCUMULATE_BYTES = 16 << 20 };

struct extproc_processor {
  char *name;
  size_t context_size;
  extproc_context_init_fn context_init;
  extproc_context_cleanup_fn context_cleanup;
  extproc_phase_fn on[EXTPROC_PHASE_COUNT];
  extproc_error_policy on_error;
  uint32_t error_http_status;
  void *user_data;
  extproc_user_data_free_fn user_data_free; /* owns user_data when set */
  char *chain_header;                       /* NULL unless the chain is revealed */
  bool blocking;        /* callbacks run on the server's blocking pool, not on the loop */
  uint32_t deadline_ms; /* a deferred phase's deadline; 0 for none */
  size_t max_body_accumulate_bytes; /* extproc_body_accumulate()'s cap per direction */
};

#endif
