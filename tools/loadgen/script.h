/* The ProcessingRequest messages one stream sends, encoded once per run. */
#ifndef EXTPROC_LOADGEN_SCRIPT_H
#define EXTPROC_LOADGEN_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SHAPE_HEADERS, SHAPE_FULL, SHAPE_STREAMED, SHAPE_DUPLEX, SHAPE_BUFFERED } lg_shape;

enum { REQUEST_ID_LEN = 36 }; /* a UUID's text form */

typedef struct lg_message {
  uint8_t *data; /* gRPC-framed: 5-byte prefix, then the encoded ProcessingRequest */
  size_t len;
  int expect; /* the ProcessingResponse oneof case that answers it */
  const char *phase;
  /* Envoy sends the next message at once, without waiting for this one's reply: headers and
   * body chunks in FULL_DUPLEX_STREAMED, every chunk but the last in STREAMED. */
  bool no_wait;
  /* A body chunk: where it lies in its direction's body (script.body). */
  bool is_body;
  size_t body_off, body_len;
  /* FULL_DUPLEX_STREAMED chunks are answered by streamed pieces, any number of them, not one
   * reply each; the piece carrying end_of_stream answers them all, up to this message. */
  bool duplex;
  size_t duplex_end;
} lg_message;

typedef struct lg_script {
  lg_shape shape;
  lg_message *messages;
  size_t count;
  /* Where message 0 holds the x-request-id value (REQUEST_ID_LEN bytes), patched per stream. */
  size_t request_id_offset;
  /* Each direction's body (the same filler both ways), and its ASCII uppercase: what the
   * replies are checked against. */
  uint8_t *body, *body_upper;
  size_t body_bytes;
  uint64_t body_bytes_per_stream; /* body bytes in one stream's messages, both directions */
} lg_script;

/* Builds the messages of a shape. body_bytes is the body of `full` (per direction) and of
 * `streamed`, `duplex` and `buffered` (request only), cut into chunk_bytes chunks for
 * `streamed` and `duplex`. Returns false (with a message on stderr) on bad sizes or out of
 * memory. */
bool script_build(lg_script *s, lg_shape shape, size_t body_bytes, size_t chunk_bytes);
void script_free(lg_script *s);
const char *shape_name(lg_shape shape);
/* The shape called `name`; false when there is none. */
bool shape_named(const char *name, lg_shape *out);

/* Writes a request id derived from (seed, n) into out (REQUEST_ID_LEN bytes, no NUL). */
void script_request_id(char *out, uint64_t seed, uint64_t n);

#endif
