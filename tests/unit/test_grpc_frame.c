/* gRPC framing: prefixes, reassembly across any split, zero-copy for whole messages, limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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
  grpc_reader_init(&r, 1024);
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
    grpc_reader_init(&r, 1024);
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
  grpc_reader_init(&r, 10);
  uint8_t p[5];
  grpc_write_prefix(p, 11);
  const uint8_t *data = p, *msg;
  size_t len = 5, msg_len = 0;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_TOO_LARGE);
  assert_int_equal(msg_len, 11);
  grpc_reader_free(&r);

  grpc_reader_init(&r, 10);
  grpc_write_prefix(p, 10); /* exactly the limit is fine */
  uint8_t buf[15];
  memcpy(buf, p, 5);
  memset(buf + 5, 'x', 10);
  data = buf;
  len = sizeof(buf);
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_MESSAGE);
  assert_int_equal(msg_len, 10);
  grpc_reader_free(&r);

  grpc_reader_init(&r, 10);
  p[0] = 1; /* compressed flag */
  data = p;
  len = 5;
  assert_int_equal(grpc_reader_feed(&r, &data, &len, &msg, &msg_len), GRPC_READ_COMPRESSED);
  grpc_reader_free(&r);
}

static void test_partial_prefix_is_not_idle(void **state) {
  (void)state;
  grpc_reader r;
  grpc_reader_init(&r, 100);
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
  grpc_reader_init(&r, 1024);
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefix_is_big_endian),
      cmocka_unit_test(test_whole_messages_are_not_copied),
      cmocka_unit_test(test_reassembly_across_every_split),
      cmocka_unit_test(test_limit_and_compression),
      cmocka_unit_test(test_partial_prefix_is_not_idle),
      cmocka_unit_test(test_reset_forgets_a_partial_message),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
