/* gRPC framing: prefixes, reassembly across any split, zero-copy for whole messages, limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "transport/grpc_frame.h"

static size_t frame(uint8_t *out, const char *msg) {
  const size_t len = strlen(msg);
  grpc_write_prefix(out, (uint32_t)len);
  memcpy(out + GRPC_PREFIX_BYTES, msg, len);
  return GRPC_PREFIX_BYTES + len;
}

static void test_prefix_is_big_endian(void **state) {
  (void)state;
  uint8_t p[5];
  grpc_write_prefix(p, 0x01020304);
  const uint8_t want[5] = {0, 1, 2, 3, 4};
  assert_memory_equal(p, want, 5);
}

static void test_whole_messages_are_not_copied(void **state) {
  (void)state;
  uint8_t buf[64];
  size_t n = frame(buf, "hello");
  n += frame(buf + n, "");
  n += frame(buf + n, "world!");
  grpc_reader r;
  grpc_reader_init(&r, 1024, NULL);
  const uint8_t *data = buf, *msg;
  size_t len = n, msg_len;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 5);
  assert_ptr_equal(msg, buf + 5); /* points into the input */
  assert_memory_equal(msg, "hello", 5);
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 0);
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 6);
  assert_memory_equal(msg, "world!", 6);
  assert_int_equal(len, 0);
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_NEED_MORE);
  assert_true(grpc_reader_idle(&r));
  grpc_reader_free(&r);
}

/* Every split point of two messages, fed in pieces, yields the same two messages. */
static void test_reassembly_across_every_split(void **state) {
  (void)state;
  uint8_t buf[64];
  size_t n = frame(buf, "first message");
  n += frame(buf + n, "second");
  for (size_t piece = 1; piece <= n; piece++) {
    grpc_reader r;
    grpc_reader_init(&r, 1024, NULL);
    char got[2][32];
    int count = 0;
    for (size_t off = 0; off < n; off += piece) {
      const uint8_t *data = buf + off, *msg;
      size_t len = (n - off < piece) ? n - off : piece, msg_len;
      grpc_read_status st;
      while ((st = grpc_reader_feed(&r, &data, &len, &msg, &msg_len)) == GRPC_READ_MESSAGE) {
        assert_true(count < 2);
        memcpy(got[count], msg, msg_len);
        got[count++][msg_len] = '\0';
      }
      assert_int_equal(st, GRPC_READ_NEED_MORE);
    }
    assert_int_equal(count, 2);
    assert_string_equal(got[0], "first message");
    assert_string_equal(got[1], "second");
    assert_true(grpc_reader_idle(&r));
    grpc_reader_free(&r);
  }
}

static void test_limit_and_compression(void **state) {
  (void)state;
  grpc_reader r;
  grpc_reader_init(&r, 10, NULL);
  uint8_t p[5];
  grpc_write_prefix(p, 11);
  const uint8_t *data = p, *msg;
  size_t len = 5, msg_len = 0;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_TOO_LARGE);
  assert_int_equal(msg_len, 11);
  grpc_reader_free(&r);

  grpc_reader_init(&r, 10, NULL);
  grpc_write_prefix(p, 10); /* exactly the limit is fine */
  uint8_t buf[15];
  memcpy(buf, p, 5);
  memset(buf + 5, 'x', 10);
  data = buf;
  len = sizeof(buf);
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 10);
  grpc_reader_free(&r);

  grpc_reader_init(&r, 10, NULL);
  p[0] = 1; /* compressed flag */
  data = p;
  len = 5;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_COMPRESSED);
  grpc_reader_free(&r);
}

static void test_partial_prefix_is_not_idle(void **state) {
  (void)state;
  grpc_reader r;
  grpc_reader_init(&r, 100, NULL);
  uint8_t p[5];
  grpc_write_prefix(p, 3);
  const uint8_t *data = p, *msg;
  size_t len = 2, msg_len;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_NEED_MORE);
  assert_false(grpc_reader_idle(&r));
  grpc_reader_free(&r);
}

/* A reader reset mid-message starts over: the next input is a new message. */
static void test_reset_forgets_a_partial_message(void **state) {
  (void)state;
  uint8_t buf[64];
  const size_t n = frame(buf, "abandoned");
  grpc_reader r;
  grpc_reader_init(&r, 1024, NULL);
  const uint8_t *data = buf, *msg;
  size_t len = n - 3, msg_len;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_NEED_MORE);
  assert_int_equal(grpc_reader_buffered(&r), n - 3);
  grpc_reader_reset(&r);
  assert_true(grpc_reader_idle(&r));
  assert_int_equal(grpc_reader_buffered(&r), 0);
  const size_t m = frame(buf, "next");
  data = buf;
  len = GRPC_PREFIX_BYTES + 2; /* split in the message, so it is reassembled in the buffer */
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_NEED_MORE);
  len = m - GRPC_PREFIX_BYTES - 2;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 4);
  assert_memory_equal(msg, "next", 4);
  assert_true(grpc_reader_idle(&r));
  grpc_reader_free(&r);
}

/* Feeds one message of `size` bytes of `fill`, split in two pieces so it is reassembled, and
 * checks it arrived whole; returns the reader's buffer while the message is delivered. */
static const uint8_t *feed_split_message(grpc_reader *r, size_t size, uint8_t fill) {
  uint8_t *wire = malloc(GRPC_PREFIX_BYTES + size);
  assert_non_null(wire);
  grpc_write_prefix(wire, (uint32_t)size);
  memset(wire + GRPC_PREFIX_BYTES, fill, size);
  const uint8_t *data = wire, *msg;
  size_t len = GRPC_PREFIX_BYTES + size / 2, msg_len;
  assert_int_equal(grpc_reader_feed(r, &data, &len, &msg, &msg_len), GRPC_READ_NEED_MORE);
  len = size - size / 2;
  assert_int_equal(grpc_reader_feed(r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, size);
  for (size_t i = 0; i < size; i++)
    assert_int_equal(msg[i], fill);
  free(wire);
  return msg;
}

/* Large messages reuse the worker's spare buffer instead of growing a new one each time. */
static void test_large_messages_share_the_spare(void **state) {
  (void)state;
  enum { BIG = 1 << 20 };
  grpc_spare spare = {0};
  grpc_reader a, b;
  grpc_reader_init(&a, 4 * BIG, &spare);
  grpc_reader_init(&b, 4 * BIG, &spare);

  const uint8_t *first = feed_split_message(&a, BIG, 'x');
  assert_int_equal(grpc_reader_release_spare(&a), 0); /* kept, not freed */
  assert_ptr_equal(spare.buf, first);
  assert_int_equal(spare.cap, BIG);

  /* Another stream's large message lands in the same buffer, and gives it back. */
  assert_ptr_equal(feed_split_message(&b, BIG - 7, 'y'), first);
  assert_null(spare.buf);
  assert_true(spare.used);
  assert_int_equal(grpc_reader_release_spare(&b), 0);
  assert_ptr_equal(spare.buf, first);

  /* A larger buffer replaces the spare (the old one is freed); a smaller one is freed. */
  feed_split_message(&a, 2 * BIG, 'z');
  assert_int_equal(grpc_reader_release_spare(&a), 0); /* took the spare, grew it, gave it back */
  assert_int_equal(spare.cap, 2 * BIG);
  uint8_t *kept = spare.buf;
  spare.buf = NULL; /* as if another reader had it */
  feed_split_message(&b, BIG, 'w');
  spare.buf = kept;
  assert_int_equal(grpc_reader_release_spare(&b), BIG);
  assert_ptr_equal(spare.buf, kept);
  /* Small messages never touch it. */
  spare.used = false;
  feed_split_message(&b, 100, 's');
  feed_split_message(&b, GRPC_KEEP_BUFFER_BYTES, 't');
  assert_false(spare.used);
  assert_int_equal(grpc_reader_release_spare(&b), 0);
  assert_ptr_equal(spare.buf, kept);
  grpc_reader_free(&a);
  grpc_reader_free(&b);
  free(spare.buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefix_is_big_endian),
      cmocka_unit_test(test_whole_messages_are_not_copied),
      cmocka_unit_test(test_reassembly_across_every_split),
      cmocka_unit_test(test_limit_and_compression),
      cmocka_unit_test(test_partial_prefix_is_not_idle),
      cmocka_unit_test(test_reset_forgets_a_partial_message),
      cmocka_unit_test(test_large_messages_share_the_spare),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
