#include "base/arena.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

struct arena_block {
  arena_block *next;
  size_t used;
  size_t size;
  alignas(max_align_t) unsigned char data[];
};

enum { ARENA_MAX_BLOCK = 1 << 20, CACHE_LIMIT = 64 };

/* Blocks of ARENA_CACHED_BLOCK bytes go back to a small per-thread cache instead of free():
 * a message's arena is emptied after every reply, and malloc's general path for blocks of this
 * size showed in profiles. A block may move between threads' caches; it is plain heap memory. */
static _Thread_local arena_block *cache;
static _Thread_local unsigned cached;

void arena_init(arena *a, size_t first_block) {
  a->head = NULL;
  a->block_bytes = first_block;
}

static size_t align_up(size_t n) {
  const size_t al = alignof(max_align_t);
  return (n + al - 1) & ~(al - 1);
}

static arena_block *block_new(size_t size) {
  if (size == ARENA_CACHED_BLOCK && cache) {
    arena_block *b = cache;
    cache = b->next;
    cached--;
    return b;
  }
  arena_block *b = malloc(sizeof(*b) + size);
  if (b) b->size = size;
  return b;
}

static void block_release(arena_block *b) {
  if (b->size == ARENA_CACHED_BLOCK && cached < CACHE_LIMIT) {
    b->next = cache;
    cache = b;
    cached++;
    return;
  }
  free(b);
}

void arena_cache_release(void) {
  while (cache) {
    arena_block *next = cache->next;
    free(cache);
    cache = next;
  }
  cached = 0;
}

static arena_block *arena_grow(arena *a, size_t need) {
  size_t size = a->block_bytes;
  if (size < need) size = need;
  arena_block *b = block_new(size);
  if (!b) return NULL;
  b->used = 0;
  /* A large one-off allocation goes behind the current block so the current block's free
   * space stays usable for the small allocations that follow. */
  if (need > a->block_bytes && a->head) {
    b->next = a->head->next;
    a->head->next = b;
  } else {
    b->next = a->head;
    a->head = b;
    if (a->block_bytes < ARENA_MAX_BLOCK) a->block_bytes *= 2;
  }
  return b;
}

void *arena_alloc(arena *a, size_t size) {
  if (size == 0) size = 1;
  size = align_up(size);
  arena_block *b = a->head;
  if (!b || b->size - b->used < size) {
    b = arena_grow(a, size);
    if (!b) return NULL;
  }
  void *p = b->data + b->used;
  b->used += size;
  return p;
}

void *arena_calloc(arena *a, size_t size) {
  void *p = arena_alloc(a, size);
  if (p) memset(p, 0, size);
  return p;
}

char *arena_strndup(arena *a, const char *s, size_t len) {
  char *p = arena_alloc(a, len + 1);
  if (!p) return NULL;
  if (len) memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

static void free_chain(arena_block *b) {
  while (b) {
    arena_block *next = b->next;
    block_release(b);
    b = next;
  }
}

void arena_reset(arena *a, size_t first_block) {
  free_chain(a->head);
  arena_init(a, first_block);
}

void arena_free(arena *a) {
  free_chain(a->head);
  a->head = NULL;
}

static void *pb_alloc(void *data, size_t size) { return arena_alloc(data, size); }
static void pb_free(void *data, void *ptr) {
  (void)data;
  (void)ptr;
}

ProtobufCAllocator arena_protobuf_allocator(arena *a) {
  ProtobufCAllocator al = {.alloc = pb_alloc, .free = pb_free, .allocator_data = a};
  return al;
}
