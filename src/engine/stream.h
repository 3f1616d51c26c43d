/* The stream engine: one ext_proc gRPC stream, i.e. one HTTP exchange seen by one processor.
 *
 * It decodes each ProcessingRequest, checks that the phase may come now, runs the processor's
 * callback, and sends exactly the one reply Envoy expects for that message (none in
 * observability mode). The transport feeds it whole gRPC messages and is told, through a
 * stream_sink, what to send; the engine knows nothing of HTTP/2, so the same engine serves the
 * network and an in-process harness.
 *
 * All functions run on the stream's loop thread, except extproc_request_resume() (public). */
#ifndef EXTPROC_STREAM_H
#define EXTPROC_STREAM_H

#include <protobuf-c/protobuf-c.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "engine/headers.h"
#include "envoy/config/core/v3/base.pb-c.h"
#include "extproc/extproc.h"
#include "google/protobuf/struct.pb-c.h"

/* Where the engine's output goes. `io` is the transport's per-stream object. */
typedef struct stream_sink {
  /* Sends one ProcessingResponse (the message is valid only during the call). Returns 0, or
   * a negative extproc_error if it could not be queued (the engine then fails the stream). */
  int (*send)(void *io, const ProtobufCMessage *reply);
  /* Ends the gRPC stream with `grpc_status` and `message` (may be NULL) once queued replies
   * are out. Called at most once. */
  void (*finish)(void *io, uint32_t grpc_status, const char *message);
  /* A deferred phase has completed outside any transport event: the transport should take in
   * the input it held back and flush its output. */
  void (*resumed)(void *io);
} stream_sink;

/* How a deferred request gets back to its loop thread: `post` is thread-safe and makes the
 * loop call stream_resume_on_loop(req) soon. */
typedef struct stream_poster {
  void (*post)(void *data, extproc_request *req);
  void *data;
  size_t *deferred; /* counts deferred, unresumed requests; touched on the loop thread only */
} stream_poster;

typedef enum body_op { BODY_KEEP, BODY_REPLACE, BODY_CLEAR } body_op;

/* What Envoy has sent in one direction (request or response) so far. */
typedef enum direction_state {
  DIRECTION_NOTHING,    /* nothing yet */
  DIRECTION_HEADERS,    /* headers; a body or trailers may follow */
  DIRECTION_BODY,       /* body chunks, more to come */
  DIRECTION_BODY_ENDED, /* a chunk had end_of_stream; only trailers may follow */
  DIRECTION_ENDED       /* headers with end_of_stream, or trailers: nothing more */
} direction_state;

/* Between the loop thread and whichever thread resumes a deferred phase. */
typedef enum handoff_state {
  HANDOFF_IDLE,          /* no callback running */
  HANDOFF_IN_CALLBACK,   /* a callback is running; a resume now is an early one */
  HANDOFF_RESUMED_EARLY, /* resumed while the callback ran: complete when it returns DEFER */
  HANDOFF_DEFERRED,      /* the callback returned EXTPROC_DEFER; waiting for the resume */
  HANDOFF_POSTED         /* resumed; the loop will complete the phase */
} handoff_state;

/* A piece of a FULL_DUPLEX_STREAMED body or of a streamed immediate response, sent after the
 * callback returns, in order. */
typedef struct streamed_piece {
  struct streamed_piece *next;
  const uint8_t *data;
  size_t len;
  bool end_of_stream;
} streamed_piece;

typedef enum streamed_immediate_state {
  STREAMED_IMMEDIATE_NONE,
  STREAMED_IMMEDIATE_STARTING, /* started by this callback: its headers go first */
  STREAMED_IMMEDIATE_OPEN,     /* headers sent; body pieces may follow */
  STREAMED_IMMEDIATE_ENDED
} streamed_immediate_state;

/* A message that arrived while an earlier one was still being answered. */
typedef struct queued_message {
  struct queued_message *next;
  size_t len;
  uint8_t data[];
} queued_message;

struct extproc_request {
  const extproc_processor *proc;
  const stream_sink *sink;
  void *io; /* NULL once the transport has let go of the stream */
  stream_poster poster;

  arena arena;     /* lives as long as the stream: info strings, the context */
  arena msg_arena; /* the message being processed and its reply; reset per message */

  extproc_request_info info;
  void *ctx;
  bool ctx_started; /* context_init ran (and succeeded): cleanup is owed */

  /* What Envoy has sent so far, for the phase-order check. */
  direction_state direction[2]; /* [0] request, [1] response */

  /* What Envoy said about the exchange; [0] request, [1] response. */
  extproc_protocol_config protocol;
  extproc_body_mode body_mode[2];       /* protocol_config, then our own mode_override */
  bool had_content_length[2];           /* the direction's headers carried content-length */
  Google__Protobuf__Struct *attributes; /* merged attributes, in the stream arena */
  Envoy__Config__Core__V3__Metadata *metadata_context; /* latest one, in the stream arena */
  uint8_t *accumulated[2];                             /* extproc_body_accumulate(); malloc'd */
  size_t accumulated_len[2], accumulated_cap[2];
  bool chunk_accumulated;    /* the current chunk is in accumulated[] */
  bool duplex_body_ended[2]; /* an end_of_stream streamed body was sent */
  bool body_replaced[2];     /* CONTINUE_AND_REPLACE sent: Envoy expects no body or trailer reply */
  streamed_immediate_state streamed_immediate;
  bool streamed_immediate_headers_end; /* its headers carry end_of_stream: no body follows */

  /* The message being processed. */
  extproc_phase phase;
  bool end_of_stream;
  bool observability_mode;
  extproc_header *headers;
  size_t header_count;
  const uint8_t *body;
  size_t body_len;

  /* The reply being built. */
  header_edits edits;
  body_op body_op;
  uint8_t *body_data;
  size_t body_data_len;
  bool immediate;
  uint32_t immediate_status;
  header_edits immediate_headers;
  uint8_t *immediate_body;
  size_t immediate_body_len;
  bool immediate_has_grpc_status;
  uint32_t immediate_grpc_status;
  char *immediate_details;
  uint32_t fail_code;
  char *fail_message;
  Google__Protobuf__Struct *dynamic_metadata;
  bool has_mode_override;
  extproc_processing_mode mode_override;
  bool clear_route_cache;
  streamed_piece *pieces_head, *pieces_tail; /* duplex body or streamed immediate pieces */

  /* Flow. */
  bool deferred;                /* a callback returned EXTPROC_DEFER and has not been resumed */
  atomic_int handoff;           /* handoff_state: who answers the phase; any thread reads it */
  extproc_result resume_result; /* written by extproc_request_resume() before handoff changes */
  uint64_t phase_started_ns;    /* monotonic; set only when debug logging is on */
  bool ended;                   /* the stream's outcome is decided: later messages are ignored */
  bool half_closed;             /* Envoy has sent its last message */
  queued_message *queue_head, *queue_tail;
};

/* Opens a stream for `proc`. `sink` is static; `io` and `poster` are the transport's.
 * Returns NULL on out-of-memory. */
extproc_request *stream_open(const extproc_processor *proc, const stream_sink *sink, void *io,
                             const stream_poster *poster);

/* Hands the engine one whole gRPC message (copied if it must wait). */
void stream_on_message(extproc_request *req, const uint8_t *data, size_t len);

/* Envoy half-closed the stream: once every message is answered, it ends with OK. */
void stream_on_half_close(extproc_request *req);

/* True while a deferred phase awaits extproc_request_resume(): input should be held back. */
bool stream_busy(const extproc_request *req);

/* The transport is done with the stream (closed, reset or cancelled). Frees it now, or when
 * its deferred phase is resumed. */
void stream_close(extproc_request *req);

/* Called on the loop thread after extproc_request_resume() posted the request. */
void stream_resume_on_loop(extproc_request *req);

/* Builds the ProcessingResponse for the current message from what the callback recorded, in
 * the message arena. Returns NULL on out-of-memory. (reply.c) */
ProtobufCMessage *reply_build(extproc_request *req);

/* Builds an ImmediateResponse reply with just a status, for the error policy. (reply.c) */
ProtobufCMessage *reply_build_error(extproc_request *req, uint32_t http_status);

/* Builds a FULL_DUPLEX_STREAMED body reply carrying one piece as a streamed_response. (reply.c) */
ProtobufCMessage *reply_build_streamed_body(extproc_request *req, const streamed_piece *piece);

/* Builds the headers part of a streamed immediate response, from immediate_status and
 * immediate_headers. (reply.c) */
ProtobufCMessage *reply_build_streamed_immediate_headers(extproc_request *req, bool end_of_stream);

/* Builds a body piece of a streamed immediate response. (reply.c) */
ProtobufCMessage *reply_build_streamed_immediate_body(extproc_request *req,
                                                      const streamed_piece *piece);

/* Builds a reply carrying only override_message_timeout. (reply.c) */
ProtobufCMessage *reply_build_timeout_override(extproc_request *req, uint32_t ms);

/* Appends a piece (data copied) to the reply being built. Returns 0 or EXTPROC_ENOMEM. */
int stream_add_piece(extproc_request *req, const void *data, size_t len, bool end_of_stream);

/* Sends a reply outside the phase's own reply (override_message_timeout). Returns 0 or a
 * negative extproc_error. */
int stream_send_extra(extproc_request *req, ProtobufCMessage *reply);

#endif
