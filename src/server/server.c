/* The server: options, listeners, starting and stopping the worker loops, and the blocking run
 * with signal handling. The loops themselves are the transport's (transport/worker.c). */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "base/log.h"
#include "base/sized_struct.h"
#include "extproc/server.h"
#include "transport/listener.h"
#include "transport/worker.h"

struct extproc_server {
  extproc_server_options opts;
  transport_config cfg;
  transport_stats stats;
  worker *workers;
  unsigned worker_count;
  listener_spec listeners[MAX_LISTENERS];
  unsigned listener_count;
  bool started;        /* start was called (a server runs once) */
  atomic_uint running; /* workers whose threads run and must be joined */
  atomic_bool stop_requested;
  uv_async_t *_Atomic run_wakeup; /* set while extproc_server_run waits */
  /* extproc_server_stop may come from any thread at any time, even while extproc_server_wait
   * (or extproc_server_run) closes the loops and handles it wakes: a stop counts itself in
   * `stops_in_flight` while it uses them, and does nothing once `loops_closing` is set. */
  atomic_bool loops_closing;
  atomic_int stops_in_flight;
};

void extproc_server_options_init(extproc_server_options *opts) {
  if (!opts) return;
  memset(opts, 0, sizeof(*opts));
  opts->struct_size = sizeof(*opts);
  opts->max_message_bytes = 16u << 20;
  opts->workers = 0;
  opts->max_concurrent_streams = 10000;
  opts->initial_window_bytes = 1u << 20;
  opts->shutdown_grace_ms = 5000;
  opts->max_connections = 0; /* from RLIMIT_NOFILE at start */
  opts->handshake_timeout_ms = 10000;
  opts->idle_timeout_ms = 2 * 3600 * 1000;
  opts->keepalive_interval_ms = 60000;
  opts->keepalive_timeout_ms = 20000;
  opts->max_buffered_bytes = (size_t)256 << 20;
}

/* Descriptors kept for everything but connections when max_connections is derived from the
 * open-file limit: a fixed part (stdio, the run loop's signal pipe and wakeups, log files), an
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
  if (o.handshake_timeout_ms == 0) o.handshake_timeout_ms = defaults.handshake_timeout_ms;
  if (o.idle_timeout_ms == 0) o.idle_timeout_ms = defaults.idle_timeout_ms;
  if (o.keepalive_interval_ms == 0) o.keepalive_interval_ms = defaults.keepalive_interval_ms;
  if (o.keepalive_timeout_ms == 0) o.keepalive_timeout_ms = defaults.keepalive_timeout_ms;
  if (o.max_buffered_bytes == 0) /* room for at least one whole message, however large */
    o.max_buffered_bytes = defaults.max_buffered_bytes > o.max_message_bytes
                               ? defaults.max_buffered_bytes
                               : o.max_message_bytes;
  if (o.max_message_bytes > (1u << 31) || o.initial_window_bytes > 0x7fffffff ||
      o.max_buffered_bytes < o.max_message_bytes)
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
                                .max_connections = o.max_connections,
                                .handshake_timeout_ms = o.handshake_timeout_ms,
                                .idle_timeout_ms = o.idle_timeout_ms,
                                .keepalive_interval_ms = o.keepalive_interval_ms,
                                .keepalive_timeout_ms = o.keepalive_timeout_ms,
                                .max_buffered_bytes = o.max_buffered_bytes};
  srv->worker_count = o.workers;
  srv->workers = calloc(o.workers, sizeof(worker));
  if (!srv->workers) {
    free(srv);
    return EXTPROC_ENOMEM;
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
  const int rv = listener_open(address, spec, srv->worker_count);
  if (rv != 0) return rv;
  return (int)srv->listener_count++;
}

int extproc_server_port(const extproc_server *srv, int index) {
  if (!srv || index < 0 || (unsigned)index >= srv->listener_count) return 0;
  return srv->listeners[index].is_unix ? 0 : srv->listeners[index].port;
}

int extproc_server_start(extproc_server *srv) {
  if (!srv || srv->started || srv->listener_count == 0) return EXTPROC_ESTATE;
  srv->started = true;
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
  /* Worker threads leave SIGINT/SIGTERM to the thread that runs the server. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  if (ready == srv->worker_count)
    while (srv->running < srv->worker_count && worker_start(&srv->workers[srv->running]) == 0)
      srv->running++;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (srv->running == srv->worker_count) {
    if (atomic_load(&srv->stop_requested)) extproc_server_stop(srv); /* stop came first */
    return 0;
  }
  /* Some worker could not be set up or started: stop the ones that run, free the others. */
  log_line(EXTPROC_LOG_ERROR, "could not start worker %u of %u", srv->running, srv->worker_count);
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  for (unsigned i = srv->running; i < ready; i++)
    worker_close(&srv->workers[i]);
  return EXTPROC_EIO;
}

void extproc_server_stop(extproc_server *srv) {
  if (!srv) return;
  atomic_store(&srv->stop_requested, true);
  /* Counted before looking: extproc_server_wait either sees this call and lets it finish, or
   * has already set loops_closing, which this call then sees. */
  atomic_fetch_add(&srv->stops_in_flight, 1);
  if (!atomic_load(&srv->loops_closing)) {
    const unsigned running = atomic_load(&srv->running);
    for (unsigned i = 0; i < running; i++)
      worker_request_stop(&srv->workers[i]);
    uv_async_t *run = srv->run_wakeup;
    if (run) uv_async_send(run);
  }
  atomic_fetch_sub(&srv->stops_in_flight, 1);
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
}

static void ignore_close(uv_handle_t *h) { (void)h; }

/* ---- Blocking run with signal handling ------------------------------------------------- */

static void on_signal(uv_signal_t *sig, int signum) {
  log_line(EXTPROC_LOG_INFO, "received signal %d, stopping", signum);
  extproc_server_stop(sig->data);
}

static void on_run_wakeup(uv_async_t *async) {
  extproc_server *srv = async->data;
  if (atomic_load(&srv->stop_requested)) uv_stop(async->loop);
}

int extproc_server_run(extproc_server *srv) {
  if (!srv) return EXTPROC_EINVAL;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  uv_async_t wakeup;
  if (uv_loop_init(&loop) != 0) return EXTPROC_EIO;
  uv_async_init(&loop, &wakeup, on_run_wakeup);
  wakeup.data = srv;
  uv_signal_init(&loop, &sigint);
  uv_signal_init(&loop, &sigterm);
  sigint.data = sigterm.data = srv;
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  srv->run_wakeup = &wakeup;
  int rv = extproc_server_start(srv);
  if (rv == 0 && !atomic_load(&srv->stop_requested)) uv_run(&loop, UV_RUN_DEFAULT);
  srv->run_wakeup = NULL;
  wait_stops_in_flight(srv); /* none still holds `wakeup`, closed below */
  extproc_server_stop(srv);
  extproc_server_wait(srv);
  uv_close((uv_handle_t *)&sigint, ignore_close);
  uv_close((uv_handle_t *)&sigterm, ignore_close);
  uv_close((uv_handle_t *)&wakeup, ignore_close);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return rv;
}

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
    listener_spec_free(&srv->listeners[i], srv->workers ? srv->opts.workers : 0);
  free(srv->workers);
  free(srv);
}
