/* Who answers a phase, and when: the callback on the loop thread, a deferral resumed from any
 * thread, a blocking callback run on the pool, or the phase's deadline, whichever comes first.
 *
 * Every thread that may hold the request agrees through one atomic, req->handoff (the states
 * are in engine/request.h). The rule that keeps this free of double answers and of
 * use-after-free: whoever takes the request off the loop (a resumer, a pool thread) always
 * hands it back through poster.post, exactly once, and only the loop frees it. A deadline
 * never takes the request back; it answers the phase itself and sets HANDOFF_EXPIRED, so the
 * hand-back that still comes later only releases the request, and a late resume learns that
 * its answer was dropped (EXTPROC_ETIMEDOUT). */
#include <stddef.h>
#include <stdio.h>

#include "base/log.h"
#include "engine/request.h"

static int base_of(int state) { return state & ~HANDOFF_EXPIRED; }

static void count(atomic_uint_fast64_t *counter) {
  if (counter) atomic_fetch_add(counter, 1);
}

/* ---- Deadlines (loop thread) ------------------------------------------------------------ */

static void arm_deadline(extproc_request *req) {
  if (!req->proc->deadline_ms || !req->poster.timer_start) return;
  req->deadline_timer = req->poster.timer_start(req->poster.data, req, req->proc->deadline_ms);
  if (!req->deadline_timer)
    extproc_log(req, EXTPROC_LOG_WARN, "no timer for the callback deadline (out of memory)");
}

static void disarm_deadline(extproc_request *req) {
  if (!req->deadline_timer) return;
  req->poster.timer_stop(req->poster.data, req->deadline_timer);
  req->deadline_timer = NULL;
}

/* The phase is taken off the loop: the stream holds its input until the hand-back, and the
 * loop keeps it on its list, so that a stop can abandon it. */
static void hold(extproc_request *req) {
  req->deferred = true;
  if (req->poster.deferred) (*req->poster.deferred)++;
  if (!req->poster.deferred_list) return;
  dlist_push_front(req->poster.deferred_list, &req->deferred_link);
  req->deferred_linked = true;
}

static void unlink_held(extproc_request *req) {
  if (req->poster.deferred) (*req->poster.deferred)--;
  if (!req->deferred_linked) return;
  dlist_remove(req->poster.deferred_list, &req->deferred_link);
  req->deferred_linked = false;
}

/* The request is back on the loop: nothing off the loop holds it any more. */
static void release(extproc_request *req) {
  atomic_store(&req->handoff, HANDOFF_IDLE);
  req->deferred = false;
  req->on_pool = false;
  unlink_held(req);
  disarm_deadline(req);
}

/* Answers the phase with the error policy, without touching what the thread holding the
 * request may be writing (the message, its reply and their arena): the immediate response is
 * built in an arena of its own. */
static void answer_expired(extproc_request *req) {
  if (req->ended || !req->io) return;
  const bool immediate =
      req->proc->on_error == EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE && !req->expire_fails_stream;
  if (immediate) {
    arena a;
    arena_init(&a, ARENA_CACHED_BLOCK);
    ProtobufCMessage *reply = reply_build_deadline(&a, req->proc, req->proc->error_http_status);
    const bool sent = reply && req->sink->send(req->io, reply) == 0;
    arena_free(&a);
    if (sent) {
      req->ended = true; /* Envoy stops processing after an immediate response */
      return;
    }
  }
  stream_fail(req, EXTPROC_GRPC_DEADLINE_EXCEEDED, "callback deadline exceeded");
}

void stream_deadline_on_loop(extproc_request *req) {
  req->deadline_timer = NULL; /* the poster has released it */
  int state = atomic_load(&req->handoff);
  for (;;) {
    const int base = base_of(state);
    const bool unanswered = base == HANDOFF_QUEUED || base == HANDOFF_IN_CALLBACK ||
                            base == HANDOFF_DEFER_DECLARED || base == HANDOFF_DEFERRED;
    /* Resumed already (the hand-back is on its way to the loop), or expired before. */
    if (!unanswered || (state & HANDOFF_EXPIRED)) return;
    if (atomic_compare_exchange_strong(&req->handoff, &state, state | HANDOFF_EXPIRED)) break;
  }
  req->expired = true;
  if (req->poster.stats) count(&req->poster.stats->deadlines_expired);
  extproc_log(
      req, EXTPROC_LOG_ERROR, "no answer within the callback deadline of %u ms (%s; policy %s)",
      req->proc->deadline_ms,
      base_of(state) == HANDOFF_QUEUED ? "still waiting for a blocking-pool thread"
                                       : "deferred or blocking callback",
      req->proc->on_error == EXTPROC_ON_ERROR_FAIL_STREAM ? "fail_stream" : "immediate_response");
  answer_expired(req);
  /* A blocking callback that no thread has started never will: nobody else holds the request,
   * so it comes back now instead of through a pool thread. */
  if (base_of(state) == HANDOFF_QUEUED && pool_cancel(req->poster.pool, &req->job)) {
    stream_resume_on_loop(req);
    return;
  }
  if (req->io) req->sink->resumed(req->io); /* flush the answer */
}

/* ---- The loop's side ------------------------------------------------------------------ */

void stream_resume_on_loop(extproc_request *req) {
  const int state = atomic_load(&req->handoff);
  release(req);
  if (state & HANDOFF_EXPIRED) { /* the deadline answered the phase already */
    req->expired = false;
    extproc_log(req, EXTPROC_LOG_DEBUG, "answer after the deadline dropped");
    reset_message_memory(req);
    if (!req->io) {
      stream_free(req);
      return;
    }
    intake_drain(req); /* the stream has ended: this only discards what waited */
    if (req->io) req->sink->resumed(req->io);
    return;
  }
  if (!req->io) { /* the exchange went away while we waited */
    if (req->closed_at_shutdown) {
      extproc_log(req, EXTPROC_LOG_WARN,
                  "deferred answer dropped: its stream was closed at shutdown (the grace period "
                  "ran out)");
    } else {
      count(req->poster.stats ? &req->poster.stats->deferred_dropped : NULL);
      extproc_log(req, EXTPROC_LOG_WARN,
                  "deferred answer dropped: Envoy had already ended the stream "
                  "(its message_timeout may have run out)");
    }
    stream_free(req);
    return;
  }
  complete_phase(req, base_of(state) == HANDOFF_POSTED_FAIL ? EXTPROC_FAIL : EXTPROC_CONTINUE);
  intake_drain(req);
  if (req->io) req->sink->resumed(req->io);
}

/* The callback's return on the loop thread, read together with what extproc_request_defer()
 * and extproc_request_resume() did meanwhile. No deadline is armed yet, so the state carries
 * no HANDOFF_EXPIRED here. */
static void after_callback(extproc_request *req, extproc_result result) {
  int state = atomic_load(&req->handoff);
  for (;;) {
    if (state == HANDOFF_RESUMED_EARLY_CONTINUE || state == HANDOFF_RESUMED_EARLY_FAIL) {
      /* Resumed before the callback even returned (another thread was quick, or the callback
       * resumed itself): the resume is the answer, whatever the callback returned. */
      if (result != EXTPROC_DEFER)
        extproc_log(req, EXTPROC_LOG_WARN,
                    "callback was resumed but returned %s instead of EXTPROC_DEFER; the resume "
                    "answers the phase",
                    result == EXTPROC_FAIL ? "EXTPROC_FAIL" : "EXTPROC_CONTINUE");
      atomic_store(&req->handoff, HANDOFF_IDLE);
      complete_phase(req, state == HANDOFF_RESUMED_EARLY_FAIL ? EXTPROC_FAIL : EXTPROC_CONTINUE);
      return;
    }
    const bool declared = state == HANDOFF_DEFER_DECLARED;
    /* Deferred without extproc_request_defer(): no other thread may hold the request yet, so
     * its body chunk is kept here, before the input bytes go. */
    if (result == EXTPROC_DEFER && !declared && !intake_own_body(req)) result = EXTPROC_FAIL;
    if (result != EXTPROC_DEFER && !declared) {
      atomic_store(&req->handoff, HANDOFF_IDLE);
      complete_phase(req, result == EXTPROC_FAIL ? EXTPROC_FAIL : EXTPROC_CONTINUE);
      return;
    }
    /* Deferred: the callback returned EXTPROC_DEFER, or declared the deferral (another thread
     * may hold the request, so it must not be answered or freed here whatever it returned).
     * A resume that posts at once is only run by this loop later, after the lines below. */
    if (atomic_compare_exchange_strong(&req->handoff, &state, HANDOFF_DEFERRED)) {
      hold(req);
      arm_deadline(req);
      if (result != EXTPROC_DEFER)
        log_line(EXTPROC_LOG_WARN,
                 "processor=%s: callback called extproc_request_defer() but did not return "
                 "EXTPROC_DEFER; waiting for extproc_request_resume()",
                 req->proc->name);
      return;
    }
    /* A resume came in between: `state` now holds it; look again. */
  }
}

/* ---- Blocking callbacks on the pool ------------------------------------------------------ */

/* The callback has returned on a pool thread: hand the request back to the loop, unless the
 * phase stays deferred (then its resume does). Nothing of `req` is touched after the post. */
static void after_pool_callback(extproc_request *req, extproc_result result) {
  int state = atomic_load(&req->handoff);
  for (;;) {
    const int base = base_of(state);
    int next;
    if (base == HANDOFF_RESUMED_EARLY_CONTINUE)
      next = HANDOFF_POSTED_CONTINUE;
    else if (base == HANDOFF_RESUMED_EARLY_FAIL)
      next = HANDOFF_POSTED_FAIL;
    else if (base == HANDOFF_DEFER_DECLARED || result == EXTPROC_DEFER)
      next = HANDOFF_DEFERRED;
    else
      next = result == EXTPROC_FAIL ? HANDOFF_POSTED_FAIL : HANDOFF_POSTED_CONTINUE;
    if (atomic_compare_exchange_strong(&req->handoff, &state, next | (state & HANDOFF_EXPIRED))) {
      if (next != HANDOFF_DEFERRED) req->poster.post(req->poster.data, req);
      return;
    }
  }
}

static void run_on_pool(pool_job *job) {
  extproc_request *req = (extproc_request *)(void *)((char *)job - offsetof(extproc_request, job));
  int state = HANDOFF_QUEUED;
  if (!atomic_compare_exchange_strong(&req->handoff, &state, HANDOFF_IN_CALLBACK)) {
    /* The deadline came while the job was queued: the phase is answered, so the callback is
     * not run; the request only goes back to be released. */
    atomic_store(&req->handoff, HANDOFF_POSTED_CONTINUE | HANDOFF_EXPIRED);
    req->poster.post(req->poster.data, req);
    return;
  }
  after_pool_callback(req, req->proc->on[req->msg.phase](req, req->ctx));
}

/* The phase is deferred on the callback's behalf before it starts, so a full pool holds the
 * stream's input like any deferred phase, and the deadline counts the time spent queued. */
static void run_blocking(extproc_request *req) {
  req->on_pool = true;
  hold(req);
  arm_deadline(req);
  atomic_store(&req->handoff, HANDOFF_QUEUED);
  engine_stats *stats = req->poster.stats;
  req->job.run = run_on_pool;
  /* From here a pool thread may own the request: only locals are used. */
  if (!pool_submit(req->poster.pool, &req->job) && stats) count(&stats->pool_waits);
}

void handoff_run(extproc_request *req, extproc_phase_fn fn) {
  /* Whether a reply can answer this phase at all is decided now, while no other thread holds
   * the request: a deadline may need to know it later. */
  req->expire_fails_stream =
      req->msg.observability_mode || req->streamed_immediate != STREAMED_IMMEDIATE_NONE;
  if (req->proc->blocking && req->poster.pool) {
    /* The pool thread runs after the message's input bytes are gone. */
    if (!intake_own_body(req)) {
      complete_phase(req, EXTPROC_FAIL);
      return;
    }
    run_blocking(req);
    return;
  }
  atomic_store(&req->handoff, HANDOFF_IN_CALLBACK);
  after_callback(req, fn(req, req->ctx));
}

/* ---- A stopping loop ----------------------------------------------------------------------- */

size_t stream_abandon_deferred(const stream_poster *poster) {
  if (!poster->deferred_list) return 0;
  dlist still_coming = {0};
  size_t abandoned = 0;
  while (poster->deferred_list->head) {
    extproc_request *req = LIST_ITEM(poster->deferred_list->head, extproc_request, deferred_link);
    unlink_held(req);
    disarm_deadline(req); /* its timer belongs to the loop that is stopping */
    req->abandoned_cleanup = req->proc->context_cleanup;
    req->closed_at_shutdown = true;
    /* Named before the hand-off: once ABANDONED, the resuming thread may free it at any time. */
    char who[256];
    snprintf(who, sizeof(who), "processor=%s phase=%s request_id=%s", req->proc->name,
             extproc_phase_name(req->msg.phase), req->info.request_id ? req->info.request_id : "-");
    int state = atomic_load(&req->handoff);
    /* Only a phase waiting for extproc_request_resume() can be given up: a blocking callback
     * still queued or running comes back through its pool thread. */
    while (base_of(state) == HANDOFF_DEFERRED &&
           !atomic_compare_exchange_strong(&req->handoff, &state, HANDOFF_ABANDONED)) {
    }
    if (base_of(state) == HANDOFF_DEFERRED) {
      log_line(EXTPROC_LOG_WARN,
               "%s: deferred answer abandoned at shutdown: the grace period ran out before "
               "extproc_request_resume(), which will only free the request",
               who);
      abandoned++;
      continue;
    }
    /* Resumed just now, or still on the pool: it comes back through the poster. */
    if (req->poster.deferred) (*req->poster.deferred)++;
    dlist_push_front(&still_coming, &req->deferred_link);
    req->deferred_linked = true;
  }
  *poster->deferred_list = still_coming;
  return abandoned;
}

/* ---- The author's side (any thread) ----------------------------------------------------- */

int extproc_request_defer(extproc_request *req) {
  if (!req) return EXTPROC_EINVAL;
  int state = atomic_load(&req->handoff);
  for (;;) {
    const int base = base_of(state);
    if (base == HANDOFF_DEFER_DECLARED) return 0;
    if (base != HANDOFF_IN_CALLBACK) break;
    /* Another thread may read the body once this returns, after its input bytes are gone. */
    if (!intake_own_body(req)) {
      extproc_log(req, EXTPROC_LOG_ERROR, "out of memory keeping the body chunk: not deferred");
      return EXTPROC_ENOMEM;
    }
    if (atomic_compare_exchange_strong(&req->handoff, &state,
                                       HANDOFF_DEFER_DECLARED | (state & HANDOFF_EXPIRED)))
      return 0;
  }
  extproc_log(req, EXTPROC_LOG_WARN, "refused: extproc_request_defer() outside a callback");
  return EXTPROC_ESTATE;
}

int extproc_request_resume(extproc_request *req, extproc_result result) {
  if (!req || (result != EXTPROC_CONTINUE && result != EXTPROC_FAIL)) return EXTPROC_EINVAL;
  const bool fail = result == EXTPROC_FAIL;
  /* Only the handoff state is touched until the resume is ours: a second, racing resume must
   * not write anything the first one's thread or the loop reads; and once it is ours, the
   * request may be gone as soon as it is posted. */
  int state = atomic_load(&req->handoff);
  for (;;) {
    const int base = base_of(state);
    int next;
    if (base == HANDOFF_DEFER_DECLARED)
      next = fail ? HANDOFF_RESUMED_EARLY_FAIL : HANDOFF_RESUMED_EARLY_CONTINUE;
    else if (base == HANDOFF_DEFERRED)
      next = fail ? HANDOFF_POSTED_FAIL : HANDOFF_POSTED_CONTINUE;
    else
      break;
    const int expired = state & HANDOFF_EXPIRED;
    if (atomic_compare_exchange_strong(&req->handoff, &state, next | expired)) {
      if (base == HANDOFF_DEFERRED) req->poster.post(req->poster.data, req);
      if (!expired) return 0;
      log_line(EXTPROC_LOG_WARN, "extproc_request_resume() after the callback deadline: the "
                                 "phase was already answered by the error policy; answer "
                                 "dropped");
      return EXTPROC_ETIMEDOUT;
    }
  }
  /* Its loop stopped while it waited: the answer has nowhere to go. Taking the state back to
   * IDLE makes this resume the only one that frees it. */
  if (state == HANDOFF_ABANDONED &&
      atomic_compare_exchange_strong(&req->handoff, &state, HANDOFF_IDLE)) {
    stream_free_abandoned(req);
    return 0;
  }
  /* Not a line with the request's details: another thread may be using them. */
  log_line(EXTPROC_LOG_WARN, "refused: extproc_request_resume() with no deferred phase waiting "
                             "(call extproc_request_defer() before handing the request on, and "
                             "resume once)");
  return EXTPROC_ESTATE;
}
