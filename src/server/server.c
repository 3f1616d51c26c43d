/* The server: options, listeners, starting and stopping the worker loops, and the blocking run
 * with signal handling. The loops themselves are the transport's (transport/worker.c). */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/log.h"
#include "base/pool.h"
#include "base/sized_struct.h"
#include "engine/processor.h"
#include "extproc/server.h"
#include "server/metrics_http.h"
#include "server/run_signals.h"
#include "server/server_metrics.h"
#include "server/server_run.h"
#include "server/tls_watch.h"
#include "transport/listener.h"
#include "transport/tls.h"
#include "transport/worker.h"

/* How long a stop keeps serving with health NOT_SERVING before it closes the listeners. Envoy's
 * gRPC active health checker takes a host out of rotation at the first answer that is not
 * SERVING (an "active" failure; unhealthy_threshold counts only network failures: timeouts,
 * refused connections), so within one `interval` (plus `interval_jitter` and the check's round
 * trip) of the change. The demo's Envoy (deploy/envoy.yaml) checks every 1 s with
 * unhealthy_threshold 2: 3 s covers one interval, and also unhealthy_threshold timed-out checks
 * of a host too busy to answer in time. */
enum { DEFAULT_DRAIN_DELAY_MS = 3000 };

/* Incomplete messages buffered over the whole server when max_buffered_bytes is left 0 (unless
 * max_message_bytes is larger): sixteen default-sized (16 MiB) messages at once. */
#define DEFAULT_MAX_BUFFERED_BYTES ((size_t)256 << 20)

struct extproc_server {
  extproc_server_options opts;
  transport_config cfg;
  transport_stats stats;
  engine_stats engine_stats;
  task_pool *pool; /* blocking callbacks; only when a served processor is blocking */
  worker *workers;
  unsigned worker_count;
  /* The health-only listener (health_listen) first, if any, then extproc_server_listen's, whose
   * indexes count from `first_listener`. */
  listener_spec listeners[MAX_LISTENERS];
  unsigned listener_count;
  unsigned first_listener;
  bool started;        /* start was called (a server runs once) */
  atomic_uint running; /* workers whose threads run and must be joined */
  atomic_bool stop_requested;
  atomic_bool stop_now_requested;
  /* extproc_server_stop may come from any thread at any time, even while extproc_server_wait
   * closes the loops it wakes: a stop counts itself in `stops_in_flight` while it uses them, and
   * does nothing once `loops_closing` is set. */
  atomic_bool loops_closing;
  atomic_int stops_in_flight;
  server_metrics metrics;
  metrics_endpoint *metrics_endpoint; /* NULL unless extproc_server_metrics_listen() was called */
  tls_store *tls;                     /* NULL: cleartext */
  tls_watch watch; /* reloads the TLS files when they change; runs from start to wait */
};

/* Blocking callbacks wait on something else (a disk, a service), not on our CPUs, so the pool
 * is not sized by cores; each thread holds about 8 MiB of address space for its stack. */
enum { DEFAULT_BLOCKING_THREADS = 8, MAX_BLOCKING_THREADS = 1024, BLOCKING_QUEUE_PER_THREAD = 64 };

/* Streams open at once by default: at a few KiB of request state each, a few hundred MiB. */
enum { DEFAULT_MAX_OPEN_STREAMS = 100000 };

void extproc_server_options_init(extproc_server_options *opts) {
  if (!opts) return;
  memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
  opts->max_message_bytes = 16u << 20;
  opts->workers = 0;
  opts->max_concurrent_streams = 10000;
  opts->initial_window_bytes = 1u << 20;
  opts->shutdown_grace_ms = 5000;
  opts->drain_delay_ms = DEFAULT_DRAIN_DELAY_MS;
  opts->health_listen = NULL;
  opts->blocking_threads = DEFAULT_BLOCKING_THREADS;
  opts->blocking_queue = 0;  /* per thread, below */
  opts->max_connections = 0; /* from RLIMIT_NOFILE at start */
  opts->max_open_streams = DEFAULT_MAX_OPEN_STREAMS;
  opts->handshake_timeout_ms = 10000;
  opts->idle_timeout_ms = 2 * 3600 * 1000;
  opts->keepalive_interval_ms = 60000;
  opts->keepalive_timeout_ms = 20000;
  /* 0: 256 MiB, or max_message_bytes if larger, decided by extproc_server_new(). A fixed 256 MiB
   * here would make every max_message_bytes above it refused unless this was raised too. */
  opts->max_buffered_bytes = 0;
}

/* Opens the health-only listener as listeners[0]. Returns 0 or a negative extproc_error. */
static int open_health_listener(extproc_server *srv, const char *address) {
  listener_spec *spec = &srv->listeners[0];
  memset(spec, 0, sizeof(*spec));
  spec->proc = NULL; /* the transport serves only grpc.health.v1.Health there */
  const int rv = listener_open(address, spec, srv->worker_count, srv->opts.unix_socket_mode);
  if (rv != 0) return rv;
  srv->listener_count = srv->first_listener = 1;
  return 0;
}

/* Descriptors kept for everything but connections when max_connections is derived from the
 * open-file limit: a fixed part (stdio, the run loop's signal pipe and wakeups, log files, the
 * metrics endpoint's socket and its at most 16 connections (metrics_http.c)), an
 * eighth of the limit for what the processor itself opens (files, clients to other services),
 * and per worker its loop's epoll, wakeup and spare descriptors plus one socket per listener. */
enum { FD_RESERVE_FIXED = 64, FD_RESERVE_PER_WORKER = 4 };

static uint64_t default_max_connections(unsigned workers, unsigned listeners) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return UINT32_MAX;
  const uint64_t limit = rl.rlim_cur;
  const uint64_t reserve =
      FD_RESERVE_FIXED + limit / 8 + (uint64_t)workers * (FD_RESERVE_PER_WORKER + listeners);
  /* A limit too small for the reserve still serves a few connections (accept() failing for want
   * of descriptors then pauses accepting too). */
  if (limit <= reserve) return limit / 4 > 0 ? limit / 4 : 1;
  return limit - reserve;
}

/* TLS options: both files or neither; the CA only with them. Returns 0 or EXTPROC_EINVAL. */
static int check_tls_options(const extproc_server_options *o) {
  if (!o->tls_cert_file && !o->tls_key_file && !o->tls_client_ca_file) return 0;
  if (o->tls_cert_file && o->tls_key_file) return 0;
  log_line(EXTPROC_LOG_ERROR, "TLS needs both tls_cert_file and tls_key_file (%s)",
           o->tls_cert_file || o->tls_key_file ? "only one is set"
                                               : "tls_client_ca_file alone is not enough");
  return EXTPROC_EINVAL;
}

/* Builds the TLS context from the files, if TLS is configured. */
static int open_tls(extproc_server *srv, const extproc_server_options *o) {
  if (!o->tls_cert_file) return 0;
  const tls_files files = {.cert_file = o->tls_cert_file,
                           .key_file = o->tls_key_file,
                           .client_ca_file = o->tls_client_ca_file};
  const int rv = tls_store_new(&srv->tls, &files);
  srv->cfg.tls = srv->tls;
  return rv;
}

/* Frees what extproc_server_new had set up when a later step fails. */
static void discard(extproc_server *srv) {
  tls_store_free(srv->tls);
  server_metrics_free(&srv->metrics);
  free(srv->workers);
  free(srv);
}

int extproc_server_new(extproc_server **out, const extproc_server_options *opts) {
  if (out) *out = NULL;
  if (!out) return EXTPROC_EINVAL;
  extproc_server_options o;
  if (!opts)
    extproc_server_options_init(&o);
  else if (sized_struct_read(&o, sizeof(o), opts) != 0)
    return EXTPROC_EINVAL;
  /* Zero fields take their defaults, so `extproc_server_options o = {0}` works too. */
  extproc_server_options defaults;
  extproc_server_options_init(&defaults);
  if (o.max_message_bytes == 0) o.max_message_bytes = defaults.max_message_bytes;
  if (o.initial_window_bytes == 0) o.initial_window_bytes = defaults.initial_window_bytes;
  if (o.max_concurrent_streams == 0) o.max_concurrent_streams = defaults.max_concurrent_streams;
  if (o.blocking_threads == 0) o.blocking_threads = defaults.blocking_threads;
  if (o.blocking_queue == 0)
    o.blocking_queue = (size_t)o.blocking_threads * BLOCKING_QUEUE_PER_THREAD;
  if (o.max_open_streams == 0) o.max_open_streams = defaults.max_open_streams;
  if (o.handshake_timeout_ms == 0) o.handshake_timeout_ms = defaults.handshake_timeout_ms;
  if (o.idle_timeout_ms == 0) o.idle_timeout_ms = defaults.idle_timeout_ms;
  if (o.keepalive_interval_ms == 0) o.keepalive_interval_ms = defaults.keepalive_interval_ms;
  if (o.keepalive_timeout_ms == 0) o.keepalive_timeout_ms = defaults.keepalive_timeout_ms;
  if (o.max_buffered_bytes == 0) /* room for at least one whole message, however large */
    o.max_buffered_bytes = DEFAULT_MAX_BUFFERED_BYTES > o.max_message_bytes
                               ? DEFAULT_MAX_BUFFERED_BYTES
                               : o.max_message_bytes;
  if (o.max_message_bytes > (1u << 31) || o.initial_window_bytes > 0x7fffffff ||
      o.blocking_threads > MAX_BLOCKING_THREADS || o.max_buffered_bytes < o.max_message_bytes ||
      o.unix_socket_mode > 0777 || check_tls_options(&o) != 0)
    return EXTPROC_EINVAL;
  if (o.workers == 0) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    o.workers = n > 0 ? (unsigned)n : 1;
  }
  extproc_server *srv = calloc(1, sizeof(*srv));
  if (!srv) return EXTPROC_ENOMEM;
  srv->opts = o;
  srv->cfg = (transport_config){.max_message_bytes = o.max_message_bytes,
                                .max_concurrent_streams = o.max_concurrent_streams,
                                .initial_window_bytes = o.initial_window_bytes,
                                .shutdown_grace_ms = o.shutdown_grace_ms,
                                .drain_delay_ms = o.drain_delay_ms,
                                .engine_stats = &srv->engine_stats,
                                .max_connections = o.max_connections,
                                .handshake_timeout_ms = o.handshake_timeout_ms,
                                .idle_timeout_ms = o.idle_timeout_ms,
                                .keepalive_interval_ms = o.keepalive_interval_ms,
                                .keepalive_timeout_ms = o.keepalive_timeout_ms,
                                .max_buffered_bytes = o.max_buffered_bytes,
                                .max_open_streams = o.max_open_streams};
  /* The caller's strings are not kept. */
  srv->opts.health_listen = NULL;
  srv->opts.tls_cert_file = srv->opts.tls_key_file = srv->opts.tls_client_ca_file = NULL;
  srv->worker_count = o.workers;
  srv->workers = calloc(o.workers, sizeof(worker));
  if (!srv->workers || server_metrics_init(&srv->metrics, &srv->stats, &srv->engine_stats) != 0) {
    free(srv->workers);
    free(srv);
    return EXTPROC_ENOMEM;
  }
  int rv = open_tls(srv, &o);
  if (rv == 0 && o.health_listen) rv = open_health_listener(srv, o.health_listen);
  if (rv != 0) {
    discard(srv);
    return rv;
  }
  *out = srv;
  return 0;
}

int extproc_server_listen(extproc_server *srv, const char *address, const extproc_processor *proc) {
  if (!srv || !address || !proc) return EXTPROC_EINVAL;
  if (srv->started || srv->listener_count == MAX_LISTENERS) return EXTPROC_ESTATE;
  listener_spec *spec = &srv->listeners[srv->listener_count];
  memset(spec, 0, sizeof(*spec));
  spec->proc = proc;
  const int rv = listener_open(address, spec, srv->worker_count, srv->opts.unix_socket_mode);
  if (rv != 0) return rv;
  return (int)(srv->listener_count++ - srv->first_listener);
}

int extproc_server_metrics_listen(extproc_server *srv, const char *address) {
  if (!srv || !address) return EXTPROC_EINVAL;
  if (srv->metrics_endpoint) return EXTPROC_ESTATE;
  return metrics_endpoint_start(&srv->metrics_endpoint, address, srv->metrics.registry,
                                server_metrics_collect, &srv->metrics);
}

static int port_of_spec(const listener_spec *spec) { return spec->is_unix ? 0 : spec->port; }

int extproc_server_port(const extproc_server *srv, int index) {
  if (!srv || index < 0 || (unsigned)index >= srv->listener_count - srv->first_listener) return 0;
  return port_of_spec(&srv->listeners[srv->first_listener + (unsigned)index]);
}

int extproc_server_health_port(const extproc_server *srv) {
  return srv && srv->first_listener ? port_of_spec(&srv->listeners[0]) : 0;
}

/* The blocking pool, if some served processor needs it. */
static int start_pool(extproc_server *srv) {
  bool needed = false;
  for (unsigned i = 0; i < srv->listener_count; i++)
    needed = needed || (srv->listeners[i].proc && srv->listeners[i].proc->blocking);
  if (!needed) return 0;
  const int rv = pool_new(&srv->pool, srv->opts.blocking_threads, srv->opts.blocking_queue);
  if (rv != 0) {
    log_line(EXTPROC_LOG_ERROR, "could not start the blocking pool: %s", extproc_strerror(rv));
    return rv;
  }
  srv->cfg.pool = srv->pool;
  return 0;
}

int extproc_server_start(extproc_server *srv) {
  if (!srv || srv->started || srv->listener_count == srv->first_listener) return EXTPROC_ESTATE;
  srv->started = true;
  if (start_pool(srv) != 0) return EXTPROC_EIO;
  for (unsigned i = 0; i < srv->listener_count; i++)
    if (srv->listeners[i].proc && server_metrics_add_processor(&srv->metrics, &srv->engine_stats,
                                                               srv->listeners[i].proc) != 0)
      log_line(EXTPROC_LOG_WARN, "no metrics for processor %s", srv->listeners[i].proc->name);
  if (srv->cfg.max_connections == 0) /* the listeners are known now */
    srv->cfg.max_connections = default_max_connections(srv->worker_count, srv->listener_count);
  log_line(EXTPROC_LOG_DEBUG, "max_connections %llu", (unsigned long long)srv->cfg.max_connections);
  /* A peer that closes while we write must be an error return, not a process kill. */
  signal(SIGPIPE, SIG_IGN);
  unsigned ready = 0;
  for (; ready < srv->worker_count; ready++)
    if (worker_init(&srv->workers[ready], ready, &srv->cfg, &srv->stats, srv->listeners,
                    srv->listener_count) != 0)
      break;
  /* Worker threads leave SIGINT, SIGTERM and SIGHUP to the thread that runs the server. */
  sigset_t old;
  run_signals_mask(SIG_BLOCK, &old);
  if (ready == srv->worker_count)
    while (srv->running < srv->worker_count && worker_start(&srv->workers[srv->running]) == 0)
      srv->running++;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (srv->running == srv->worker_count) {
    if (srv->tls && tls_watch_start(&srv->watch, srv->tls, &srv->stats) != 0)
      log_line(EXTPROC_LOG_WARN, "TLS: could not start the file watcher: reload with SIGHUP");
    /* A stop that came first found no worker to tell. */
    if (atomic_load(&srv->stop_now_requested))
      extproc_server_stop_now(srv);
    else if (atomic_load(&srv->stop_requested))
      extproc_server_stop(srv);
    return 0;
  }
  /* Some worker could not be set up or started: stop the ones that run, free the others. */
  log_line(EXTPROC_LOG_ERROR, "could not start worker %u of %u", srv->running, srv->worker_count);
  extproc_server_stop_now(srv);
  extproc_server_wait(srv);
  for (unsigned i = srv->running; i < ready; i++)
    worker_close(&srv->workers[i]);
  return EXTPROC_EIO;
}

/* Only atomics and uv_async_send: async-signal-safe. */
static void request_stop(extproc_server *srv, bool now) {
  /* Health says NOT_SERVING from here on, on every loop, before any loop hears of the stop. */
  atomic_store(&srv->stats.draining, 1);
  atomic_store(&srv->stop_requested, true);
  if (now) atomic_store(&srv->stop_now_requested, true);
  /* Counted before looking: extproc_server_wait either sees this call and lets it finish, or
   * has already set loops_closing, which this call then sees. */
  atomic_fetch_add(&srv->stops_in_flight, 1);
  if (!atomic_load(&srv->loops_closing)) {
    const unsigned running = atomic_load(&srv->running);
    for (unsigned i = 0; i < running; i++) {
      if (now)
        worker_request_stop_now(&srv->workers[i]);
      else
        worker_request_stop(&srv->workers[i]);
    }
  }
  atomic_fetch_sub(&srv->stops_in_flight, 1);
}

void extproc_server_stop(extproc_server *srv) {
  if (srv) request_stop(srv, false);
}

void extproc_server_stop_now(extproc_server *srv) {
  if (srv) request_stop(srv, true);
}

/* Waits for extproc_server_stop calls still using the loops or handles they found. */
static void wait_stops_in_flight(extproc_server *srv) {
  while (atomic_load(&srv->stops_in_flight) != 0)
    sched_yield();
}

void extproc_server_wait(extproc_server *srv) {
  if (!srv) return;
  const unsigned running = atomic_load(&srv->running);
  for (unsigned i = 0; i < running; i++)
    worker_join(&srv->workers[i]);
  /* No stop may wake a loop from here on: they are about to close. */
  atomic_store(&srv->loops_closing, true);
  wait_stops_in_flight(srv);
  for (unsigned i = 0; i < running; i++)
    worker_close(&srv->workers[i]);
  atomic_store(&srv->running, 0); /* waited for; free() must not join them again */
  tls_watch_stop(&srv->watch);
}

static int reload_tls(extproc_server *srv, const char *why) {
  if (!srv->tls) {
    log_line(EXTPROC_LOG_WARN, "TLS reload (%s): the server has no TLS files, nothing to reload",
             why);
    return EXTPROC_ESTATE;
  }
  return tls_store_reload(srv->tls, &srv->stats, why);
}

int extproc_server_reload_tls(extproc_server *srv) {
  return srv ? reload_tls(srv, "requested") : EXTPROC_EINVAL;
}

static void ignore_close(uv_handle_t *h) { (void)h; }

/* ---- Blocking run with signal handling ------------------------------------------------- */

/* extproc_server_run's loop: it handles the signals until the workers are done, so a second
 * signal can still cut a drain short. */
typedef struct run_state {
  extproc_server *srv;
  uv_signal_t sigint, sigterm, sighup;
  uv_async_t done; /* the waiter thread has seen every worker finish */
  uv_thread_t waiter;
} run_state;

static void on_signal(uv_signal_t *sig, int signum) {
  extproc_server *srv = sig->data;
  if (atomic_load(&srv->stop_requested)) {
    log_line(EXTPROC_LOG_WARN,
             "received signal %d while stopping: stopping now (no drain delay, no grace period)",
             signum);
    extproc_server_stop_now(srv);
    return;
  }
  log_line(EXTPROC_LOG_INFO,
           "received signal %d: health NOT_SERVING, draining for %u ms, then closing with a "
           "grace period of %u ms (a second signal stops at once)",
           signum, srv->cfg.drain_delay_ms, srv->cfg.shutdown_grace_ms);
  extproc_server_stop(srv);
}

/* SIGHUP: reload the TLS certificates. Without TLS there is nothing to reload, but its default
 * action would end the process at once, without a drain (operators send it out of habit, as do
 * terminals that go away and some supervisors): it is logged and otherwise ignored. */
static void on_sighup(uv_signal_t *sig, int signum) {
  extproc_server *srv = sig->data;
  if (srv->tls) {
    (void)reload_tls(srv, "SIGHUP"); /* logged either way */
    return;
  }
  log_line(EXTPROC_LOG_WARN,
           "received signal %d (SIGHUP): ignored, there is no TLS certificate to reload; SIGINT "
           "or SIGTERM stops the server",
           signum);
}

static void on_workers_done(uv_async_t *async) {
  run_state *r = async->data;
  /* Held back while the handles close: closing them gives the signals their default action back
   * (libuv does so at once), and one arriving before SIG_IGN is set would kill the process on
   * its way out. Ignoring a pending signal discards it. */
  run_signals_mask(SIG_BLOCK, NULL);
  uv_close((uv_handle_t *)&r->sigint, ignore_close);
  uv_close((uv_handle_t *)&r->sigterm, ignore_close);
  uv_close((uv_handle_t *)&r->sighup, ignore_close);
  uv_close((uv_handle_t *)&r->done, ignore_close);
  run_signals_set(SIG_IGN);
}

static void waiter_main(void *arg) {
  run_state *r = arg;
  extproc_server_wait(r->srv);
  uv_async_send(&r->done);
}

/* Starts the waiter thread with SIGINT, SIGTERM and SIGHUP blocked: they are for the run loop. */
static int start_waiter(run_state *r) {
  sigset_t old;
  run_signals_mask(SIG_BLOCK, &old);
  const int rv = uv_thread_create(&r->waiter, waiter_main, r);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rv;
}

/* extproc_server_run(), leaving SIGINT, SIGTERM and SIGHUP ignored on return if asked. */
static int run(extproc_server *srv, bool leave_ignored) {
  if (!srv) return EXTPROC_EINVAL;
  uv_loop_t loop;
  run_state r = {.srv = srv};
  if (uv_loop_init(&loop) != 0) return EXTPROC_EIO;
  uv_async_init(&loop, &r.done, on_workers_done);
  r.done.data = &r;
  uv_signal_init(&loop, &r.sigint);
  uv_signal_init(&loop, &r.sigterm);
  uv_signal_init(&loop, &r.sighup);
  r.sigint.data = r.sigterm.data = r.sighup.data = srv;
  uv_signal_start(&r.sigint, on_signal, SIGINT);
  uv_signal_start(&r.sigterm, on_signal, SIGTERM);
  uv_signal_start(&r.sighup, on_sighup, SIGHUP);
  /* Handled from here on, also if they came earlier and were kept waiting (blocked): a signal
   * during start-up (extproc_main blocks them first) or a mask inherited from a parent. */
  sigset_t old_mask;
  run_signals_mask(SIG_UNBLOCK, &old_mask);
  int rv = extproc_server_start(srv);
  bool waiting = false;
  if (rv == 0) {
    waiting = start_waiter(&r) == 0;
    if (!waiting) { /* nobody would see the workers finish: stop them, then wait here */
      log_line(EXTPROC_LOG_ERROR, "could not start the thread that waits for the workers");
      extproc_server_stop_now(srv);
      extproc_server_wait(srv);
      rv = EXTPROC_EIO;
    }
  }
  if (!waiting) on_workers_done(&r.done);
  uv_run(&loop, UV_RUN_DEFAULT); /* until the workers are done and the handles closed */
  if (waiting) uv_thread_join(&r.waiter);
  uv_loop_close(&loop);
  if (!leave_ignored) run_signals_set(SIG_DFL);
  pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
  return rv;
}

int extproc_server_run(extproc_server *srv) { return run(srv, false); }

int server_run_to_exit(extproc_server *srv) { return run(srv, true); }

uint64_t extproc_server_open_streams(const extproc_server *srv) {
  return srv ? atomic_load(&((extproc_server *)srv)->stats.open_streams) : 0;
}

uint64_t extproc_server_total_streams(const extproc_server *srv) {
  return srv ? atomic_load(&((extproc_server *)srv)->stats.total_streams) : 0;
}

void extproc_server_free(extproc_server *srv) {
  if (!srv) return;
  if (srv->running) {
    extproc_server_stop(srv);
    extproc_server_wait(srv);
  }
  for (unsigned i = 0; i < srv->listener_count; i++)
    listener_spec_free(&srv->listeners[i], srv->worker_count);
  /* The workers have finished, so no blocking callback is running or queued: a worker's loop
   * ends only once every request handed to the pool has come back. */
  pool_free(srv->pool);
  tls_watch_stop(&srv->watch); /* a server started but never waited for */
  tls_store_free(srv->tls);    /* open connections are gone with the workers */
  metrics_endpoint_stop(srv->metrics_endpoint);
  server_metrics_free(&srv->metrics);
  free(srv->workers);
  free(srv);
}
