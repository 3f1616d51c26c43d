/* IdempotencyExtProcService: POST and PATCH requests carrying an Idempotency-Key reach the
 * upstream once; repeats get the stored response (IETF httpapi draft "The Idempotency-Key HTTP
 * Header Field"). Responses are kept in Redis. Settings: EXTPROC_IDEMPOTENCY_* (README). */
#ifndef EXTPROC_PROCESSORS_IDEMPOTENCY_H
#define EXTPROC_PROCESSORS_IDEMPOTENCY_H

#include <extproc/extproc.h>

/* Reads the settings from the environment and returns a new processor (freed by the caller
 * with extproc_processor_free()), or NULL after logging the bad setting (or out-of-memory). */
extproc_processor *idempotency_processor_new(void);

#endif
