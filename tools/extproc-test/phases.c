/* The phases of one direction as Envoy 1.40 plays them, and their replies applied as Envoy
 * applies them: headers (mutations, CONTINUE_AND_REPLACE, mode_override), the body in each mode
 * (BUFFERED whole, STREAMED chunk by chunk, FULL_DUPLEX_STREAMED as streamed pieces), trailers,
 * and immediate responses at any point. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "player.h"

/* ---- Applying replies ------------------------------------------------------------------ */

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
                    "streamed_immediate_response: its body never ended: the client would wait "
                    "for the rest");
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

/* The body mode in effect for a direction. */
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
  local_reply(p, 500); /* even with failure_mode_allow */
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
void play_direction(player *p, direction *d, const http_message *msg) {
  const extproc_phase headers_phase =
      d->is_request ? EXTPROC_REQUEST_HEADERS : EXTPROC_RESPONSE_HEADERS;
  const extproc_phase body_phase = headers_phase + 1, trailers_phase = headers_phase + 2;
  p->cur = d;
  pair_list_assign(&d->headers, &msg->headers);
  http_message_body(msg, &d->body);
  byte_buf_append(&d->forwarded, "", 0);
  d->has_trailers = msg->has_trailers;
  pair_list_assign(&d->trailers, &msg->trailers);
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
