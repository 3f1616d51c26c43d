/**
 * @file
 * libextproc symbol visibility. The library is built with -fvisibility=hidden: only functions
 * declared with EXTPROC_API are exported from libextproc.so; everything else (the engine, the
 * transport, the generated protobuf-c code) stays internal and may change in any release.
 */
#ifndef EXTPROC_VISIBILITY_H
#define EXTPROC_VISIBILITY_H

/** Marks a function of the public API: exported from the shared library, with default
 * visibility, whatever the compiler's default. Expands to nothing for compilers without the
 * attribute. */
#if defined(__GNUC__) || defined(__clang__)
#define EXTPROC_API __attribute__((visibility("default")))
#else
#define EXTPROC_API
#endif

#endif /* EXTPROC_VISIBILITY_H */
