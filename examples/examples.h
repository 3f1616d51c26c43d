/* The example processors served by extproc-examples. Each file defines one. */
#ifndef EXTPROC_EXAMPLES_H
#define EXTPROC_EXAMPLES_H

#include "extproc/extproc.h"

/* A named example: `name` is the Python SDK's class name, `short_name` the command-line
 * shorthand. `create` returns a new processor, freed by the caller. */
typedef struct example {
  const char *name;
  const char *short_name;
  const char *summary;
  extproc_processor *(*create)(void);
} example;

extproc_processor *trivial_processor_create(void);

#endif
