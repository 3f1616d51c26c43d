/* Sending what a callback recorded: the phase's one reply, or the streamed replies of a
 * FULL_DUPLEX_STREAMED body or a streamed immediate response, with content-length kept
 * consistent with any body change. */
#include <stdio.h>
#include <string.h>

#include "engine/request.h"

static const streamed_piece *piece_of(const queue_link *l) {
  return LIST_ITEM(l, streamed_piece, link);
}

bool send_pieces_ended(const extproc_request *req) {
  for (const queue_link *l = req->reply.pieces.head; l; l = l->next)
    if (piece_of(l)->end_of_stream) return true;
  return false;
}

void send_reply(extproc_request *req, ProtobufCMessage *reply) {
  if (!reply) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  if (req->io && req->sink->send(req->io, reply) != 0) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "could not queue the reply");
    return;
  }
  if (req->reply.immediate)
    req->ended = true; /* Envoy stops processing after an immediate response */
}

/* Appends a piece whose bytes already live in the message arena (no copy). */
static int append_piece(extproc_request *req, const uint8_t *data, size_t len, bool end_of_stream) {
  streamed_piece *p = arena_alloc(&req->msg_arena, sizeof(*p));
  if (!p) return EXTPROC_ENOMEM;
  *p = (streamed_piece){.data = data, .len = len, .end_of_stream = end_of_stream};
  queue_push(&req->reply.pieces, &p->link);
  return 0;
}

int send_add_piece(extproc_request *req, const void *data, size_t len, bool end_of_stream) {
  uint8_t *copy = arena_alloc(&req->msg_arena, len ? len : 1);
  if (!copy) return EXTPROC_ENOMEM;
  if (len) memcpy(copy, data, len);
  return append_piece(req, copy, len, end_of_stream);
}

int send_extra(extproc_request *req, ProtobufCMessage *reply) {
  if (!reply) return EXTPROC_ENOMEM;
  return req->io ? req->sink->send(req->io, reply) : 0;
}

/* FULL_DUPLEX_STREAMED: this chunk's replies are the pieces the callback sent, else the chunk
 * itself as replaced, cleared (nothing) or untouched; and the body's last reply always carries
 * end_of_stream, even when the last chunk is empty or was cleared. */
static void send_duplex_body(extproc_request *req) {
  const int dir = direction_of(req->msg.phase);
  if (queue_empty(&req->reply.pieces) && req->reply.body_op != BODY_CLEAR &&
      !req->duplex_body_ended[dir]) {
    const bool replaced = req->reply.body_op == BODY_REPLACE;
    /* The chunk and a replacement are already in the message arena: no copy. */
    if (append_piece(req, replaced ? req->reply.body_data : req->msg.body,
                     replaced ? req->reply.body_data_len : req->msg.body_len,
                     req->msg.end_of_stream)) {
      stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
      return;
    }
  }
  const bool ended = req->duplex_body_ended[dir] || send_pieces_ended(req);
  if (req->msg.end_of_stream && !ended && append_piece(req, (const uint8_t *)"", 0, true)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  for (const queue_link *l = req->reply.pieces.head; l && !req->ended; l = l->next) {
    const streamed_piece *p = piece_of(l);
    send_reply(req, reply_build_streamed_body(req, p));
    if (p->end_of_stream) req->duplex_body_ended[dir] = true;
  }
}

/* A streamed immediate response: its headers (when this callback started it), then the pieces
 * sent so far; the exchange is over once one carries end_of_stream. */
static void send_streamed_immediate(extproc_request *req) {
  if (req->streamed_immediate == STREAMED_IMMEDIATE_STARTING) {
    const bool headers_only = req->streamed_immediate_headers_end;
    send_reply(req, reply_build_streamed_immediate_headers(req, headers_only));
    req->streamed_immediate = headers_only ? STREAMED_IMMEDIATE_ENDED : STREAMED_IMMEDIATE_OPEN;
  }
  for (const queue_link *l = req->reply.pieces.head; l && !req->ended; l = l->next) {
    const streamed_piece *p = piece_of(l);
    send_reply(req, reply_build_streamed_immediate_body(req, p));
    if (p->end_of_stream) req->streamed_immediate = STREAMED_IMMEDIATE_ENDED;
  }
  if (req->streamed_immediate == STREAMED_IMMEDIATE_ENDED) req->ended = true;
}

/* True when the callback wrote content-length itself (its write wins over ours). */
static bool callback_wrote_content_length(const extproc_request *req) {
  for (const queue_link *l = req->reply.edits.items.head; l; l = l->next)
    if (strcmp(header_edit_of(l)->name, "content-length") == 0) return true;
  return false;
}

/* A changed body must leave no content-length that no longer matches it. Envoy holds a
 * direction's headers while it waits for the reply to the first body message when that message
 * is the whole body (BUFFERED, or any mode when the whole body arrived before the headers
 * reply), and answers 500 if a content-length it still has differs from the new body's length.
 * Whether it still has one depends on the mode Envoy really uses, which a refused or granted
 * mode_override leaves unknown (intake.c). So a first body message whose length changes gets
 * both edits: remove content-length, then set it to the new length. Envoy applies removals
 * first and skips a content-length set in the modes where it drops the header itself, so the
 * result is the right length where Envoy keeps the header and no header where it does not.
 * Later messages go on without their headers, and a content-length the callback wrote itself
 * wins. */
static bool fix_content_length(extproc_request *req) {
  const int dir = direction_of(req->msg.phase);
  if (!is_body_phase(req->msg.phase) || req->reply.immediate || req->reply.body_op == BODY_KEEP ||
      !req->content_length_held[dir] || req->body_messages[dir] != 1)
    return true;
  const size_t len = req->reply.body_op == BODY_CLEAR ? 0 : req->reply.body_data_len;
  if (len == req->msg.body_len) return true; /* still true */
  if (callback_wrote_content_length(req)) return true;
  char value[24];
  snprintf(value, sizeof(value), "%zu", len);
  return header_edits_add(&req->msg_arena, &req->reply.edits, HEADER_REMOVE, "content-length",
                          NULL) == 0 &&
         header_edits_add(&req->msg_arena, &req->reply.edits, HEADER_SET, "content-length",
                          value) == 0;
}

/* A headers reply whose mode_override asks for a body mode in which Envoy drops content-length
 * comes too late for that: Envoy decided when it sent these headers, with the mode in effect
 * then. If it kept the header and grants the override, it forwards it with a body the processor
 * then changes chunk by chunk, and the next hop reads a wrong length. So the reply removes
 * content-length itself, which is right whether Envoy grants the override or not. */
static bool drop_content_length_for_override(extproc_request *req) {
  const int dir = direction_of(req->msg.phase);
  const extproc_body_mode asked = dir ? req->reply.mode_override.response_body_mode
                                      : req->reply.mode_override.request_body_mode;
  if (!is_headers_phase(req->msg.phase) || req->reply.immediate || !req->reply.has_mode_override ||
      !drops_content_length(asked) || !req->content_length_held[dir] ||
      req->reply.body_op != BODY_KEEP || callback_wrote_content_length(req))
    return true;
  req->content_length_held[dir] = false;
  return header_edits_add(&req->msg_arena, &req->reply.edits, HEADER_REMOVE, "content-length",
                          NULL) == 0;
}

/* Sends what the callback recorded: the phase's one reply, or the streamed replies of a
 * FULL_DUPLEX_STREAMED body or a streamed immediate response. */
void send_replies(extproc_request *req) {
  if (req->streamed_immediate != STREAMED_IMMEDIATE_NONE) {
    send_streamed_immediate(req);
    return;
  }
  if (is_body_phase(req->msg.phase) && !req->reply.immediate &&
      req->body_mode[direction_of(req->msg.phase)] == EXTPROC_BODY_FULL_DUPLEX_STREAMED) {
    send_duplex_body(req);
    return;
  }
  if (!fix_content_length(req) || !drop_content_length_for_override(req)) {
    stream_fail(req, EXTPROC_GRPC_RESOURCE_EXHAUSTED, "out of memory building the reply");
    return;
  }
  send_reply(req, reply_build(req));
  if (!is_body_phase(req->msg.phase) && req->reply.body_op != BODY_KEEP)
    req->body_replaced[direction_of(req->msg.phase)] = true;
  /* What Envoy sends next follows the new mode, unless Envoy surely refuses it: it grants no
   * override at all to a filter with a FULL_DUPLEX_STREAMED body mode. */
  const bool duplex_filter = req->protocol.request_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED ||
                             req->protocol.response_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
  if (req->reply.has_mode_override && !duplex_filter) {
    req->body_mode[0] = req->reply.mode_override.request_body_mode;
    req->body_mode[1] = req->reply.mode_override.response_body_mode;
  }
}
