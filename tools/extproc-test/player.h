/* The player: one scenario's exchange as Envoy's ext_proc filter plays it. play.c drives the
 * stream (sending, awaiting replies, failures, faults, the whole exchange); phases.c plays the
 * phases of one direction and applies their replies as Envoy does. */
#ifndef EXTPROC_TEST_PLAYER_H
#define EXTPROC_TEST_PLAYER_H

#include "base/arena.h"
#include "exchange.h"
#include "h2_client.h"

typedef struct player {
  const scenario *s;
  outcome *o;
  h2_client *c;
  int32_t id;
  arena a;                      /* messages being built; reset after each send */
  size_t next_reply;            /* the index of the next unread message on the stream */
  size_t sent;                  /* messages sent */
  extproc_processing_mode mode; /* in effect: the filter's, then granted overrides */
  uint32_t timeout_ms;          /* message_timeout, or a granted override_message_timeout */
  bool bypass;                  /* the processor failed under failure_mode_allow: data flows on
                                   unprocessed */
  bool ended;                   /* Envoy has answered the client itself */
  bool fault_fired;             /* the fault ended the exchange */
  direction *cur;               /* the direction being played */
  const char *bad_reply;        /* why the last reply was refused (BAD_REPLY) */
  bool bad_mutation;            /* ... as a header mutation Envoy refuses, not a gRPC error */
} player;

/* What awaiting a reply gave. */
typedef enum wait_result { GOT_REPLY, TIMED_OUT, STREAM_ENDED, BAD_REPLY } wait_result;

/* ---- play.c ------------------------------------------------------------------------------ */

/* "request_headers" ... "response_trailers". */
const char *phase_name(extproc_phase p);

/* The ProcessingResponse case that answers `phase`. */
int answer_case(extproc_phase p);

/* Send one message of `phase` (false: the exchange cannot go on; why is judged). */
bool send_headers(player *p, extproc_phase phase, const pair_list *h, bool eos);
bool send_chunk(player *p, extproc_phase phase, const byte_buf *b, bool eos);

/* Waits for the next reply, within the message timeout; `*out` is freed by the caller. */
wait_result await_reply(player *p, processing_response **out);

/* Awaits the reply to `phase`: returns it when it is the one Envoy waits for (or an immediate
 * response, or of case `also`, 0 for none); NULL, with the outcome updated, otherwise. */
processing_response *expect_reply(player *p, extproc_phase phase, int also);

/* Envoy gives up on the exchange: whether it can still answer the client itself (the current
 * direction's headers may already be on their way). */
bool local_reply_possible(player *p);

/* Envoy answers the client itself with `status`, if it still can. */
void local_reply(player *p, int status);

/* The processor failed at `phase`: failure_mode_allow, or Envoy answers `status`. */
void processor_failed(player *p, extproc_phase phase, int status);

/* ---- phases.c ---------------------------------------------------------------------------- */

/* One direction: headers, body, trailers, as the mode in effect calls for, into `d`. */
void play_direction(player *p, direction *d, const http_message *msg);

#endif
