/* The ProcessingRequest messages one stream sends, encoded once per run. */
#ifndef EXTPROC_LOADGEN_SCRIPT_H
#define EXTPROC_LOADGEN_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { SHAPE_HEADERS, SHAPE_FULL, SHAPE_STREAMED } lg_shape;

enum { REQUEST_ID_LEN = 36 }; /* a UUID's text form */

typedef struct lg_message {
  uint8_t *data; /* gRPC-framed: 5-byte prefix, then the encoded ProcessingRequest */
  size_t len;
  int expect; /* the ProcessingResponse oneof case that answers it */
  const char *phase;
} lg_message;

typedef struct lg_script {
  lg_shape shape;
  lg_message *messages;
  size_t count;
  /* Where message 0 holds the x-request-id value (REQUEST_ID_LEN bytes), patched per stream. */
  size_t request_id_offset;
} lg_script;

/* Builds the messages of a shape. body_bytes is the body of `full` (per direction) and of
 * `streamed` (request only), cut into chunk_bytes chunks for `streamed`. Returns false (with
 * a message on stderr) on bad sizes or out of memory. */
bool script_build(lg_script *s, lg_shape shape, size_t body_bytes, size_t chunk_bytes);
void script_free(lg_script *s);
const char *shape_name(lg_shape shape);

/* Writes a request id derived from (seed, n) into out (REQUEST_ID_LEN bytes, no NUL). */
void script_request_id(char *out, uint64_t seed, uint64_t n);

#endif
