/* The in-process testing harness: plays Envoy's side of one ext_proc stream against the real
 * engine, with messages encoded and decoded as on the wire. This part drives the exchange: it
 * builds and sends Envoy's messages and waits for deferred phases; harness_replies.c records
 * what the processor answers and envoy_view.c what Envoy would pass on. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/arena.h"
#include "base/pool.h"
#include "engine/processor.h"
#include "engine/stream.h"
#include "testing/envoy_request.h"
#include "testing/harness_internal.h"

static void harness_resumed(void *io) { (void)io; }

static const stream_sink harness_sink = {
    .send = harness_record_reply, .finish = harness_record_finish, .resumed = harness_resumed};

static void harness_post(void *data, extproc_request *req) {
  extproc_harness *h = data;
  pthread_mutex_lock(&h->lock);
  if (h->orphaned) { /* freed while this phase was deferred: finish the request here */
    pthread_mutex_unlock(&h->lock);
    stream_resume_on_loop(req); /* the exchange is closed: this only frees the request */
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    free(h);
    return;
  }
  h->posted = req;
  pthread_cond_signal(&h->cond);
  pthread_mutex_unlock(&h->lock);
}

/* ---- Deadlines and blocking callbacks -------------------------------------------------- */

static struct timespec timespec_after_ms(uint32_t ms) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

static bool timespec_before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* The harness is the loop: it only notes when the deadline falls, and its wait fires it. */
static void *harness_timer_start(void *data, extproc_request *req, uint32_t ms) {
  (void)req;
  extproc_harness *h = data;
  h->deadline_armed = true;
  h->deadline_at = timespec_after_ms(ms);
  return h;
}

static void harness_timer_stop(void *data, void *timer) {
  (void)timer;
  ((extproc_harness *)data)->deadline_armed = false;
}

/* Blocking callbacks run on one pool for every harness of the process, never freed: a harness
 * freed while its callback runs is finished by that pool thread (harness_post), which could
 * not join its own pool. Two threads let a test run a few harnesses side by side. */
enum { HARNESS_POOL_THREADS = 2, HARNESS_POOL_QUEUE = 64 };
static task_pool *harness_pool;
static pthread_once_t harness_pool_once = PTHREAD_ONCE_INIT;

static void harness_pool_start(void) {
  if (pool_new(&harness_pool, HARNESS_POOL_THREADS, HARNESS_POOL_QUEUE) != 0) harness_pool = NULL;
}

/* NULL (callbacks then run in the caller's thread) unless `proc` is blocking. */
static task_pool *pool_for(const extproc_processor *proc) {
  if (!proc->blocking) return NULL;
  pthread_once(&harness_pool_once, harness_pool_start);
  return harness_pool;
}

/* ---- Driving the exchange ------------------------------------------------------------- */

int extproc_harness_new(extproc_harness **out, const extproc_processor *proc) {
  if (out) *out = NULL;
  if (!out || !proc) return EXTPROC_EINVAL;
  extproc_harness *h = calloc(1, sizeof(*h));
  if (!h) return EXTPROC_ENOMEM;
  h->proc = proc;
  h->timeout_ms = 5000;
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->cond, NULL);
  const stream_poster poster = {.post = harness_post,
                                .data = h,
                                .deferred = &h->deferred,
                                .timer_start = harness_timer_start,
                                .timer_stop = harness_timer_stop,
                                .pool = pool_for(proc)};
  h->req = stream_open(proc, &harness_sink, h, &poster);
  if (!h->req) {
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->cond);
    free(h);
    return EXTPROC_ENOMEM;
  }
  *out = h;
  return 0;
}

void extproc_harness_set_observability_mode(extproc_harness *h, bool on) {
  if (h) h->observability_mode = on;
}

void extproc_harness_set_timeout_ms(extproc_harness *h, uint32_t ms) {
  if (h) h->timeout_ms = ms;
}

void extproc_harness_set_protocol_config(extproc_harness *h, extproc_body_mode request_body_mode,
                                         extproc_body_mode response_body_mode) {
  if (!h) return;
  h->send_protocol_config = true;
  h->protocol_request_mode = request_body_mode;
  h->protocol_response_mode = response_body_mode;
}

/* ---- Attributes and metadata ----------------------------------------------------------- */

static void kv_clear(kv_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->ns[i]);
    free(l->keys[i]);
    free(l->values[i]);
  }
  free(l->ns);
  free(l->keys);
  free(l->values);
  memset(l, 0, sizeof(*l));
}

static int kv_add(kv_list *l, const char *ns, const char *key, const char *value) {
  if (!key || !value) return EXTPROC_EINVAL;
  const size_t n = l->count + 1;
  char **a = realloc(l->ns, n * sizeof(*a));
  if (a) l->ns = a;
  char **b = realloc(l->keys, n * sizeof(*b));
  if (b) l->keys = b;
  char **c = realloc(l->values, n * sizeof(*c));
  if (c) l->values = c;
  if (!a || !b || !c) return EXTPROC_ENOMEM;
  l->ns[l->count] = strdup(ns ? ns : "");
  l->keys[l->count] = strdup(key);
  l->values[l->count] = strdup(value);
  l->count++;
  return (l->ns[n - 1] && l->keys[n - 1] && l->values[n - 1]) ? 0 : EXTPROC_ENOMEM;
}

int extproc_harness_add_attribute(extproc_harness *h, const char *name, const char *value) {
  return h ? kv_add(&h->attributes, NULL, name, value) : EXTPROC_EINVAL;
}

int extproc_harness_add_metadata(extproc_harness *h, const char *ns, const char *key,
                                 const char *value) {
  return (h && ns) ? kv_add(&h->metadata, ns, key, value) : EXTPROC_EINVAL;
}

/* Adds protocol_config (on the first message only), attributes and metadata_context. */
static bool add_context(extproc_harness *h, arena *a, envoy_request *msg) {
  if (h->send_protocol_config && !h->protocol_config_sent) {
    if (!envoy_request_set_protocol_config(a, msg, h->protocol_request_mode,
                                           h->protocol_response_mode))
      return false;
    h->protocol_config_sent = true;
  }
  const kv_list *at = &h->attributes, *md = &h->metadata;
  return envoy_request_set_attributes(a, msg, (const char *const *)at->keys,
                                      (const char *const *)at->values, at->count) &&
         envoy_request_set_metadata(a, msg, (const char *const *)md->ns,
                                    (const char *const *)md->keys, (const char *const *)md->values,
                                    md->count);
}

/* ---- Driving the exchange ------------------------------------------------------------- */

/* Waits for a deferred phase to be resumed and completes it, as the server's loop would. */
static int wait_for_deferred(extproc_harness *h) {
  while (stream_busy(h->req)) {
    const struct timespec give_up = timespec_after_ms(h->timeout_ms);
    /* The processor's deadline, if it comes first, answers the phase like the server's timer. */
    const bool deadline_first = h->deadline_armed && timespec_before(&h->deadline_at, &give_up);
    const struct timespec until = deadline_first ? h->deadline_at : give_up;
    pthread_mutex_lock(&h->lock);
    int rv = 0;
    while (!h->posted && rv != ETIMEDOUT)
      rv = pthread_cond_timedwait(&h->cond, &h->lock, &until);
    extproc_request *req = h->posted;
    h->posted = NULL;
    pthread_mutex_unlock(&h->lock);
    if (req) {
      stream_resume_on_loop(req);
    } else if (deadline_first) {
      h->deadline_armed = false;
      stream_deadline_on_loop(h->req);
    } else {
      return EXTPROC_ETIMEDOUT;
    }
  }
  return 0;
}

/* Completes `msg` (built in `a`, which this frees; NULL if building it ran out of memory) with
 * the harness's context, sends it through the wire format and waits for the answer. */
static int send_request(extproc_harness *h, arena *a, envoy_request *msg) {
  if (h->ended) {
    arena_free(a);
    return EXTPROC_ESTATE;
  }
  size_t len = 0;
  uint8_t *buf = NULL;
  if (msg) {
    msg->observability_mode = h->observability_mode;
    if (add_context(h, a, msg)) {
      buf = envoy_request_encode(a, msg, &len);
      kv_clear(&h->attributes); /* Envoy sends attributes once per direction */
    }
  }
  if (buf) {
    h->replies_before_send = h->reply_count;
    stream_on_message(h->req, buf, len);
  }
  arena_free(a);
  if (!buf) return EXTPROC_ENOMEM;
  const int rv = wait_for_deferred(h);
  if (rv != 0) return rv;
  return h->failed_to_record ? EXTPROC_ENOMEM : 0;
}

int extproc_harness_headers(extproc_harness *h, extproc_phase phase, const char *const *headers,
                            bool end_of_stream) {
  if (!h || phase == EXTPROC_REQUEST_BODY || phase == EXTPROC_RESPONSE_BODY ||
      (unsigned)phase >= EXTPROC_PHASE_COUNT)
    return EXTPROC_EINVAL;
  size_t n = 0;
  while (headers && headers[n])
    n++;
  if (n % 2) return EXTPROC_EINVAL;
  n /= 2;
  pair_list *view = envoy_view_of(h, phase);
  if (view && !envoy_view_set(view, headers, n)) h->failed_to_record = true;
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  return send_request(h, &a, envoy_request_headers(&a, phase, headers, n, end_of_stream));
}

int extproc_harness_body(extproc_harness *h, extproc_phase phase, const void *data, size_t len,
                         bool end_of_stream) {
  if (!h || (!data && len) || (phase != EXTPROC_REQUEST_BODY && phase != EXTPROC_RESPONSE_BODY))
    return EXTPROC_EINVAL;
  arena a;
  arena_init(&a, ARENA_CACHED_BLOCK);
  return send_request(h, &a, envoy_request_body(&a, phase, data, len, end_of_stream));
}

int extproc_harness_end(extproc_harness *h) {
  if (!h) return EXTPROC_EINVAL;
  stream_on_half_close(h->req);
  return 0;
}

void extproc_harness_free(extproc_harness *h) {
  if (!h) return;
  if (stream_busy(h->req)) wait_for_deferred(h);
  harness_replies_free(h); /* nothing is recorded any more: only this thread completes phases */
  envoy_view_free(h);
  kv_clear(&h->attributes);
  kv_clear(&h->metadata);
  /* A phase still deferred after the wait (or answered by its deadline, but not handed back)
   * keeps the request, and this struct (its poster), alive until the late hand-back, which then
   * frees both (harness_post). The request is closed under the lock, so that hand-back, which
   * takes it first, finds the request closed and this struct no longer used here. */
  pthread_mutex_lock(&h->lock);
  extproc_request *posted = h->posted; /* the hand-back came just now */
  h->posted = NULL;
  if (posted) {
    pthread_mutex_unlock(&h->lock);
    stream_resume_on_loop(posted);
  } else if (stream_held(h->req)) {
    stream_close(h->req);
    h->orphaned = true;
    pthread_mutex_unlock(&h->lock);
    arena_cache_release();
    return;
  } else {
    pthread_mutex_unlock(&h->lock);
  }
  stream_close(h->req);
  arena_cache_release(); /* this thread may be a test's own, about to exit */
  pthread_mutex_destroy(&h->lock);
  pthread_cond_destroy(&h->cond);
  free(h);
}
