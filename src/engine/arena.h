/* A bump allocator for per-stream and per-message memory: many small allocations, freed all
 * at once. Decoding a ProcessingRequest allocates dozens of strings; an arena turns those into
 * a few mallocs and one free. */
#ifndef EXTPROC_ARENA_H
#define EXTPROC_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct arena_block arena_block;

typedef struct arena {
  arena_block *head;  /* newest block first */
  size_t block_bytes; /* size of the next regular block */
} arena;

/* Starts an empty arena; no memory is taken until the first allocation. */
void arena_init(arena *a);

/* Returns `size` bytes aligned for any type, or NULL on out-of-memory. */
void *arena_alloc(arena *a, size_t size);

/* Returns a zeroed allocation. */
void *arena_calloc(arena *a, size_t size);

/* Copies `len` bytes and adds a terminating NUL. */
char *arena_strndup(arena *a, const char *s, size_t len);

/* Frees every block but the first (which is kept for reuse); all pointers become invalid. */
void arena_reset(arena *a);

/* Frees everything. */
void arena_free(arena *a);

/* A protobuf-c allocator drawing from `a`; its free is a no-op. */
ProtobufCAllocator arena_protobuf_allocator(arena *a);

#endif
