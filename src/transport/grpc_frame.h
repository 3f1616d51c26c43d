/* gRPC message framing: each message is a 1-byte compressed flag, a 4-byte big-endian length
 * and the message bytes, split across HTTP/2 DATA frames however the sender likes. */
#ifndef EXTPROC_GRPC_FRAME_H
#define EXTPROC_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { GRPC_PREFIX_BYTES = 5 };

/* A buffer this large is not kept between messages, so one big message does not pin memory
 * for the rest of the stream. */
enum { GRPC_KEEP_BUFFER_BYTES = 64 * 1024 };

typedef enum grpc_read_status {
  GRPC_READ_NEED_MORE,  /* all input consumed, no whole message yet */
  GRPC_READ_MESSAGE,    /* a whole message is ready (see grpc_reader_feed) */
  GRPC_READ_TOO_LARGE,  /* the announced length exceeds the limit; stop feeding this stream */
  GRPC_READ_COMPRESSED, /* the compressed flag is set, which we never negotiate */
  GRPC_READ_NO_MEMORY
} grpc_read_status;

/* One large message buffer a worker keeps between messages for its streams' readers. Envoy
 * sends a streamed or buffered body as messages of hundreds of KiB to a few MiB; freeing each
 * one's buffer and growing the next from 4 KiB again has the allocator map fresh pages for every
 * message, and faulting them in costs more than the message's own processing. A reader takes the
 * spare when its message outgrows its own buffer, and hands a large buffer back when the message
 * is done; the worker frees the spare once it goes unused for a while (worker.c). */
typedef struct grpc_spare {
  uint8_t *buf; /* NULL when none is kept, or a reader has it */
  size_t cap;
  bool used; /* taken since the worker last looked */
} grpc_spare;

typedef struct grpc_reader {
  grpc_spare *spare; /* the worker's, or NULL */
  size_t max_message_bytes;
  uint8_t prefix[GRPC_PREFIX_BYTES];
  size_t prefix_len;
  uint32_t message_len; /* valid once prefix_len == GRPC_PREFIX_BYTES */
  uint8_t *buf;         /* the message being reassembled across frames; grows as it arrives */
  size_t buf_len;
  size_t buf_cap;
} grpc_reader;

/* `spare`: the worker's kept buffer, or NULL for none. */
void grpc_reader_init(grpc_reader *r, size_t max_message_bytes, grpc_spare *spare);
/* Frees the buffer and forgets any partial message. */
void grpc_reader_free(grpc_reader *r);

/* Forgets any partial message and keeps the buffer, for a reader reused on another stream. */
void grpc_reader_reset(grpc_reader *r);

/* Consumes input from `*data`/`*len` (both advanced) until a whole message is ready, the input
 * runs out, or an error. On GRPC_READ_MESSAGE, `*msg`/`*msg_len` point at the message: into the
 * input itself when it arrived in one piece (no copy), or into the reader's buffer; valid until
 * the next call. Call again with the remaining input to continue. On GRPC_READ_TOO_LARGE,
 * `*msg_len` holds the announced length. */
grpc_read_status grpc_reader_feed(grpc_reader *r, const uint8_t **data, size_t *len,
                                  const uint8_t **msg, size_t *msg_len);

/* When no message is in progress and the reader's buffer is larger than worth keeping for the
 * next one (GRPC_KEEP_BUFFER_BYTES), gives it up: to the worker's spare if that is empty or
 * smaller (whose old buffer is then freed), else frees it. Returns the bytes freed. */
size_t grpc_reader_release_spare(grpc_reader *r);

/* True when no partial message is buffered (a clean place for the stream to end). */
bool grpc_reader_idle(const grpc_reader *r);

/* Bytes of the incomplete message held so far (prefix included); 0 when idle. */
size_t grpc_reader_buffered(const grpc_reader *r);

/* Writes the 5-byte prefix of an uncompressed message of `len` bytes. */
void grpc_write_prefix(uint8_t out[GRPC_PREFIX_BYTES], uint32_t len);

#endif
