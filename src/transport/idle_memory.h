/* What an idle HTTP/2 connection keeps resident, and giving it back.
 *
 * Most of an idle connection's memory is its nghttp2 session, and most of that is two blocks
 * nghttp2 allocates when the session is made and keeps until it is deleted: the frame buffer
 * every outgoing frame is serialized into (16 KiB and 10 bytes: one maximal frame, its header and
 * a pad length), and the table of its stream map (4 KiB in nghttp2 1.52, allocated at once; later
 * releases allocate it on the first stream). Neither holds anything while the connection is idle:
 * the frame buffer is rewritten from its start for each frame, and the stream map of a session
 * with no stream is all zeros. So the session gets an allocator (nghttp2_mem) that places its
 * first large blocks on pages of their own, in one mapping per connection, and once the
 * connection has been idle a while those pages are given back to the system (madvise
 * MADV_DONTNEED): they cost nothing until nghttp2 writes to them again, when the kernel supplies
 * zeroed pages. Everything else goes to malloc as before.
 *
 * Only two kinds of pages are given back: the frame buffer's, once nghttp2 has nothing queued (it
 * writes a frame before reading it), and pages that read as all zeros, which the kernel's zeroed
 * pages replace without any change nghttp2 could see. Both are checked when it happens; a block
 * that is neither stays. If the mapping cannot be made, everything comes from malloc. */
#ifndef EXTPROC_IDLE_MEMORY_H
#define EXTPROC_IDLE_MEMORY_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Large blocks placed on pages of their own, per connection: the frame buffer and the stream
 * map's table. */
enum { IDLE_PAGES_MAX_BLOCKS = 2 };

/* Kept small: one per connection. */
typedef struct idle_pages {
  uint8_t *base; /* the connection's mapping, or NULL: every block comes from malloc */
  uint32_t size; /* bytes mapped */
  uint32_t used; /* bytes handed out, from base, in whole pages; never reused */
  struct {
    uint8_t *p;
    uint32_t len; /* as asked for; 0 once freed */
  } block[IDLE_PAGES_MAX_BLOCKS];
  uint32_t blocks;
  uint64_t released_ms; /* loop time of the last give-back; 0: never */
} idle_pages;

/* Maps the connection's pages (nothing is resident until written). Failure is not an error:
 * the allocator then uses malloc for everything. */
void idle_pages_init(idle_pages *pg);

/* The allocator for the connection's nghttp2 session; `pg` must outlive the session. */
nghttp2_mem idle_pages_allocator(idle_pages *pg);

/* Unmaps the pages; call after the session is deleted. Safe on a zeroed struct. */
void idle_pages_free(idle_pages *pg);

/* Gives back what an idle session does not need: the frame buffer's pages and pages of all
 * zeros. The caller guarantees the session has nothing queued to send and has sent everything
 * it serialized. Returns the bytes given back. */
size_t idle_pages_release(idle_pages *pg);

#endif
