/**
 * @file
 * libextproc's ready-made main(): a program serving one or more processors, configured by
 * command-line flags and `EXTPROC_*` environment variables, as `extproc-examples` is.
 *
 * @code
 * int main(int argc, char **argv) {
 *   extproc_processor *proc = tagger_new();
 *   const extproc_service services[] = {{.struct_size = sizeof(extproc_service),
 *                                        .name = "tagger",
 *                                        .processor = proc,
 *                                        .default_address = "0.0.0.0:50051"}};
 *   const int rv = extproc_main(argc, argv, services, 1);
 *   extproc_processor_free(proc);
 *   return rv;
 * }
 * @endcode
 *
 * Every option, its environment variable, unit, default and range is listed in
 * docs/configuration.md and by `--help`.
 */
#ifndef EXTPROC_MAIN_H
#define EXTPROC_MAIN_H

#include <stddef.h>

#include "extproc/extproc.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One processor a program offers to serve. Set `struct_size` to sizeof(extproc_service) in
 * every element of the array given to extproc_main(). */
typedef struct extproc_service {
  size_t struct_size; /**< sizeof(extproc_service), as compiled by the caller */
  /** The name `--service NAME` selects it by (matched exactly); required. */
  const char *name;
  /** A second, shorter name `--service` also accepts; may be NULL. */
  const char *alias;
  /** One line for `--help`; may be NULL. */
  const char *description;
  /** The processor served (not owned; must outlive the extproc_main() call); required. */
  const extproc_processor *processor;
  /** Where the service is served when the command line names no address for it, e.g.
   * "0.0.0.0:50051"; may be NULL (then `--listen`'s address). With no `--service` at all, every
   * service that has one is served on it. */
  const char *default_address;
} extproc_service;

/** Runs a server for `services` (`count` of them) as configured by `argv` and the environment,
 * until SIGINT or SIGTERM, and returns the process's exit code.
 *
 * Reads every option from its flag (`--name VALUE` or `--name=VALUE`), else from its environment
 * variable `EXTPROC_NAME` (upper case, '-' as '_'), else takes its default; see
 * docs/configuration.md. Which services are served, and where:
 *   - `--service SPEC[,SPEC...]` (repeatable; or `EXTPROC_SERVICE`), SPEC being `NAME` (on its
 *     default_address, or `--listen` if given or it has none), `NAME:PORT` (on 0.0.0.0:PORT) or
 *     `NAME@ADDR` (HOST:PORT, [IPV6]:PORT or unix:PATH);
 *   - without it: a program with a single service serves it on `--listen` if given, else on
 *     its default_address, else on 0.0.0.0:50051; otherwise every service with a
 *     default_address is served on it, and if none has one `--service` is required.
 *
 * Sets the process-wide log level and format (extproc_log_set_level(),
 * extproc_log_set_format()) and logs each address served at info level. `--help` prints the
 * options and the services to stdout, `--version` the program's name and the library's
 * version; both return 0 without serving.
 *
 * SIGINT, SIGTERM and SIGHUP are blocked from the start (the calling thread's mask is restored
 * on return) until the server handles them, so a stop asked for during start-up drains once it
 * runs instead of killing the process half set up. Once the server has stopped, SIGINT and
 * SIGTERM are ignored while it is freed, so a signal repeated late does not turn the clean exit
 * into a kill; SIGHUP is ignored while it serves (extproc_server_run()).
 *
 * Returns 0 after a stop by SIGINT or SIGTERM (or after --help, --version); 1 if a service
 * cannot be served (a bad or busy address) or the server cannot start or be created (out of
 * memory); 2 for bad usage: an unknown flag or service, a value that is not a number or is out
 * of range, an unknown unit, a missing `--service`, `services` NULL or malformed (an element
 * whose struct_size differs from the first's, or without a name or processor), each with one
 * line on stderr naming the flag or environment variable and what is allowed. Call it once,
 * from the main thread; it handles SIGINT and SIGTERM while it runs (extproc_server_run()). */
EXTPROC_API int extproc_main(int argc, char **argv, const extproc_service *services, size_t count);

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_MAIN_H */
