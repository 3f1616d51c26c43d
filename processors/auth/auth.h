/* AuthExtProcService: bearer JWT (HS256, RS256, ES256) and API key authentication on the
 * request headers phase. */
#ifndef EXTPROC_AUTH_H
#define EXTPROC_AUTH_H

#include "extproc/extproc.h"

/* Creates the processor from the EXTPROC_AUTH_* environment variables (see the README's
 * "Authentication (auth)"), loading its key files. Returns NULL after logging what is wrong
 * with a setting or a key file, or on out-of-memory. Free it with extproc_processor_free(),
 * which frees its keys too. */
extproc_processor *auth_processor_new(void);

#endif
