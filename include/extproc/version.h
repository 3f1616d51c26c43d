/**
 * @file
 * libextproc version. The numbers follow semantic versioning; CMake reads them from this file,
 * so it is the one place a release changes them.
 *
 * ABI policy: the shared library's SONAME is libextproc.so.\<MAJOR> (libextproc.so.0 while the
 * major version is 0). A minor release only adds: new functions, new enum values, and new
 * fields at the end of the structs a caller fills (extproc_processor_def,
 * extproc_server_options, extproc_processing_mode), which carry their own size in
 * `struct_size`, so code compiled against an older header keeps working unchanged. Anything
 * else (a removed or changed function, a reordered field) comes with a new major version and a
 * new SONAME. During 0.x a minor release may still break the ABI; it then bumps the SONAME.
 */
#ifndef EXTPROC_VERSION_H
#define EXTPROC_VERSION_H

#include "extproc/visibility.h"

#ifdef __cplusplus
extern "C" {
#endif

#define EXTPROC_VERSION_MAJOR 0 /**< major version, raised for incompatible changes */
#define EXTPROC_VERSION_MINOR 2 /**< minor version, raised for additions */
#define EXTPROC_VERSION_PATCH 0 /**< patch version, raised for fixes */
/** "MAJOR.MINOR.PATCH" of the headers in use. */
#define EXTPROC_VERSION_STRING "0.2.0"
/** One number that grows with every release: MAJOR * 10000 + MINOR * 100 + PATCH. Compare it
 * at compile time, e.g. \#if EXTPROC_VERSION_NUMBER >= 200. */
#define EXTPROC_VERSION_NUMBER                                                                     \
  (EXTPROC_VERSION_MAJOR * 10000 + EXTPROC_VERSION_MINOR * 100 + EXTPROC_VERSION_PATCH)

/** The version of the library actually loaded, as EXTPROC_VERSION_NUMBER (which gives the
 * version of the headers compiled against). `text`, if not NULL, receives its
 * "MAJOR.MINOR.PATCH" string (static storage). Thread-safe. */
EXTPROC_API unsigned extproc_version(const char **text);

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_VERSION_H */
