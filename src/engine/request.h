/* The request: one ext_proc stream's state, in its three lifetimes, and the engine's internal
 * seams between message intake (intake.c), the state machine (stream.c), sending replies
 * (send.c) and building them (reply.c). The author-facing API (src/api/) reads and records
 * through these structs; nothing above the engine and the API sees them.
 *
 *   struct extproc_request   the whole stream: who serves it, what Envoy has said so far,
 *                            the per-request context, the phase hand-off; stream arena
 *   message_view   req->msg  the message being processed; message arena, reset per message
 *   reply_draft    req->reply  what the callback recorded for its reply; message arena */
#ifndef EXTPROC_REQUEST_H
#define EXTPROC_REQUEST_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "base/list.h"
#include "base/pool.h"
#include "engine/decode.h"
#include "engine/headers.h"
#include "engine/processor.h"
#include "engine/stream.h"
#include "envoy/config/core/v3/base.pb-c.h"
#include "google/protobuf/struct.pb-c.h"

typedef enum body_op { BODY_KEEP, BODY_REPLACE, BODY_CLEAR } body_op;

/* What Envoy has sent in one direction (request or response) so far. */
typedef enum direction_state {
  DIRECTION_NOTHING,    /* nothing yet */
  DIRECTION_HEADERS,    /* headers; a body or trailers may follow */
  DIRECTION_BODY,       /* body chunks, more to come */
  DIRECTION_BODY_ENDED, /* a chunk had end_of_stream; only trailers may follow */
  DIRECTION_ENDED       /* headers with end_of_stream, or trailers: nothing more */
} direction_state;

/* Who answers the current phase: the loop thread, or whichever thread resumes a deferral (or
 * runs a blocking callback on the pool). The resume's result travels in the state itself, so
 * no other field is shared between threads. handoff.c has the transitions. */
typedef enum handoff_state {
  HANDOFF_IDLE,                   /* no callback running */
  HANDOFF_QUEUED,                 /* a blocking callback waits for a pool thread */
  HANDOFF_IN_CALLBACK,            /* a callback is running (on the loop, or on the pool) */
  HANDOFF_DEFER_DECLARED,         /* it called extproc_request_defer(): a resume may come now */
  HANDOFF_RESUMED_EARLY_CONTINUE, /* resumed before the callback returned */
  HANDOFF_RESUMED_EARLY_FAIL,
  HANDOFF_DEFERRED,        /* the callback returned; waiting for extproc_request_resume() */
  HANDOFF_POSTED_CONTINUE, /* resumed; the loop will complete the phase */
  HANDOFF_POSTED_FAIL,
  HANDOFF_ABANDONED, /* its loop stopped while it waited: the resume frees it on its own thread */
  /* A flag on any of the states above but ABANDONED: the phase's deadline has passed and the
   * error policy has answered it. Whoever holds the request still hands it back as usual (so it
   * is freed exactly once, by the loop), but the answer is dropped. */
  HANDOFF_EXPIRED = 0x100
} handoff_state;

/* A piece of a FULL_DUPLEX_STREAMED body or of a streamed immediate response, sent after the
 * callback returns, in order. */
typedef struct streamed_piece {
  queue_link link;
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

/* A message that arrived while an earlier one was still being answered (malloc'd). */
typedef struct queued_message {
  queue_link link;
  size_t len;
  uint8_t data[];
} queued_message;

/* The message being processed. Points into the message arena. */
typedef struct message_view {
  extproc_phase phase;
  bool end_of_stream;
  bool observability_mode;
  extproc_header *headers;
  size_t header_count;
  const uint8_t *body;
  size_t body_len;
  bool body_borrowed;     /* body lies in the input bytes, not the arena (intake_own_body) */
  bool chunk_accumulated; /* this chunk is already in the stream's accumulated body */
  uint64_t started_ns;    /* monotonic, when taken in; 0 when nothing times it */
} message_view;

/* The reply being built. Everything it points at lives in the message arena. */
typedef struct reply_draft {
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
  queue pieces; /* streamed_piece: duplex body or streamed immediate pieces */
} reply_draft;

struct extproc_request {
  const extproc_processor *proc;
  const processor_metrics *metrics; /* this processor's series, or NULL (not served, harness) */
  const stream_sink *sink;
  void *io; /* NULL once the transport has let go of the stream */
  stream_poster poster;
  const char *peer; /* for log lines; in the stream arena, set once before the first message */

  arena arena;     /* lives as long as the stream: info strings, the context */
  arena msg_arena; /* the message being processed and its reply; reset per message */

  extproc_request_info info;
  void *ctx;
  bool ctx_started; /* context_init ran (and succeeded): cleanup is owed */

  /* What Envoy has sent so far, for the phase-order check; [0] request, [1] response. */
  direction_state direction[2];

  /* What Envoy said about the exchange; [0] request, [1] response. */
  extproc_protocol_config protocol;
  extproc_body_mode body_mode[2];       /* protocol_config, then our own mode_override */
  bool content_length_held[2];          /* see intake.c: Envoy may still hold a content-length */
  Google__Protobuf__Struct *attributes; /* merged attributes, in the stream arena */
  Envoy__Config__Core__V3__Metadata *metadata_context; /* latest one, in the stream arena */
  uint8_t *accumulated[2];                             /* extproc_body_accumulate(); malloc'd */
  size_t accumulated_len[2], accumulated_cap[2];
  bool accumulate_over[2];   /* the body passed max_body_accumulate_bytes: no more accumulating */
  int accumulate_error;      /* why extproc_body_accumulate() last returned NULL; 0 otherwise */
  size_t body_messages[2];   /* body messages Envoy sent in each direction */
  bool duplex_body_ended[2]; /* an end_of_stream streamed body was sent */
  bool body_replaced[2];     /* CONTINUE_AND_REPLACE sent: Envoy expects no body or trailer reply */
  streamed_immediate_state streamed_immediate;
  bool streamed_immediate_headers_end; /* its headers carry end_of_stream: no body follows */

  message_view msg;
  reply_draft reply;

  /* Flow. */
  bool deferred;      /* a deferral (or a blocking callback) has not been handed back yet */
  atomic_int handoff; /* handoff_state; the only field other threads write while deferred */
  bool ended;         /* the stream's outcome is decided: later messages are ignored */
  bool half_closed;   /* Envoy has sent its last message */
  queue waiting;      /* queued_message, in arrival order */

  /* While held off the loop, in the poster's deferred_list (loop thread only), so a stopping
   * loop can abandon it (handoff.c). */
  dlist_link deferred_link;
  bool deferred_linked;
  /* Set when abandoned: the resume that frees it runs after the processor may be gone, so it
   * takes the cleanup from here (published by the hand-off). */
  extproc_context_cleanup_fn abandoned_cleanup;
  bool closed_at_shutdown; /* its hand-back was already on its way when the loop gave up */

  /* Deadlines and blocking callbacks (handoff.c); loop thread only, unless said otherwise. */
  void *deadline_timer;     /* the poster's timer for the deferred phase, while armed */
  bool expired;             /* the deadline answered the deferred phase; awaiting the hand-back */
  bool expire_fails_stream; /* no reply could answer this phase: a deadline ends the stream */
  bool on_pool; /* the callback runs on a pool thread; set before the job is submitted, read by
                 * the API on that thread */
  pool_job job; /* the blocking callback's run on the pool */
};

/* The direction of a phase: 0 request, 1 response. */
static inline int direction_of(extproc_phase phase) { return phase >= EXTPROC_RESPONSE_HEADERS; }

static inline bool is_body_phase(extproc_phase phase) {
  return phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY;
}

static inline bool is_headers_phase(extproc_phase phase) {
  return phase == EXTPROC_REQUEST_HEADERS || phase == EXTPROC_RESPONSE_HEADERS;
}

static inline bool is_trailers_phase(extproc_phase phase) {
  return phase == EXTPROC_REQUEST_TRAILERS || phase == EXTPROC_RESPONSE_TRAILERS;
}

/* The body modes in which Envoy drops content-length itself, since a processor may change the
 * body after the headers went on: STREAMED, BUFFERED_PARTIAL, FULL_DUPLEX_STREAMED. */
static inline bool drops_content_length(extproc_body_mode m) {
  return m == EXTPROC_BODY_STREAMED || m == EXTPROC_BODY_BUFFERED_PARTIAL ||
         m == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
}

/* ---- stream.c: the state machine ---------------------------------------------------------- */

/* Decodes, checks and dispatches one whole message. (stream.c) */
void stream_process(extproc_request *req, const uint8_t *data, size_t len);

/* Ends the stream with a non-OK gRPC status (once). (stream.c) */
void stream_fail(extproc_request *req, uint32_t code, const char *message);

/* Ends the stream with OK if Envoy has half-closed and nothing is pending. (stream.c) */
void stream_finish_if_done(extproc_request *req);

/* The callback's outcome is known: reply (or apply the error policy) and free the message.
 * (stream.c) */
void complete_phase(extproc_request *req, extproc_result result);

/* Frees the message being processed and its reply. (stream.c) */
void reset_message_memory(extproc_request *req);

/* Counts a message Envoy would not send (for the metrics). (stream.c) */
void stream_count_violation(extproc_request *req, violation_kind kind);

/* Frees the request and everything it owns. (stream.c) */
void stream_free(extproc_request *req);

/* Frees a request abandoned at shutdown, on the thread of its late resume: runs the cleanup
 * kept in abandoned_cleanup, touches neither loop nor processor. (stream.c) */
void stream_free_abandoned(extproc_request *req);

/* ---- handoff.c: who answers the phase, and when --------------------------------------------- */

/* Runs the phase's callback `fn` (not NULL): on the loop, or, for a blocking processor with a
 * pool, on a pool thread; then replies now or once the answer is handed back. (handoff.c) */
void handoff_run(extproc_request *req, extproc_phase_fn fn);

/* ---- intake.c: from wire bytes to the message view ----------------------------------------- */

/* Decodes `data` into *out: directly when it can (decode.h), else through protobuf-c after
 * refusing hostile shapes. Headers go to the message arena; a body chunk decoded directly stays
 * in `data`. Returns false after failing the stream with the reason. (intake.c) */
bool intake_decode(extproc_request *req, const uint8_t *data, size_t len, decoded_request *out);

/* Points req->msg at the decoded message's phase data and keeps what outlives it (request facts,
 * protocol_config, attributes, metadata). Returns false on out-of-memory. (intake.c) */
bool intake_load(extproc_request *req, const decoded_request *d);

/* Copies a borrowed body chunk into the message arena, for a phase answered after its input
 * bytes are gone (deferred, or on the blocking pool). Returns false on out-of-memory, the body
 * left as it was. (intake.c) */
bool intake_own_body(extproc_request *req);

/* Keeps a copy of a message that must wait its turn. Returns false on out-of-memory. */
bool intake_enqueue(extproc_request *req, const uint8_t *data, size_t len);

/* Processes waiting messages until one defers or none is left. (intake.c) */
void intake_drain(extproc_request *req);

/* Frees waiting messages. (intake.c) */
void intake_discard(extproc_request *req);

/* ---- send.c: sending what a callback recorded ---------------------------------------------- */

/* Sends the phase's reply, or the streamed replies of a FULL_DUPLEX_STREAMED body or a streamed
 * immediate response. (send.c) */
void send_replies(extproc_request *req);

/* Sends one built reply (NULL means out-of-memory: the stream fails). (send.c) */
void send_reply(extproc_request *req, ProtobufCMessage *reply);

/* Appends a piece (data copied) to the reply being built. Returns 0 or EXTPROC_ENOMEM. */
int send_add_piece(extproc_request *req, const void *data, size_t len, bool end_of_stream);

/* True when a piece with end_of_stream is already in the reply being built. */
bool send_pieces_ended(const extproc_request *req);

/* Sends a reply outside the phase's own reply (override_message_timeout). Returns 0 or a
 * negative extproc_error. (send.c) */
int send_extra(extproc_request *req, ProtobufCMessage *reply);

/* ---- reply.c: building ProcessingResponses in the message arena ---------------------------- */

/* The ProcessingResponse for the current message from what the callback recorded. NULL on
 * out-of-memory. */
ProtobufCMessage *reply_build(extproc_request *req);

/* An ImmediateResponse with just a status and the chain header, built in `a` (not the message
 * arena, which a thread that missed its deadline may still be writing). */
ProtobufCMessage *reply_build_deadline(arena *a, const extproc_processor *proc,
                                       uint32_t http_status);

/* An ImmediateResponse with just a status, for the error policy. */
ProtobufCMessage *reply_build_error(extproc_request *req, uint32_t http_status);

/* A FULL_DUPLEX_STREAMED body reply carrying one piece as a streamed_response. */
ProtobufCMessage *reply_build_streamed_body(extproc_request *req, const streamed_piece *piece);

/* The headers part of a streamed immediate response, from immediate_status and
 * immediate_headers. */
ProtobufCMessage *reply_build_streamed_immediate_headers(extproc_request *req, bool end_of_stream);

/* A body piece of a streamed immediate response. */
ProtobufCMessage *reply_build_streamed_immediate_body(extproc_request *req,
                                                      const streamed_piece *piece);

/* A reply carrying only override_message_timeout. */
ProtobufCMessage *reply_build_timeout_override(extproc_request *req, uint32_t ms);

#endif
