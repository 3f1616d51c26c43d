/* Plays one scenario as Envoy 1.40's ext_proc filter would: one connection, one gRPC stream,
 * each message sent with what Envoy adds, each reply awaited under message_timeout and its kind
 * judged, the processor's failures taken as Envoy takes them, and faults on demand. The phases
 * themselves are phases.c's. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include "engine/wire_check.h"
#include "player.h"
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

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *phase_name(extproc_phase p) {
  static const char *const names[] = {"request_headers",  "request_body",  "request_trailers",
                                      "response_headers", "response_body", "response_trailers"};
  return (unsigned)p < EXTPROC_PHASE_COUNT ? names[p] : "?";
}

/* The ProcessingResponse case that answers `phase`. */
int answer_case(extproc_phase p) {
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

bool send_headers(player *p, extproc_phase phase, const pair_list *h, bool eos) {
  return send_message(p, phase,
                      envoy_request_headers(&p->a, phase, flatten(&p->a, h), h->count, eos));
}

bool send_chunk(player *p, extproc_phase phase, const byte_buf *b, bool eos) {
  return send_message(p, phase, envoy_request_body(&p->a, phase, b->data, b->len, eos));
}

/* ---- Receiving ------------------------------------------------------------------------- */

/* Waits for the next reply, within the message timeout (an override_message_timeout Envoy
 * would grant restarts it). `*out` is unpacked; the caller frees it. */
wait_result await_reply(player *p, processing_response **out) {
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
      if (envoy_reply_names_hold_nul(msg->data, msg->len)) {
        p->bad_reply = "a header name holds a NUL byte";
        p->bad_mutation = true;
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
bool local_reply_possible(player *p) {
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
void local_reply(player *p, int status) {
  if (!local_reply_possible(p)) return;
  p->o->client.reached = true;
  p->o->client.status = status;
  pair_list_clear(&p->o->client.headers);
  byte_buf_free(&p->o->client.body);
}

/* The processor failed while Envoy waited on `phase`: with failure_mode_allow (where it
 * applies) the request goes on unprocessed; otherwise Envoy answers `status` itself. */
void processor_failed(player *p, extproc_phase phase, int status) {
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
processing_response *expect_reply(player *p, extproc_phase phase, int also) {
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
    if (p->bad_mutation) {
      outcome_judge(p->o, "invalid_header_mutation",
                    "%s: %s: Envoy would answer 500 (even with failure_mode_allow)", name,
                    p->bad_reply);
      local_reply(p, 500);
      return NULL;
    }
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
  if (!len || len >= hostlen || colon[1] < '0' || colon[1] > '9' || *digits_end || p < 1 ||
      p > 65535 || (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1)) {
    snprintf(err, errlen,
             "bad target '%s': expected IPV4:PORT, [IPV6]:PORT or unix:PATH (a numeric address, "
             "a port from 1 to 65535)",
             address);
    return -1;
  }
  *port = (int)p;
  return 0;
}

static h2_client *connect_target(const extest_target *t, char *err, size_t errlen) {
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
  pair_list_assign(&side->trailers, &d->trailers);
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
static int keeps_serving(const scenario *s, const extest_target *t) {
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

int play_scenario(const scenario *s, const extest_target *t, outcome *o, char *err, size_t errlen) {
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
