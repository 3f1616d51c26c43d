/* What the harness's parts share: the harness itself, and the seams between driving the exchange
 * (harness.c), recording the processor's replies (harness_replies.c) and applying their
 * mutations to the headers Envoy would pass on (envoy_view.c). Private to src/testing. */
#ifndef EXTPROC_HARNESS_INTERNAL_H
#define EXTPROC_HARNESS_INTERNAL_H

#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "base/pair_list.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/testing.h"

/* A header map the harness owns (names and values malloc'd): what the upstream or the client
 * would see. */
/* One recorded reply. `pub` comes first, so a reply handed out leads back to its record. */
typedef struct stored_reply {
  extproc_harness_reply pub;
  Envoy__Service__ExtProc__V3__ProcessingResponse *msg; /* owns the strings pub points into */
  extproc_harness_header_write *writes; /* malloc'd, with a malloc'd copy of each value */
} stored_reply;

/* String entries for attributes and metadata (malloc'd copies), kept until sent. */
typedef struct kv_list {
  char **ns, **keys, **values; /* ns unused for attributes */
  size_t count;
} kv_list;

struct extproc_harness {
  const extproc_processor *proc;
  extproc_request *req;
  bool observability_mode;
  uint32_t timeout_ms;
  stored_reply *replies;
  size_t reply_count, reply_cap;
  size_t replies_before_send; /* reply_count when the last message was sent */
  bool ended;
  uint32_t status;
  char *message;
  pair_list upstream, client;
  size_t immediate_index; /* valid when has_immediate */
  bool has_immediate;
  bool send_protocol_config, protocol_config_sent;
  extproc_body_mode protocol_request_mode, protocol_response_mode;
  kv_list attributes;    /* sent with the next message, then cleared */
  kv_list metadata;      /* sent with every message */
  bool failed_to_record; /* out of memory while recording a reply or a view */

  pthread_mutex_t lock; /* guards `posted`: deferred phases come back from any thread */
  pthread_cond_t cond;
  extproc_request *posted;
  size_t deferred;
  bool orphaned; /* freed by the test while a phase was deferred */
  /* The deadline timer (one stream, so one timer): the wait fires it on its own clock. */
  bool deadline_armed;
  struct timespec deadline_at; /* CLOCK_REALTIME, as pthread_cond_timedwait */
};

/* ---- Recording replies (harness_replies.c) --------------------------------------------- */

/* The stream_sink's send: decodes `reply` from its wire form, records it as the next reply and
 * applies its mutations to the views. Returns 0 or EXTPROC_ENOMEM (a reply received but not
 * fully recorded sets failed_to_record instead). */
int harness_record_reply(void *io, const ProtobufCMessage *reply);

/* The stream_sink's finish: records the stream's final status and message. */
void harness_record_finish(void *io, uint32_t status, const char *message);

/* Frees every recorded reply and the final message. */
void harness_replies_free(extproc_harness *h);

/* ---- Envoy's view of the headers (envoy_view.c) ---------------------------------------- */

/* The view a phase's headers and mutations belong to: the upstream's (request headers), the
 * client's (response headers), or NULL (trailers, which the harness does not follow). */
pair_list *envoy_view_of(extproc_harness *h, extproc_phase phase);

/* The headers Envoy sent: `view` becomes the `n` pairs (flat name, value, ...). Returns false
 * on out-of-memory. */
bool envoy_view_set(pair_list *view, const char *const *pairs, size_t n);

/* Applies reply `r`'s header writes (in order, each by its append flag or append_action) and
 * then its removals to `view`, as Envoy's filter does. `m` is the HeaderMutation the writes were
 * read from (whether the legacy `append` was present). Returns false on out-of-memory. */
bool envoy_view_apply(pair_list *view, const extproc_harness_reply *r,
                      const Envoy__Service__ExtProc__V3__HeaderMutation *m);

/* What the client gets from an immediate response `r`: its :status, then its header writes as
 * they apply (`m` as above), instead of whatever the upstream said. */
bool envoy_view_immediate(pair_list *client, const extproc_harness_reply *r,
                          const Envoy__Service__ExtProc__V3__HeaderMutation *m);

/* What the client gets from the headers of a streamed immediate response: exactly its header
 * writes. */
bool envoy_view_replace(pair_list *client, const extproc_harness_reply *r);

/* Frees both views. */
void envoy_view_free(extproc_harness *h);

#endif
