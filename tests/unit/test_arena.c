/* The arena: alignment, growth past a block, big one-off allocations, reset and reuse. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "base/arena.h"

static void test_alignment_and_strings(void **state) {
  (void)state;
  arena a;
  arena_init(&a, 1024);
  for (size_t size = 1; size < 100; size += 7) {
    void *p = arena_alloc(&a, size);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % _Alignof(max_align_t), 0);
    memset(p, 0xab, size);
  }
  char *s = arena_strndup(&a, "header-value", 6);
  assert_string_equal(s, "header");
  unsigned char *z = arena_calloc(&a, 64);
  for (int i = 0; i < 64; i++)
    assert_int_equal(z[i], 0);
  arena_free(&a);
}

static void test_growth_keeps_earlier_data(void **state) {
  (void)state;
  arena a;
  arena_init(&a, 1024);
  char *first = arena_strndup(&a, "first", 5);
  /* Far more than one block in small pieces, then a giant one-off. */
  for (int i = 0; i < 10000; i++)
    assert_non_null(arena_alloc(&a, 48));
  uint8_t *big = arena_alloc(&a, 5u << 20);
  assert_non_null(big);
  memset(big, 1, 5u << 20);
  char *after = arena_strndup(&a, "after", 5);
  assert_string_equal(first, "first");
  assert_string_equal(after, "after");
  arena_free(&a);
}

static void test_reset_reuses_cached_blocks(void **state) {
  (void)state;
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  void *p1 = arena_alloc(&a, 16);
  arena_reset(&a, ARENA_CACHED_BLOCK);
  assert_null(a.head); /* an emptied arena holds no memory */
  void *p2 = arena_alloc(&a, 16);
  assert_ptr_equal(p1, p2); /* the block came back from this thread's cache */
  arena_free(&a);

  arena_init(&a, ARENA_CACHED_BLOCK);
  assert_non_null(arena_alloc(&a, 8u << 20)); /* a giant one is freed, not cached */
  arena_reset(&a, ARENA_CACHED_BLOCK);
  assert_null(a.head);
  assert_non_null(arena_alloc(&a, 16));
  arena_free(&a);
  arena_cache_release();
}

static void test_protobuf_allocator(void **state) {
  (void)state;
  arena a;
  arena_init(&a, 1024);
  ProtobufCAllocator al = arena_protobuf_allocator(&a);
  void *p = al.alloc(al.allocator_data, 100);
  assert_non_null(p);
  al.free(al.allocator_data, p); /* a no-op: freed with the arena */
  arena_free(&a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alignment_and_strings),
      cmocka_unit_test(test_growth_keeps_earlier_data),
      cmocka_unit_test(test_reset_reuses_cached_blocks),
      cmocka_unit_test(test_protobuf_allocator),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
