#include "transport/grpc_frame.h"

#include <stdlib.h>
#include <string.h>

void grpc_reader_init(grpc_reader *r, size_t max_message_bytes, grpc_spare *spare) {
  memset(r, 0, sizeof(*r));
  r->max_message_bytes = max_message_bytes;
  r->spare = spare;
}

void grpc_reader_free(grpc_reader *r) {
  free(r->buf);
  r->buf = NULL;
  r->buf_len = r->buf_cap = 0;
  r->prefix_len = 0;
}

size_t grpc_reader_buffered(const grpc_reader *r) { return r->prefix_len + r->buf_len; }

bool grpc_reader_idle(const grpc_reader *r) { return r->prefix_len == 0; }

void grpc_write_prefix(uint8_t out[GRPC_PREFIX_BYTES], uint32_t len) {
  out[0] = 0;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
}

void grpc_reader_reset(grpc_reader *r) {
  r->prefix_len = 0;
  r->buf_len = 0;
}

size_t grpc_reader_release_spare(grpc_reader *r) {
  const size_t cap = r->buf_cap;
  if (r->prefix_len != 0 || cap <= GRPC_KEEP_BUFFER_BYTES) return 0;
  grpc_spare *spare = r->spare;
  if (!spare || (spare->buf && spare->cap >= cap)) {
    grpc_reader_free(r);
    return cap;
  }
  const size_t freed = spare->buf ? spare->cap : 0;
  free(spare->buf);
  spare->buf = r->buf;
  spare->cap = cap;
  r->buf = NULL;
  r->buf_len = r->buf_cap = 0;
  return freed;
}

/* Swaps the reader's buffer for the worker's spare, for a large message (one that needs more
 * than a buffer worth keeping) when the spare holds `need` bytes and more than the reader's own. */
static bool take_spare(grpc_reader *r, size_t need) {
  grpc_spare *spare = r->spare;
  if (!spare || !spare->buf || need <= GRPC_KEEP_BUFFER_BYTES || spare->cap < need ||
      spare->cap <= r->buf_cap)
    return false;
  if (r->buf_len) memcpy(spare->buf, r->buf, r->buf_len);
  free(r->buf);
  r->buf = spare->buf;
  r->buf_cap = spare->cap;
  spare->buf = NULL;
  spare->cap = 0;
  spare->used = true;
  return true;
}

/* The first allocation for a message, unless the message is smaller. */
enum { MIN_BUFFER_BYTES = 4096 };

/* Makes room for `need` bytes of the message. The buffer grows with what has arrived, never to
 * the announced length at once: a prefix announcing 16 MiB must not cost 16 MiB (ten thousand
 * such streams would reserve 160 GiB and run the process out of memory mappings) before a byte
 * of it comes. Doubling keeps the copying linear; the buffer never outgrows the message, unless it
 * is the worker's spare, which exists already. */
static bool reserve(grpc_reader *r, size_t need) {
  if (need <= r->buf_cap || take_spare(r, need)) return true;
  size_t cap = r->buf_cap ? r->buf_cap * 2 : MIN_BUFFER_BYTES;
  if (cap < need) cap = need;
  if (cap > r->message_len) cap = r->message_len;
  uint8_t *nb = realloc(r->buf, cap);
  if (!nb) return false;
  r->buf = nb;
  r->buf_cap = cap;
  return true;
}

grpc_read_status grpc_reader_feed(grpc_reader *r, const uint8_t **data, size_t *len,
                                  const uint8_t **msg, size_t *msg_len) {
  grpc_reader_release_spare(r);
  /* Prefix: may itself be split across frames. */
  while (r->prefix_len < GRPC_PREFIX_BYTES) {
    if (*len == 0) return GRPC_READ_NEED_MORE;
    r->prefix[r->prefix_len++] = **data;
    (*data)++;
    (*len)--;
    if (r->prefix_len == GRPC_PREFIX_BYTES) {
      r->message_len = (uint32_t)r->prefix[1] << 24 | (uint32_t)r->prefix[2] << 16 |
                       (uint32_t)r->prefix[3] << 8 | r->prefix[4];
      if (r->prefix[0] != 0) return GRPC_READ_COMPRESSED;
      if (r->message_len > r->max_message_bytes) {
        *msg_len = r->message_len;
        return GRPC_READ_TOO_LARGE;
      }
    }
  }
  const size_t need = r->message_len - r->buf_len;
  /* Fast path: the whole message is in this input; hand it out without copying. */
  if (r->buf_len == 0 && *len >= need) {
    *msg = *data;
    *msg_len = need;
    *data += need;
    *len -= need;
    grpc_reader_reset(r);
    return GRPC_READ_MESSAGE;
  }
  if (*len == 0) return GRPC_READ_NEED_MORE; /* the prefix ended the input: nothing to keep */
  const size_t take = *len < need ? *len : need;
  if (!reserve(r, r->buf_len + take)) return GRPC_READ_NO_MEMORY;
  memcpy(r->buf + r->buf_len, *data, take);
  r->buf_len += take;
  *data += take;
  *len -= take;
  if (r->buf_len < r->message_len) return GRPC_READ_NEED_MORE;
  *msg = r->buf;
  *msg_len = r->message_len;
  grpc_reader_reset(r);
  return GRPC_READ_MESSAGE;
}
