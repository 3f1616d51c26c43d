/* extproc-examples: serves example processors, each on its own address, from one process.
 *
 *   extproc-examples --service SPEC[,SPEC...] [OPTION...]
 *
 * A thin caller of extproc_main() (include/extproc/main.h), which reads every option from its
 * flag or EXTPROC_* environment variable (docs/configuration.md, --help). Each example is
 * offered under its Python SDK class name (TrivialExtProcService) and its short name (trivial),
 * with no default address, so --service (or EXTPROC_SERVICE) is required. The examples' own
 * settings, REVEAL_EXTPROC_CHAIN and EXTPROCS_APPLIED_HEADER, are applied as each is created
 * (registry.c). */
#include <stdio.h>

#include "examples.h"
#include "extproc/main.h"

enum { MAX_EXAMPLES = 16 };

int main(int argc, char **argv) {
  extproc_service services[MAX_EXAMPLES] = {0};
  const size_t count = example_count < MAX_EXAMPLES ? example_count : MAX_EXAMPLES;
  int rv = 0;
  for (size_t i = 0; i < count && rv == 0; i++) {
    extproc_processor *proc = example_new(&examples[i]);
    if (!proc) {
      fprintf(stderr,
              "extproc-examples: cannot create %s (out of memory, or an invalid "
              "EXTPROCS_APPLIED_HEADER)\n",
              examples[i].name);
      rv = 1;
    }
    services[i] = (extproc_service){.struct_size = sizeof(extproc_service),
                                    .name = examples[i].name,
                                    .alias = examples[i].short_name,
                                    .description = examples[i].summary,
                                    .processor = proc};
  }
  if (rv == 0) rv = extproc_main(argc, argv, services, count);
  for (size_t i = 0; i < count; i++)
    extproc_processor_free((extproc_processor *)services[i].processor);
  return rv;
}
