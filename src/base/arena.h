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

/* The block size kept in a per-thread cache: a message arena's first block. */
enum { ARENA_CACHED_BLOCK = 4096 };

/* Starts an empty arena whose first block will hold `first_block` bytes (later ones double); no
 * memory is taken until the first allocation. */
void arena_init(arena *a, size_t first_block);

/* Returns `size` bytes aligned for any type, or NULL on out-of-memory. */
void *arena_alloc(arena *a, size_t size);

/* Returns a zeroed allocation. */
void *arena_calloc(arena *a, size_t size);

/* Copies `len` bytes and adds a terminating NUL. */
char *arena_strndup(arena *a, const char *s, size_t len);

/* Empties the arena (blocks of ARENA_CACHED_BLOCK go to this thread's cache, others are freed)
 * and starts again as arena_init(a, first_block); all pointers become invalid. */
void arena_reset(arena *a, size_t first_block);

/* Frees everything (as arena_reset, without starting again). */
void arena_free(arena *a);

/* Frees this thread's cache of blocks; call before a thread that used arenas exits. */
void arena_cache_release(void);

/* A protobuf-c allocator drawing from `a`; its free is a no-op. */
ProtobufCAllocator arena_protobuf_allocator(arena *a);

#endif
