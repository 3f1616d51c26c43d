/* BaseExtProcService: changes nothing. Every phase gets the plain reply Envoy expects, and with
 * LOG_LEVEL=DEBUG the SDK logs each one: processor, phase, request id and the time spent. */
#include "examples.h"

extproc_processor *base_processor_create(void) {
  static const extproc_processor_def def = {.name = "BaseExtProcService"};
  return extproc_processor_create(&def);
}
