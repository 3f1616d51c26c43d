/* Plays one scenario as Envoy 1.40's ext_proc filter would: the phases its processing mode
 * calls for, each reply awaited under message_timeout, judged and applied; faults on demand.
 * One scenario, one connection, one gRPC stream. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <time.h>

#include "base/arena.h"
#include "engine/wire_check.h"
#include "exchange.h"
#include "h2_client.h"
#include "testing/envoy_request.h"

#define PROCESS_PATH "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

enum {
  /* A reply larger than this is refused (judged grpc_error) rather than held in memory. */
  MAX_REPLY_BYTES = 64 << 20,
  /* Replies nested deeper, or holding more sub-messages, are refused before protobuf-c unpacks
   * them (it would recurse without limit). No real reply comes near. */
  MAX_REPLY_DEPTH = 64,
  MAX_REPLY_SUBMESSAGES = 100000,
};

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
} player;

/* What awaiting a reply gave. */
typedef enum wait_result { GOT_REPLY, TIMED_OUT, STREAM_ENDED, BAD_REPLY } wait_result;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *phase_name(extproc_phase p) {
  static const char *const names[] = {"request_headers",  "request_body",  "request_trailers",
                                      "response_headers", "response_body", "response_trailers"};
  return (unsigned)p < EXTPROC_PHASE_COUNT ? names[p] : "?";
}

/* The ProcessingResponse case that answers `phase`. */
static int answer_case(extproc_phase p) {
  static const int cases[] = {
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY,
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS};
  return cases[p];
}

/* Polls the connection for up to `ms` (the pauses and silences of a scenario). */
static void idle(player *p, uint32_t ms) {
  for (const int64_t until = now_ms() + ms; now_ms() < until;)
    if (h2_client_poll(p->c, (int)(until - now_ms())) < 0) break;
}

/* ---- Sending --------------------------------------------------------------------------- */

static const char **flatten(arena *a, const pair_list *l) {
  const char **pairs = arena_alloc(a, (2 * l->count + 1) * sizeof(*pairs));
  for (size_t i = 0; pairs && i < l->count; i++) {
    pairs[2 * i] = l->names[i];
    pairs[2 * i + 1] = l->values[i];
  }
  return pairs;
}

/* Whether the fault fires after this message: then the exchange ends here. */
static bool fault_after_send(player *p) {
  const scenario *s = p->s;
  if (s->fault == FAULT_SILENT && p->sent == 1) idle(p, (uint32_t)s->fault_arg);
  if (s->fault != FAULT_CANCEL_AFTER && s->fault != FAULT_RESET_CONNECTION_AFTER) return false;
  if (p->sent != s->fault_arg) return false;
  h2_client_flush(p->c);
  if (s->fault == FAULT_CANCEL_AFTER)
    h2_client_reset(p->c, p->id, 8 /* CANCEL */);
  else
    h2_client_close_socket(p->c, true);
  p->fault_fired = true;
  return true;
}

static void stream_ended(player *p, extproc_phase phase);

/* Sends `m`, a message of `phase`, adding what Envoy adds: protocol_config on the stream's
 * first message, the direction's attributes on its first, metadata_context and
 * observability_mode on all. Returns false when the exchange cannot go on. */
static bool send_message(player *p, extproc_phase phase, envoy_request *m) {
  const scenario *s = p->s;
  if (p->sent > 0 && s->pause_ms) idle(p, s->pause_ms);
  bool ok = m != NULL;
  if (ok && p->sent == 0)
    ok = envoy_request_set_protocol_config(&p->a, m, s->mode.request_body_mode,
                                           s->mode.response_body_mode);
  const pair_list *attrs =
      phase < EXTPROC_RESPONSE_HEADERS ? &s->request_attributes : &s->response_attributes;
  if (ok && attrs->count && p->cur && !p->cur->attributes_sent) {
    ok = envoy_request_set_attributes(&p->a, m, (const char *const *)attrs->names,
                                      (const char *const *)attrs->values, attrs->count);
    p->cur->attributes_sent = true;
  }
  if (ok && s->metadata_keys.count) {
    /* metadata_keys pairs (namespace, key); metadata_values pairs (key, value). */
    ok = envoy_request_set_metadata(&p->a, m, (const char *const *)s->metadata_keys.names,
                                    (const char *const *)s->metadata_keys.values,
                                    (const char *const *)s->metadata_values.values,
                                    s->metadata_keys.count);
  }
  if (ok) m->observability_mode = s->observability_mode;
  size_t len = 0;
  const uint8_t *bytes = ok ? envoy_request_encode(&p->a, m, &len) : NULL;
  const h2_client_stream *st = h2_client_get_stream(p->c, p->id);
  /* A stream the server already ended takes nothing more: Envoy learns of the end instead. */
  const bool open = st && !st->closed && !st->trailers_received && !st->reset_received;
  ok = bytes && open && h2_client_send_message(p->c, p->id, bytes, len, 0) == 0;
  arena_reset(&p->a, 0);
  if (!ok) {
    h2_client_poll(p->c, 0);
    stream_ended(p, phase);
    return false;
  }
  p->sent++;
  return !fault_after_send(p);
}

static bool send_headers(player *p, extproc_phase phase, const pair_list *h, bool eos) {
  return send_message(p, phase,
                      envoy_request_headers(&p->a, phase, flatten(&p->a, h), h->count, eos));
}

static bool send_chunk(player *p, extproc_phase phase, const byte_buf *b, bool eos) {
  return send_message(p, phase, envoy_request_body(&p->a, phase, b->data, b->len, eos));
}

/* ---- Receiving ------------------------------------------------------------------------- */

/* Waits for the next reply, within the message timeout (an override_message_timeout Envoy
 * would grant restarts it). `*out` is unpacked; the caller frees it. */
static wait_result await_reply(player *p, processing_response **out) {
  int64_t deadline = now_ms() + p->timeout_ms;
  for (;;) {
    const h2_client_stream *st = h2_client_get_stream(p->c, p->id);
    if (st && p->next_reply < st->message_count) {
      const h2_client_msg *msg = &st->messages[p->next_reply++];
      const wire_check_result shape =
          wire_check(&envoy__service__ext_proc__v3__processing_response__descriptor, msg->data,
                     msg->len, MAX_REPLY_DEPTH, MAX_REPLY_SUBMESSAGES);
      if (shape != WIRE_OK) {
        p->bad_reply = shape == WIRE_MALFORMED ? "the reply is not a ProcessingResponse"
                                               : "the reply is nested too deep, or holds too "
                                                 "many sub-messages, to be unpacked safely";
        return BAD_REPLY;
      }
      processing_response *r =
          envoy__service__ext_proc__v3__processing_response__unpack(NULL, msg->len, msg->data);
      if (!r) {
        p->bad_reply = "the reply is not a ProcessingResponse";
        return BAD_REPLY;
      }
      if (r->response_case ==
              ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE__NOT_SET &&
          r->override_message_timeout) {
        const int64_t ms = r->override_message_timeout->seconds * 1000 +
                           r->override_message_timeout->nanos / 1000000;
        if (p->s->max_message_timeout_ms && ms > 0 && ms <= p->s->max_message_timeout_ms) {
          p->timeout_ms = (uint32_t)ms;
          deadline = now_ms() + ms;
        }
        protobuf_c_message_free_unpacked(&r->base, NULL);
        continue;
      }
      *out = r;
      return GOT_REPLY;
    }
    if (st && st->framing_error) {
      p->bad_reply = "the reply's gRPC framing is wrong (the compressed flag, which was never "
                     "negotiated, or a message over 64 MiB)";
      return BAD_REPLY;
    }
    if (!st || st->closed || st->trailers_received || st->reset_received) return STREAM_ENDED;
    const int64_t left = deadline - now_ms();
    if (left <= 0) return TIMED_OUT;
    if (h2_client_poll(p->c, (int)left) < 0) {
      st = h2_client_get_stream(p->c, p->id);
      if (st && p->next_reply < st->message_count) continue;
      return STREAM_ENDED;
    }
  }
}

/* Whether Envoy 1.40 runs a message timer for `phase`: not in a direction whose body mode is
 * FULL_DUPLEX_STREAMED, where a missing reply leaves the request hanging. */
static bool timed(const player *p, extproc_phase phase) {
  const bool request = phase < EXTPROC_RESPONSE_HEADERS;
  return (request ? p->mode.request_body_mode : p->mode.response_body_mode) !=
         EXTPROC_BODY_FULL_DUPLEX_STREAMED;
}

/* failure_mode_allow no longer helps once a FULL_DUPLEX_STREAMED body has started. */
static bool failure_allowed(const player *p, extproc_phase phase) {
  const bool duplex_body =
      !timed(p, phase) && phase != EXTPROC_REQUEST_HEADERS && phase != EXTPROC_RESPONSE_HEADERS;
  return p->s->failure_mode_allow && !duplex_body;
}

static const char *failure_outcome(const player *p, extproc_phase phase, const char *status) {
  return failure_allowed(p, phase) ? "pass the request on unprocessed (failure_mode_allow)"
                                   : status;
}

/* What the client and upstream already have when Envoy gives up on the exchange itself. Once
 * a streaming direction's headers went on, the upstream has them (and the body so far); if
 * they were the response's, the client's response has started and Envoy can only cut it
 * short. Returns whether Envoy can still answer the client. */
static bool local_reply_possible(player *p) {
  direction *d = p->cur;
  p->ended = true;
  if (!d || !d->headers_forwarded) return true;
  side_outcome *side = d->is_request ? &p->o->upstream : &p->o->client;
  side->reached = true;
  pair_list_clear(&side->headers);
  for (size_t i = 0; i < d->headers.count; i++) {
    if (!d->is_request && strcmp(d->headers.names[i], ":status") == 0)
      side->status = atoi(d->headers.values[i]);
    else
      pair_list_add(&side->headers, d->headers.names[i], d->headers.values[i]);
  }
  byte_buf_free(&side->body);
  byte_buf_append(&side->body, d->forwarded.data, d->forwarded.len);
  return d->is_request;
}

/* Envoy answers the client itself with `status` (no headers, no body), if it still can. */
static void local_reply(player *p, int status) {
  if (!local_reply_possible(p)) return;
  p->o->client.reached = true;
  p->o->client.status = status;
  pair_list_clear(&p->o->client.headers);
  byte_buf_free(&p->o->client.body);
}

/* The processor failed while Envoy waited on `phase`: with failure_mode_allow (where it
 * applies) the request goes on unprocessed; otherwise Envoy answers `status` itself. */
static void processor_failed(player *p, extproc_phase phase, int status) {
  if (failure_allowed(p, phase)) {
    p->bypass = true;
    return;
  }
  local_reply(p, status);
}

/* No reply in a direction without a message timer: Envoy keeps the request open until the
 * client or a connection-manager timeout gives up; nothing reaches the client. */
static void request_hangs(player *p) {
  /* The upstream has what went on; a client still waiting for its response has none. */
  if (local_reply_possible(p)) p->o->client.reached = false;
}

/* The stream ended (or was reset) while Envoy waited on `phase`, or still had `phase` to send. */
static void stream_ended(player *p, extproc_phase phase) {
  const char *name = phase_name(phase);
  const h2_client_stream *st = h2_client_get_stream(p->c, p->id);
  /* Only trailers end a gRPC stream with a status; a grpc-status elsewhere means nothing. */
  const int status = st && st->trailers_received ? st->grpc_status : -1;
  if (status == 0) {
    /* A clean close: Envoy 1.40 stops processing and lets the exchange go on. */
    outcome_judge(p->o, "stream_closed_early",
                  "%s: the stream ended with grpc-status 0 before the exchange was complete: "
                  "Envoy would pass the rest on unprocessed",
                  name);
    p->bypass = true;
    return;
  }
  if (status > 0)
    outcome_judge(p->o, "grpc_error",
                  "%s: the stream ended with grpc-status %d (%s) instead of a reply: Envoy "
                  "would %s",
                  name, status, st->grpc_message ? st->grpc_message : "",
                  failure_outcome(p, phase, "answer 500"));
  else if (status == -2)
    outcome_judge(p->o, "grpc_error",
                  "%s: the stream ended with a grpc-status that is not a number: Envoy would %s",
                  name, failure_outcome(p, phase, "answer 500"));
  else
    outcome_judge(p->o, "grpc_error",
                  "%s: the stream was reset or the connection lost: Envoy would %s", name,
                  failure_outcome(p, phase, "answer 500"));
  processor_failed(p, phase, 500);
}

/* Awaits the reply to `phase` and judges its kind. Returns it when it is the one Envoy waits
 * for (or an immediate response, or a reply of case `also`, 0 for none), NULL when the exchange
 * cannot go on as planned. */
static processing_response *expect_reply(player *p, extproc_phase phase, int also) {
  processing_response *r = NULL;
  const char *name = phase_name(phase);
  switch (await_reply(p, &r)) {
  case GOT_REPLY: break;
  case TIMED_OUT:
    if (!timed(p, phase)) {
      outcome_judge(p->o, "no_reply",
                    "%s: no reply within %u ms: Envoy 1.40 sets no message timer in "
                    "FULL_DUPLEX_STREAMED, so the request would hang",
                    name, p->timeout_ms);
      request_hangs(p);
      return NULL;
    }
    outcome_judge(p->o, "message_timeout",
                  "%s: no reply within message_timeout (%u ms): Envoy would %s", name,
                  p->timeout_ms, failure_outcome(p, phase, "answer 504"));
    processor_failed(p, phase, 504);
    return NULL;
  case BAD_REPLY:
    outcome_judge(p->o, "grpc_error", "%s: %s: Envoy would %s", name, p->bad_reply,
                  failure_outcome(p, phase, "answer 500"));
    processor_failed(p, phase, 500);
    return NULL;
  case STREAM_ENDED: stream_ended(p, phase); return NULL;
  }
  envoy_merge_dynamic_metadata(p->o, r);
  if ((int)r->response_case == answer_case(phase) || (also && (int)r->response_case == also) ||
      r->response_case ==
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE ||
      r->response_case ==
          ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_STREAMED_IMMEDIATE_RESPONSE)
    return r;
  outcome_judge(p->o, "spurious_message",
                "%s: the reply is a %s response while Envoy waits for %s: Envoy would %s", name,
                envoy_response_case_name(r->response_case), name,
                failure_outcome(p, phase, "answer 500"));
  protobuf_c_message_free_unpacked(&r->base, NULL);
  processor_failed(p, phase, 500);
  return NULL;
}

/* ---- Applying replies ------------------------------------------------------------------ */

static void copy_list(pair_list *to, const pair_list *from) {
  pair_list_clear(to);
  pair_list_copy(to, from);
}

/* An immediate_response: Envoy answers the client with it and stops. */
static void apply_immediate(player *p, const processing_response *r) {
  const Envoy__Service__ExtProc__V3__ImmediateResponse *ir = r->immediate_response;
  side_outcome *client = &p->o->client;
  if (!local_reply_possible(p)) return;
  client->reached = true;
  client->status = ir->status && ir->status->code ? (int)ir->status->code : 200;
  pair_list_clear(&client->headers);
  byte_buf_free(&client->body);
  byte_buf_append(&client->body, ir->body.data, ir->body.len);
  if (!envoy_apply_header_mutation(p->o, "immediate_response", ir->headers, &client->headers,
                                   false))
    client->status = 500;
}

/* A streamed_immediate_response: headers first, then body pieces until end_of_stream. */
static void apply_streamed_immediate(player *p, processing_response *r) {
  side_outcome *client = &p->o->client;
  if (!local_reply_possible(p)) {
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return;
  }
  client->reached = true;
  client->status = 200;
  pair_list_clear(&client->headers);
  byte_buf_free(&client->body);
  byte_buf_append(&client->body, "", 0);
  for (;;) {
    const Envoy__Service__ExtProc__V3__StreamedImmediateResponse *sr =
        r->streamed_immediate_response;
    bool done = false;
    if (sr &&
        sr->response_case ==
            ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_HEADERS_RESPONSE) {
      const Envoy__Config__Core__V3__HeaderMap *hm =
          sr->headers_response ? sr->headers_response->headers : NULL;
      for (size_t i = 0; hm && i < hm->n_headers; i++) {
        char *v =
            strndup((const char *)hm->headers[i]->raw_value.data, hm->headers[i]->raw_value.len);
        if (!v) continue;
        if (strcmp(hm->headers[i]->key, ":status") == 0)
          client->status = atoi(v);
        else
          pair_list_add(&client->headers, hm->headers[i]->key, v);
        free(v);
      }
      done = sr->headers_response && sr->headers_response->end_of_stream;
    } else if (
        sr &&
        sr->response_case ==
            ENVOY__SERVICE__EXT_PROC__V3__STREAMED_IMMEDIATE_RESPONSE__RESPONSE_BODY_RESPONSE &&
        sr->body_response) {
      byte_buf_append(&client->body, sr->body_response->body.data, sr->body_response->body.len);
      done = sr->body_response->end_of_stream;
    } else {
      done = true; /* trailers end it */
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (done) return;
    if (await_reply(p, &r) != GOT_REPLY) {
      outcome_judge(p->o, "missing_end_of_stream",
                    "streamed_immediate_response: the body never ended: the client would wait "
                    "until message_timeout");
      client->status = 504;
      return;
    }
  }
}

/* Handles an immediate response of either kind; true if `r` was one (and is consumed). */
static bool took_immediate(player *p, processing_response *r) {
  if (r->response_case ==
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_IMMEDIATE_RESPONSE) {
    apply_immediate(p, r);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return true;
  }
  if (r->response_case ==
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_STREAMED_IMMEDIATE_RESPONSE) {
    const extproc_body_mode bm = p->s->mode.request_body_mode;
    if (bm != EXTPROC_BODY_NONE && bm != EXTPROC_BODY_FULL_DUPLEX_STREAMED) {
      protobuf_c_message_free_unpacked(&r->base, NULL);
      outcome_judge(p->o, "spurious_message",
                    "a streamed_immediate_response with request body mode %s: Envoy takes one "
                    "only with NONE or FULL_DUPLEX_STREAMED and would answer 500",
                    body_mode_name(bm));
      local_reply(p, 500);
      return true;
    }
    apply_streamed_immediate(p, r);
    return true;
  }
  return false;
}

/* The CommonResponse inside a phase reply. */
static const common_response *common_of(const processing_response *r) {
  switch (r->response_case) {
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_HEADERS:
    return r->request_headers ? r->request_headers->response : NULL;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_HEADERS:
    return r->response_headers ? r->response_headers->response : NULL;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_BODY:
    return r->request_body ? r->request_body->response : NULL;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_BODY:
    return r->response_body ? r->response_body->response : NULL;
  case ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS:
    return NULL; /* TrailersResponse has only a header_mutation */
  default: return NULL;
  }
}

static const header_mutation *trailer_mutation_of(const processing_response *r) {
  if (r->response_case ==
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_REQUEST_TRAILERS)
    return r->request_trailers ? r->request_trailers->header_mutation : NULL;
  if (r->response_case ==
      ENVOY__SERVICE__EXT_PROC__V3__PROCESSING_RESPONSE__RESPONSE_RESPONSE_TRAILERS)
    return r->response_trailers ? r->response_trailers->header_mutation : NULL;
  return NULL;
}

/* The body mode and header/trailer modes in effect for a direction. */
static extproc_body_mode body_mode(const player *p, bool request) {
  return request ? p->mode.request_body_mode : p->mode.response_body_mode;
}

static bool is_streaming(extproc_body_mode m) {
  return m == EXTPROC_BODY_STREAMED || m == EXTPROC_BODY_BUFFERED_PARTIAL ||
         m == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
}

/* A mode_override in a headers reply, granted as Envoy grants it (docs/protocol.md); the
 * allowed_override_modes list is not modelled: a filter with one is not a scenario setting. */
static void take_mode_override(player *p, const processing_response *r, extproc_phase phase) {
  if (!r->mode_override) return;
  envoy_record_mode_override(p->o, r);
  const bool duplex = p->s->mode.request_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED ||
                      p->s->mode.response_body_mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
  if (!p->s->allow_mode_override || duplex) {
    outcome_judge(p->o, "mode_override_refused", "%s: mode_override ignored: the filter has %s",
                  phase_name(phase),
                  duplex ? "a FULL_DUPLEX_STREAMED body mode" : "allow_mode_override false");
    return;
  }
  const Envoy__Extensions__Filters__Http__ExtProc__V3__ProcessingMode *m = r->mode_override;
  /* DEFAULT header and trailer modes keep what is in effect; body modes are taken as sent. */
  if (m->response_header_mode)
    p->mode.response_header_mode = (extproc_header_mode)m->response_header_mode;
  if (m->request_trailer_mode)
    p->mode.request_trailer_mode = (extproc_header_mode)m->request_trailer_mode;
  if (m->response_trailer_mode)
    p->mode.response_trailer_mode = (extproc_header_mode)m->response_trailer_mode;
  if (phase == EXTPROC_REQUEST_HEADERS)
    p->mode.request_body_mode = (extproc_body_mode)m->request_body_mode;
  p->mode.response_body_mode = (extproc_body_mode)m->response_body_mode;
}

/* Applies a headers-phase reply to direction `d`. */
static void apply_headers_reply(player *p, direction *d, extproc_phase phase,
                                const processing_response *r, bool *skip_rest) {
  const common_response *cr = common_of(r);
  take_mode_override(p, r, phase);
  if (!cr) return;
  if (!envoy_apply_header_mutation(p->o, phase_name(phase), cr->header_mutation, &d->headers,
                                   d->content_length_dropped)) {
    processor_failed(p, phase, 500);
    return;
  }
  if (cr->status ==
      ENVOY__SERVICE__EXT_PROC__V3__COMMON_RESPONSE__RESPONSE_STATUS__CONTINUE_AND_REPLACE) {
    /* The body is replaced whole; no body or trailer message follows for this direction. */
    byte_buf_free(&d->body);
    byte_buf_append(&d->body, "", 0);
    const Envoy__Service__ExtProc__V3__BodyMutation *bm = cr->body_mutation;
    if (bm && bm->mutation_case == ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY)
      byte_buf_append(&d->body, bm->body.data, bm->body.len);
    d->body_changed = true;
    *skip_rest = true;
    /* Envoy sends the new body without a length: its content-length no longer holds. */
    pair_list_remove(&d->headers, "content-length");
  }
}

/* Applies one body reply in a non-duplex mode to `piece` (one chunk, or the whole body). */
static void apply_body_reply(player *p, direction *d, extproc_phase phase, extproc_body_mode mode,
                             const processing_response *r, byte_buf *piece) {
  const common_response *cr = common_of(r);
  if (!cr) return;
  /* Envoy still holds the headers only while it buffers the body. */
  if (cr->header_mutation &&
      (mode == EXTPROC_BODY_BUFFERED || mode == EXTPROC_BODY_BUFFERED_PARTIAL) &&
      !envoy_apply_header_mutation(p->o, phase_name(phase), cr->header_mutation, &d->headers,
                                   d->content_length_dropped)) {
    processor_failed(p, phase, 500);
    return;
  }
  const Envoy__Service__ExtProc__V3__BodyMutation *bm = cr->body_mutation;
  if (!bm) return;
  if (bm->mutation_case == ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY) {
    piece->len = 0;
    byte_buf_append(piece, bm->body.data, bm->body.len);
    d->body_changed = true;
  } else if (bm->mutation_case ==
                 ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_CLEAR_BODY &&
             bm->clear_body) {
    piece->len = 0;
    byte_buf_append(piece, "", 0);
    d->body_changed = true;
  }
}

/* In BUFFERED mode with headers sent, Envoy keeps content-length: a body whose length changed
 * under an unchanged content-length fails the request. */
static void check_content_length(player *p, direction *d, extproc_phase body_phase) {
  const char *cl = pair_list_get(&d->headers, "content-length");
  if (!cl || !d->body_changed || d->content_length_dropped) return;
  char want[32];
  snprintf(want, sizeof(want), "%zu", d->body.len);
  if (strcmp(cl, want) == 0) return;
  outcome_judge(p->o, "stale_content_length",
                "%s: the body is now %zu bytes but content-length still says %s: Envoy would "
                "answer 500",
                phase_name(body_phase), d->body.len, cl);
  p->ended = true;
  p->o->client.reached = true;
  p->o->client.status = 500;
}

/* Takes a FULL_DUPLEX_STREAMED body reply: its streamed piece is appended to `d`. Returns 1 if
 * it ended the body, 0 if not, -1 if it was not a streamed piece (Envoy calls a replaced or
 * cleared body spurious in this mode). */
static int take_duplex_piece(player *p, direction *d, extproc_phase phase,
                             const processing_response *r) {
  const common_response *cr = common_of(r);
  const Envoy__Service__ExtProc__V3__BodyMutation *bm = cr ? cr->body_mutation : NULL;
  d->body_changed = true;
  if (bm &&
      bm->mutation_case !=
          ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_STREAMED_RESPONSE &&
      bm->mutation_case != ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION__NOT_SET) {
    outcome_judge(p->o, "spurious_message",
                  "%s: body_mutation.%s in FULL_DUPLEX_STREAMED, where Envoy takes only "
                  "streamed_response: Envoy would answer 500",
                  phase_name(phase),
                  bm->mutation_case == ENVOY__SERVICE__EXT_PROC__V3__BODY_MUTATION__MUTATION_BODY
                      ? "body"
                      : "clear_body");
    processor_failed(p, phase, 500);
    return -1;
  }
  if (!bm || !bm->streamed_response) return 0;
  byte_buf_append(&d->forwarded, bm->streamed_response->body.data, bm->streamed_response->body.len);
  return bm->streamed_response->end_of_stream;
}

/* A streamed body is complete: what Envoy passed on is the body. */
static void body_is_forwarded(direction *d) {
  byte_buf_free(&d->body);
  byte_buf_append(&d->body, d->forwarded.data, d->forwarded.len);
}

/* FULL_DUPLEX_STREAMED: every chunk goes out at once; the replies are streamed pieces, read
 * until one ends the body (with trailers following, the trailers' phase reads them). */
static void play_duplex_body(player *p, direction *d, extproc_phase phase, const http_message *msg,
                             bool trailers_follow) {
  for (size_t i = 0; i < msg->chunk_count; i++)
    if (!send_chunk(p, phase, &msg->chunks[i], !trailers_follow && i + 1 == msg->chunk_count))
      return;
  if (trailers_follow || p->s->observability_mode) return;
  for (size_t pieces = 0;; pieces++) {
    const size_t judged = p->o->judgment_count;
    processing_response *r = expect_reply(p, phase, 0);
    if (!r) {
      /* Pieces came, but none ended the body. */
      if (pieces && p->o->judgment_count > judged &&
          strcmp(p->o->judgments[judged].code, "no_reply") == 0) {
        free(p->o->judgments[judged].message);
        p->o->judgments[judged].code = "missing_end_of_stream";
        p->o->judgments[judged].message =
            strdup("the body's streamed replies never carried end_of_stream: Envoy 1.40 sets no "
                   "message timer in FULL_DUPLEX_STREAMED, so the request would hang");
      }
      return;
    }
    if (took_immediate(p, r)) return;
    const int eos = take_duplex_piece(p, d, phase, r);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (eos < 0) return;
    if (eos) {
      body_is_forwarded(d);
      return;
    }
  }
}

/* The body phase of a direction, in the mode in effect. */
static void play_body(player *p, direction *d, extproc_phase phase, const http_message *msg,
                      bool trailers_follow) {
  const extproc_body_mode mode = body_mode(p, d->is_request);
  if (mode == EXTPROC_BODY_NONE || mode == EXTPROC_BODY_GRPC || msg->chunk_count == 0) return;
  if (mode == EXTPROC_BODY_FULL_DUPLEX_STREAMED) {
    play_duplex_body(p, d, phase, msg, trailers_follow);
    return;
  }
  if (mode == EXTPROC_BODY_BUFFERED || mode == EXTPROC_BODY_BUFFERED_PARTIAL) {
    if (!send_chunk(p, phase, &d->body, !trailers_follow) || p->s->observability_mode) return;
    processing_response *r = expect_reply(p, phase, 0);
    if (!r || took_immediate(p, r)) return;
    apply_body_reply(p, d, phase, mode, r, &d->body);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    if (mode == EXTPROC_BODY_BUFFERED && !p->ended && !p->bypass) check_content_length(p, d, phase);
    return;
  }
  /* STREAMED: every chunk, then one reply per chunk, in order. */
  for (size_t i = 0; i < msg->chunk_count; i++)
    if (!send_chunk(p, phase, &msg->chunks[i], !trailers_follow && i + 1 == msg->chunk_count))
      return;
  if (p->s->observability_mode) return;
  for (size_t i = 0; i < msg->chunk_count && !p->ended && !p->bypass; i++) {
    processing_response *r = expect_reply(p, phase, 0);
    if (!r) break;
    if (took_immediate(p, r)) break;
    byte_buf piece = {0};
    byte_buf_append(&piece, msg->chunks[i].data, msg->chunks[i].len);
    apply_body_reply(p, d, phase, mode, r, &piece);
    byte_buf_append(&d->forwarded, piece.data, piece.len);
    byte_buf_free(&piece);
    protobuf_c_message_free_unpacked(&r->base, NULL);
  }
  if (!p->ended && !p->bypass) body_is_forwarded(d);
}

static void play_trailers(player *p, direction *d, extproc_phase phase) {
  if (!send_headers(p, phase, &d->trailers, true) || p->s->observability_mode) return;
  /* In FULL_DUPLEX_STREAMED the body's pieces may still come before the trailers' reply. */
  const int body_case =
      body_mode(p, d->is_request) == EXTPROC_BODY_FULL_DUPLEX_STREAMED ? answer_case(phase - 1) : 0;
  for (;;) {
    processing_response *r = expect_reply(p, phase, body_case);
    if (!r || took_immediate(p, r)) return;
    if (body_case && (int)r->response_case == body_case) {
      const int taken = take_duplex_piece(p, d, phase - 1, r);
      protobuf_c_message_free_unpacked(&r->base, NULL);
      if (taken < 0) return;
      continue;
    }
    if (body_case) body_is_forwarded(d);
    if (!envoy_apply_header_mutation(p->o, phase_name(phase), trailer_mutation_of(r), &d->trailers,
                                     false))
      processor_failed(p, phase, 500);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    return;
  }
}

/* One direction: headers, body, trailers, as the mode in effect calls for. */
static void play_direction(player *p, direction *d, const http_message *msg) {
  const extproc_phase headers_phase =
      d->is_request ? EXTPROC_REQUEST_HEADERS : EXTPROC_RESPONSE_HEADERS;
  const extproc_phase body_phase = headers_phase + 1, trailers_phase = headers_phase + 2;
  p->cur = d;
  copy_list(&d->headers, &msg->headers);
  http_message_body(msg, &d->body);
  byte_buf_append(&d->forwarded, "", 0);
  d->has_trailers = msg->has_trailers;
  copy_list(&d->trailers, &msg->trailers);
  if (p->bypass) return; /* the filter stopped processing: everything passes as it is */
  const bool has_body = msg->chunk_count > 0;
  const extproc_header_mode hm =
      d->is_request ? p->mode.request_header_mode : p->mode.response_header_mode;
  const extproc_body_mode bm = body_mode(p, d->is_request);
  bool skip_rest = false;
  if (hm == EXTPROC_HEADER_SEND) {
    if (!send_headers(p, headers_phase, &d->headers, !has_body && !msg->has_trailers)) return;
    /* Right after sending the headers, Envoy drops content-length where it may change the body
     * chunk by chunk. */
    if (is_streaming(bm)) {
      pair_list_remove(&d->headers, "content-length");
      d->content_length_dropped = true;
    }
    if (!p->s->observability_mode) {
      processing_response *r = expect_reply(p, headers_phase, 0);
      if (!r || took_immediate(p, r)) return;
      apply_headers_reply(p, d, headers_phase, r, &skip_rest);
      protobuf_c_message_free_unpacked(&r->base, NULL);
    }
  } else if (bm == EXTPROC_BODY_BUFFERED || is_streaming(bm)) {
    pair_list_remove(&d->headers, "content-length");
    d->content_length_dropped = true;
  }
  if (p->ended || p->bypass || skip_rest) return;
  /* In the streaming modes Envoy passes the headers on at once, before any body reply. */
  d->headers_forwarded = bm == EXTPROC_BODY_STREAMED || bm == EXTPROC_BODY_FULL_DUPLEX_STREAMED;
  if (has_body) play_body(p, d, body_phase, msg, msg->has_trailers);
  if (p->ended || p->bypass) return;
  const extproc_header_mode tm =
      d->is_request ? p->mode.request_trailer_mode : p->mode.response_trailer_mode;
  if (msg->has_trailers && tm == EXTPROC_HEADER_SEND) play_trailers(p, d, trailers_phase);
}

/* ---- The whole exchange ---------------------------------------------------------------- */

int target_parse(const char *address, char *host, size_t hostlen, int *port, char *err,
                 size_t errlen) {
  if (strncmp(address, "unix:", 5) == 0) {
    if (strlen(address + 5) == 0 ||
        strlen(address + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
      snprintf(err, errlen, "bad target '%s': a unix socket path of 1 to %zu bytes", address,
               sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
      return -1;
    }
    *port = 0;
    return 0;
  }
  const char *colon = strrchr(address, ':');
  const char *start = address, *end = colon;
  if (*start == '[') {
    start++;
    end = strchr(start, ']');
    if (!end || end + 1 != colon) end = NULL;
  }
  char *digits_end = NULL;
  const long p = colon ? strtol(colon + 1, &digits_end, 10) : 0;
  unsigned char addr[sizeof(struct in6_addr)];
  const size_t len = end && end > start ? (size_t)(end - start) : 0;
  if (len && len < hostlen) {
    memcpy(host, start, len);
    host[len] = 0;
  }
  if (!len || len >= hostlen || !colon[1] || *digits_end || p < 1 || p > 65535 ||
      (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1)) {
    snprintf(err, errlen,
             "bad target '%s': expected IPV4:PORT, [IPV6]:PORT or unix:PATH (a numeric address, "
             "a port from 1 to 65535)",
             address);
    return -1;
  }
  *port = (int)p;
  return 0;
}

static h2_client *connect_target(const target *t, char *err, size_t errlen) {
  char host[INET6_ADDRSTRLEN + 1];
  int port;
  if (target_parse(t->address, host, sizeof(host), &port, err, errlen) != 0) return NULL;
  if (port == 0) return h2_client_connect_unix(t->address + 5);
  if (!t->tls) return h2_client_connect_tcp(host, port);
  const h2_client_tls opts = {
      .ca_file = t->ca_file, .sni = t->sni, .cert_file = t->cert_file, .key_file = t->key_file};
  return h2_client_connect_tls(host, port, &opts);
}

/* Envoy's view of the forwarded message: pseudo-headers stay in `headers` (":path" and so on
 * can be expected like any header), `:status` becomes the client's status. */
static void finish_side(side_outcome *side, direction *d, bool is_client) {
  side->reached = true;
  pair_list_clear(&side->headers);
  for (size_t i = 0; i < d->headers.count; i++) {
    if (is_client && strcmp(d->headers.names[i], ":status") == 0)
      side->status = atoi(d->headers.values[i]);
    else
      pair_list_add(&side->headers, d->headers.names[i], d->headers.values[i]);
  }
  byte_buf_free(&side->body);
  side->body = d->body;
  d->body = (byte_buf){0};
  side->has_trailers = d->has_trailers;
  copy_list(&side->trailers, &d->trailers);
}

static void direction_free(direction *d) {
  pair_list_clear(&d->headers);
  pair_list_clear(&d->trailers);
  byte_buf_free(&d->body);
  byte_buf_free(&d->forwarded);
}

/* Sends a fault's bad first message. */
static void send_bad_first_message(player *p) {
  if (p->s->fault == FAULT_MALFORMED) {
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34};
    h2_client_send_message(p->c, p->id, garbage, sizeof(garbage), 0);
  } else {
    uint8_t *big = calloc(1, (size_t)p->s->fault_arg ? (size_t)p->s->fault_arg : 1);
    const byte_buf b = {.data = big, .len = big ? (size_t)p->s->fault_arg : 0};
    envoy_request *m = envoy_request_body(&p->a, EXTPROC_REQUEST_BODY, b.data, b.len, true);
    size_t len = 0;
    const uint8_t *bytes = m ? envoy_request_encode(&p->a, m, &len) : NULL;
    if (bytes) h2_client_send_message(p->c, p->id, bytes, len, 0);
    arena_reset(&p->a, 0);
    free(big);
  }
  p->sent++;
  p->fault_fired = true;
  /* The server should end the stream with an error status: wait for it (bounded). */
  h2_client_set_timeout(p->c, 2000);
  h2_client_wait_closed(p->c, p->id);
}

/* After a fault: does a new connection still get a plain request_headers answered? */
static int keeps_serving(const scenario *s, const target *t) {
  char err[256];
  h2_client *c = connect_target(t, err, sizeof(err));
  if (!c) return 0;
  h2_client_set_timeout(c, 2000);
  arena a;
  arena_init(&a, 0);
  const char *pairs[] = {":method", "GET",  ":path",      "/",
                         ":scheme", "http", ":authority", "localhost"};
  envoy_request *m = envoy_request_headers(&a, EXTPROC_REQUEST_HEADERS, pairs, 4, true);
  if (m)
    envoy_request_set_protocol_config(&a, m, s->mode.request_body_mode, s->mode.response_body_mode);
  size_t len = 0;
  const uint8_t *bytes = m ? envoy_request_encode(&a, m, &len) : NULL;
  const int32_t id = bytes ? h2_client_open_stream(c, PROCESS_PATH) : -1;
  int answered = id > 0 && h2_client_send_message(c, id, bytes, len, 0) == 0 &&
                 h2_client_wait_messages(c, id, 1) == 0;
  if (id > 0) h2_client_reset(c, id, 8);
  arena_free(&a);
  h2_client_free(c);
  return answered;
}

int play_scenario(const scenario *s, const target *t, outcome *o, char *err, size_t errlen) {
  player p = {.s = s, .o = o, .mode = s->mode, .timeout_ms = s->message_timeout_ms};
  o->grpc_status = -1;
  o->keeps_serving = -1;
  p.c = connect_target(t, err, errlen);
  if (!p.c) {
    if (!*err)
      snprintf(err, errlen, "cannot connect to %s: %s", t->address, h2_client_last_error());
    return -1;
  }
  arena_init(&p.a, 0);
  h2_client_set_timeout(p.c, (int)(s->message_timeout_ms + 2000));
  h2_client_set_max_message(p.c, MAX_REPLY_BYTES);
  p.id = h2_client_open_stream(p.c, PROCESS_PATH);
  if (p.id <= 0) {
    snprintf(err, errlen, "cannot open a gRPC stream on %s: %s", t->address,
             h2_client_last_error());
    h2_client_free(p.c);
    arena_free(&p.a);
    return -1;
  }
  direction req = {.is_request = true}, resp = {.is_request = false};
  if (s->fault == FAULT_MALFORMED || s->fault == FAULT_OVERSIZE) {
    send_bad_first_message(&p);
  } else {
    play_direction(&p, &req, &s->request);
    if (!p.ended && !p.fault_fired) {
      finish_side(&o->upstream, &req, false);
      play_direction(&p, &resp, &s->response);
      if (!p.ended && !p.fault_fired) finish_side(&o->client, &resp, true);
    }
  }
  const h2_client_stream *st = h2_client_get_stream(p.c, p.id);
  if (st && st->trailers_received) o->grpc_status = st->grpc_status;
  /* Envoy ends the stream with RST_STREAM once it has what it needs. */
  if (st && !st->closed && !h2_client_disconnected(p.c)) h2_client_reset(p.c, p.id, 8);
  h2_client_flush(p.c);
  h2_client_free(p.c);
  arena_free(&p.a);
  direction_free(&req);
  direction_free(&resp);
  if (s->fault != FAULT_NONE) o->keeps_serving = keeps_serving(s, t);
  return 0;
}
