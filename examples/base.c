/* BaseExtProcService: changes nothing. Every phase gets the plain reply Envoy expects, and with
 * LOG_LEVEL=DEBUG the SDK logs each one: processor, phase, request id and the time spent. */
#include "examples.h"

extproc_processor *base_processor_new(void) {
  static const extproc_processor_def def = {.struct_size = sizeof(extproc_processor_def),
                                            .name = "BaseExtProcService"};
  extproc_processor *p;
  return extproc_processor_new_from_def(&p, &def) == 0 ? p : NULL;
}
