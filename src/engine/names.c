/* Names of the protocol's phases and of the library's error codes, for logs and messages. */
#include "extproc/extproc.h"

const char *extproc_phase_name(extproc_phase phase) {
  static const char *const names[EXTPROC_PHASE_COUNT] = {"request_headers",  "request_body",
                                                         "request_trailers", "response_headers",
                                                         "response_body",    "response_trailers"};
  return (unsigned)phase < EXTPROC_PHASE_COUNT ? names[phase] : "unknown";
}

const char *extproc_strerror(int error) {
  switch (error) {
  case EXTPROC_OK: return "success";
  case EXTPROC_EINVAL: return "invalid argument";
  case EXTPROC_ESTATE: return "not allowed in this phase or state";
  case EXTPROC_ENOMEM: return "out of memory";
  case EXTPROC_EIO: return "system call failed";
  case EXTPROC_ETIMEDOUT: return "timed out";
  case EXTPROC_ELIMIT: return "a configured limit was reached";
  default: return "unknown error";
  }
}
