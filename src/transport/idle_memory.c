/* The session allocator that keeps nghttp2's large per-session blocks on pages of their own, and
 * the worker's sweep that gives those pages back once a connection is idle (idle_memory.h). */
#include "transport/idle_memory.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "transport/connection.h"

/* The blocks worth pages of their own: nghttp2's frame buffer (NGHTTP2_FRAMEBUF_CHUNKLEN in its
 * sources: a 9-byte frame header, a pad length byte and the 16,384-byte maximal payload) and its
 * stream map's table (256 buckets of 16 bytes). Smaller blocks share malloc's pages with the
 * rest of the session and would not give back a page by themselves. */
enum {
  FRAME_BUFFER_BYTES = 9 + 1 + 16384,
  STREAM_MAP_BYTES = 256 * 16,
  OWN_PAGES_MIN_BYTES = 4096
};

/* A connection is idle long enough to give back its pages after this long without a stream or
 * input: a connection between requests a moment apart keeps them, so the request path does not
 * pay a page fault per request. */
enum { RELEASE_AFTER_MS = 1000 };

static size_t page_bytes(void) {
  const long pg = sysconf(_SC_PAGESIZE);
  return pg > 0 ? (size_t)pg : 4096;
}

static size_t round_to_pages(size_t n) {
  const size_t pg = page_bytes();
  return (n + pg - 1) / pg * pg;
}

void idle_pages_init(idle_pages *pg) {
  memset(pg, 0, sizeof(*pg));
  const size_t size = round_to_pages(FRAME_BUFFER_BYTES) + round_to_pages(STREAM_MAP_BYTES);
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  pg->base = p;
  pg->size = (uint32_t)size;
}

void idle_pages_free(idle_pages *pg) {
  if (pg->base) munmap(pg->base, pg->size);
  pg->base = NULL;
}

static bool owns(const idle_pages *pg, const void *p) {
  return pg->base && (const uint8_t *)p >= pg->base && (const uint8_t *)p < pg->base + pg->size;
}

/* Pages of the mapping are zero until written (fresh or given back), and never handed out
 * twice, so a block from here is zeroed. NULL: take it from malloc. */
static void *take_pages(idle_pages *pg, size_t size) {
  if (!pg->base || size < OWN_PAGES_MIN_BYTES || size > pg->size ||
      pg->blocks == IDLE_PAGES_MAX_BLOCKS)
    return NULL;
  const size_t need = round_to_pages(size);
  if (need > pg->size - pg->used) return NULL;
  uint8_t *p = pg->base + pg->used;
  pg->used += (uint32_t)need;
  pg->block[pg->blocks].p = p;
  pg->block[pg->blocks].len = (uint32_t)size;
  pg->blocks++;
  return p;
}

static unsigned block_index(const idle_pages *pg, const void *p) {
  for (unsigned i = 0; i < pg->blocks; i++)
    if (pg->block[i].p == p) return i;
  return IDLE_PAGES_MAX_BLOCKS;
}

static void discard(uint8_t *p, size_t len) {
  (void)madvise(p, round_to_pages(len), MADV_DONTNEED);
}

static void *on_malloc(size_t size, void *user) {
  void *p = take_pages(user, size);
  return p ? p : malloc(size);
}

static void *on_calloc(size_t n, size_t size, void *user) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = take_pages(user, n * size);
  return p ? p : calloc(n, size);
}

/* A block of ours is never reused: its pages go back to the system at once. */
static void on_free(void *p, void *user) {
  idle_pages *pg = user;
  if (!owns(pg, p)) {
    free(p);
    return;
  }
  const unsigned i = block_index(pg, p);
  if (i == IDLE_PAGES_MAX_BLOCKS) return;
  discard(pg->block[i].p, pg->block[i].len);
  pg->block[i].len = 0;
}

static void *on_realloc(void *p, size_t size, void *user) {
  idle_pages *pg = user;
  if (!p) return on_malloc(size, user);
  if (!owns(pg, p)) return realloc(p, size);
  const unsigned i = block_index(pg, p);
  const size_t old = i < IDLE_PAGES_MAX_BLOCKS ? pg->block[i].len : 0;
  void *q = on_malloc(size, user);
  if (!q) return NULL;
  memcpy(q, p, old < size ? old : size);
  on_free(p, user);
  return q;
}

nghttp2_mem idle_pages_allocator(idle_pages *pg) {
  return (nghttp2_mem){.mem_user_data = pg,
                       .malloc = on_malloc,
                       .free = on_free,
                       .calloc = on_calloc,
                       .realloc = on_realloc};
}

static bool all_zero(const uint8_t *p, size_t len) {
  static const uint8_t zeros[256];
  for (size_t off = 0; off < len; off += sizeof(zeros)) {
    const size_t n = len - off < sizeof(zeros) ? len - off : sizeof(zeros);
    if (memcmp(p + off, zeros, n) != 0) return false;
  }
  return true;
}

size_t idle_pages_release(idle_pages *pg) {
  size_t given = 0;
  for (unsigned i = 0; i < pg->blocks; i++) {
    uint8_t *p = pg->block[i].p;
    const size_t len = pg->block[i].len;
    if (len == 0) continue;
    /* The frame buffer's bytes are dead once everything serialized was sent; any other block
     * goes only if it reads as zeros, which the kernel's fresh pages reproduce exactly. */
    if (len != FRAME_BUFFER_BYTES && !all_zero(p, len)) continue;
    discard(p, len);
    given += round_to_pages(len);
  }
  return given;
}

/* ---- The worker's sweep ---------------------------------------------------------------- */

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

/* Idle: handshake done, no stream, nothing being written or queued. */
static bool is_idle(connection *c) {
  return c->handshake_done && !c->closing && !c->streams.head && !c->pending &&
         !nghttp2_session_want_write(c->session);
}

bool connections_release_idle(worker *w) {
  const uint64_t now = uv_now(&w->loop);
  bool again = false;
  for (const dlist_link *l = w->connections.head; l; l = l->next) {
    connection *c = LIST_ITEM(l, connection, link);
    const uint64_t active = max_u64(c->idle_since_ms, c->last_input_ms);
    if (c->pages.released_ms > active || !is_idle(c)) continue;
    if (now < active + RELEASE_AFTER_MS) {
      again = true;
      continue;
    }
    idle_pages_release(&c->pages);
    c->pages.released_ms = now > active ? now : active + 1;
  }
  return again;
}
