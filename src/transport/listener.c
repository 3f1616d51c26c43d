/* Listening sockets. Sockets are created and bound when the listener is added (so a port 0
 * listener knows its port at once); each worker then listens on its own TCP socket with
 * SO_REUSEPORT, which lets the kernel spread connections over the loops without a shared
 * accept queue. */
#define _GNU_SOURCE /* accept4 */
#include "transport/listener.h"

#include "transport/peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "base/log.h"

enum { LISTEN_BACKLOG = 1024 };

/* Splits "HOST:PORT" or "[V6]:PORT" into host and port. Returns false if malformed. */
static bool split_host_port(const char *address, char *host, size_t host_cap, int *port) {
  const char *colon;
  const char *host_start = address;
  size_t host_len;
  if (address[0] == '[') {
    const char *close = strchr(address, ']');
    if (!close || close[1] != ':') return false;
    host_start = address + 1;
    host_len = (size_t)(close - host_start);
    colon = close + 1;
  } else {
    colon = strrchr(address, ':');
    if (!colon || memchr(address, ':', (size_t)(colon - address))) return false; /* bare IPv6 */
    host_len = (size_t)(colon - address);
  }
  if (host_len == 0 || host_len >= host_cap) return false;
  memcpy(host, host_start, host_len);
  host[host_len] = '\0';
  char *end;
  errno = 0;
  const long p = strtol(colon + 1, &end, 10);
  if (errno || end == colon + 1 || *end || p < 0 || p > 65535) return false;
  *port = (int)p;
  return true;
}

/* Binds a TCP socket; with `share`, SO_REUSEPORT lets the workers' sockets share the port. */
static int bind_tcp(const struct sockaddr *sa, socklen_t len, bool share) {
  const int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (share && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
      (sa->sa_family == AF_INET6 &&
       setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
      bind(fd, sa, len) != 0) {
    const int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

static int port_of(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void set_port(struct sockaddr_storage *ss, int port) {
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* Resolves "HOST:PORT" or "[V6]:PORT" into `ss`. Returns 0 or a negative extproc_error. */
static int resolve_tcp(const char *address, struct sockaddr_storage *ss, socklen_t *sslen,
                       int *port) {
  char host[256];
  if (!split_host_port(address, host, sizeof(host), port)) return EXTPROC_EINVAL;
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  char service[8];
  snprintf(service, sizeof(service), "%d", *port);
  const int gai = getaddrinfo(host, service, &hints, &ai);
  if (gai != 0) {
    log_line(EXTPROC_LOG_ERROR, "listen %s: %s", address, gai_strerror(gai));
    return EXTPROC_EINVAL;
  }
  memcpy(ss, ai->ai_addr, ai->ai_addrlen);
  *sslen = ai->ai_addrlen;
  freeaddrinfo(ai);
  return 0;
}

int listener_open_single(const char *address, int *port) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  const int rv = resolve_tcp(address, &ss, &sslen, port);
  if (rv != 0) return rv;
  const int fd = bind_tcp((struct sockaddr *)&ss, sslen, false);
  if (fd < 0 || listen(fd, LISTEN_BACKLOG) != 0) {
    log_line(EXTPROC_LOG_ERROR, "listen %s: %s", address, strerror(errno));
    if (fd >= 0) close(fd);
    return EXTPROC_EIO;
  }
  *port = port_of(fd);
  return fd;
}

static int open_tcp(const char *address, listener_spec *spec, unsigned workers) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  int port;
  const int rv = resolve_tcp(address, &ss, &sslen, &port);
  if (rv != 0) return rv;
  /* SO_REUSEPORT would also let another process join our port and take a share of Envoy's
   * connections (an old instance, say). A plain bind first makes a taken port an error. */
  if (port != 0) {
    const int probe = bind_tcp((struct sockaddr *)&ss, sslen, false);
    if (probe < 0) {
      log_line(EXTPROC_LOG_ERROR, "listen %s: %s", address, strerror(errno));
      return EXTPROC_EIO;
    }
    close(probe);
  }
  for (unsigned i = 0; i < workers; i++) {
    /* The first socket settles the port (maybe picked by the kernel); the rest join it. */
    spec->fds[i] = bind_tcp((struct sockaddr *)&ss, sslen, true);
    if (spec->fds[i] < 0) {
      log_line(EXTPROC_LOG_ERROR, "listen %s: %s", address, strerror(errno));
      return EXTPROC_EIO;
    }
    if (i == 0) {
      spec->port = port_of(spec->fds[0]);
      set_port(&ss, spec->port);
    }
  }
  return 0;
}

static int open_unix(const char *path, listener_spec *spec, unsigned mode) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (!*path || strlen(path) >= sizeof(sun.sun_path)) return EXTPROC_EINVAL;
  strcpy(sun.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return EXTPROC_EIO;
  /* A socket file nobody answers on is left over from an earlier run: replace it. One a live
   * server listens on is not ours to take. */
  if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
    log_line(EXTPROC_LOG_ERROR, "listen unix:%s: another server is listening there", path);
    close(fd);
    return EXTPROC_EIO;
  }
  close(fd);
  /* Only a socket is ever removed: a regular file at PATH is a mistake to report, not delete. */
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      log_line(EXTPROC_LOG_ERROR, "listen unix:%s: exists and is not a socket", path);
      return EXTPROC_EIO;
    }
    unlink(path);
  }
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return EXTPROC_EIO;
  if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
    log_line(EXTPROC_LOG_ERROR, "listen unix:%s: %s", path, strerror(errno));
    close(fd);
    return EXTPROC_EIO;
  }
  /* connect() needs write permission on the socket file, which bind() created with 0777 less
   * the umask. A chosen mode is set before listen(), so no client connects before it holds. */
  if (mode != 0 && chmod(path, (mode_t)mode) != 0) {
    log_line(EXTPROC_LOG_ERROR, "listen unix:%s: chmod %04o: %s", path, mode, strerror(errno));
    close(fd);
    unlink(path);
    return EXTPROC_EIO;
  }
  if (lstat(path, &st) == 0) {
    spec->unix_dev = (unsigned long long)st.st_dev;
    spec->unix_ino = (unsigned long long)st.st_ino;
  }
  spec->fds[0] = fd;
  spec->unix_path = strdup(path);
  return 0;
}

/* Removes the socket file the server created, unless it is no longer that file: in a rolling
 * restart the next instance, finding the path refused once our listener closed, replaces it with
 * its own while we still finish our streams, and must not lose it when we exit. */
static void remove_own_socket_file(const listener_spec *spec) {
  struct stat st;
  if (lstat(spec->unix_path, &st) != 0 || !S_ISSOCK(st.st_mode)) return;
  if ((unsigned long long)st.st_dev != spec->unix_dev ||
      (unsigned long long)st.st_ino != spec->unix_ino)
    return;
  unlink(spec->unix_path);
}

int listener_open(const char *address, listener_spec *spec, unsigned workers, unsigned unix_mode) {
  spec->fds = malloc(workers * sizeof(int));
  if (!spec->fds) return EXTPROC_ENOMEM;
  for (unsigned i = 0; i < workers; i++)
    spec->fds[i] = -1;
  int rv;
  if (strncmp(address, "unix:", 5) == 0) {
    spec->is_unix = true;
    rv = open_unix(address + 5, spec, unix_mode);
  } else {
    rv = open_tcp(address, spec, workers);
  }
  if (rv != 0) listener_spec_free(spec, workers);
  return rv;
}

void listener_spec_free(listener_spec *spec, unsigned workers) {
  if (spec->unix_path) { /* the socket file we made goes with the server */
    remove_own_socket_file(spec);
    free(spec->unix_path);
    spec->unix_path = NULL;
  }
  if (!spec->fds) return;
  for (unsigned i = 0; i < workers; i++)
    if (spec->fds[i] >= 0) close(spec->fds[i]);
  free(spec->fds);
  spec->fds = NULL;
}

/* ---- Accepting -------------------------------------------------------------------------
 *
 * libuv's uv_listen cannot be paused (there is no uv_listen_stop), and on EMFILE it applies its
 * own remedy: it closes a spare descriptor it keeps per loop, accepts and at once closes every
 * pending connection, and reopens the spare. With several loops in one process the descriptor
 * freed by one loop is taken by another thread in between, the remedy fails, and uv_listen's
 * accept loop calls back with EMFILE again and again without returning to the event loop: the
 * busy loop this replaces. Closing the listener handle and reopening it from a dup'ed
 * descriptor would stop that loop, but needs a spare descriptor at exactly the moment there are
 * none. So the listening socket is watched with a uv_poll_t and accepted from here: stopping
 * the poll handle stops accepting, at once and without any descriptor, and starting it again
 * resumes; connections that arrive meanwhile wait in the kernel's listen queue. */

/* Connections accepted per readiness event, so one busy listener cannot hold the loop. */
enum { ACCEPTS_PER_EVENT = 128 };
/* Backoff before accept() is tried again after running out of descriptors or memory (anything
 * in the process may free one, and nothing tells us) or at the connection limit (a connection
 * closing on another worker does not wake this one; one closing on this worker does at once). */
enum { ACCEPT_RETRY_MS = 100 };

static void on_listen_readable(uv_poll_t *poll, int status, int events);

static void stop_polling(listener *l) {
  if (!l->polling) return;
  uv_poll_stop(&l->poll);
  l->polling = false;
}

/* Stops accepting on `l` for `why`. The first pause of an episode is counted and logged. */
static void pause_accepting(listener *l, accept_pause why, int err) {
  stop_polling(l);
  worker_resume_accept_later(l->w, ACCEPT_RETRY_MS);
  if (l->paused == why) return; /* still the same episode: retried and paused again */
  l->paused = why;
  transport_stats *stats = l->w->stats;
  if (why == PAUSED_MAX_CONNECTIONS)
    limit_hit(stats, LIMIT_MAX_CONNECTIONS,
              "max_connections (%llu) reached: not accepting until a connection closes",
              (unsigned long long)l->w->cfg->max_connections);
  else
    limit_hit(stats, LIMIT_FILE_DESCRIPTORS,
              "accept: %s: not accepting for %d ms (raise the open-file limit, ulimit -n, or "
              "lower max_connections)",
              strerror(err), ACCEPT_RETRY_MS);
}

/* Takes one of the max_connections slots, or returns false at the limit. */
static bool take_slot(transport_stats *stats, uint64_t max) {
  if (atomic_fetch_add(&stats->connections_open, 1) < max) return true;
  atomic_fetch_sub(&stats->connections_open, 1);
  return false;
}

/* Accepts one connection. Returns false when the listener should wait for the next event. */
static bool accept_one(listener *l) {
  worker *w = l->w;
  if (!take_slot(w->stats, w->cfg->max_connections)) {
    pause_accepting(l, PAUSED_MAX_CONNECTIONS, 0);
    return false;
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  const int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    atomic_fetch_sub(&w->stats->connections_open, 1);
    if (err == EINTR || err == ECONNABORTED) return true; /* nothing to do about those */
    if (err == EAGAIN || err == EWOULDBLOCK) {
      l->paused = ACCEPTING; /* the queue is empty: any pause is over */
      return false;
    }
    /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected: back off, never spin. */
    pause_accepting(l, PAUSED_NO_FDS, err);
    return false;
  }
  l->paused = ACCEPTING;
  atomic_fetch_add(&w->stats->connections_accepted_total, 1);
  char peer[PEER_TEXT_BYTES];
  peer_describe(&ss, l->spec->unix_path, peer, sizeof(peer));
  connection_accept(l, fd, peer);
  return true;
}

static void on_listen_readable(uv_poll_t *poll, int status, int events) {
  (void)events;
  listener *l = poll->data;
  if (status < 0) {
    log_line(EXTPROC_LOG_WARN, "listening socket: %s", uv_strerror(status));
    return;
  }
  for (int i = 0; i < ACCEPTS_PER_EVENT && l->polling; i++)
    if (!accept_one(l)) return;
}

void listener_resume(listener *l) {
  if (l->polling || l->fd < 0) return;
  if (uv_poll_start(&l->poll, UV_READABLE, on_listen_readable) == 0) l->polling = true;
}

static void on_listener_closed(uv_handle_t *h) {
  listener *l = h->data;
  if (l->fd >= 0) close(l->fd); /* a poll handle never closes its descriptor */
  l->fd = -1;
}

void listener_stop(listener *l) {
  l->polling = false;
  if (!uv_is_closing((uv_handle_t *)&l->poll))
    uv_close((uv_handle_t *)&l->poll, on_listener_closed);
}

int listener_start(worker *w, listener_spec *spec, listener *l) {
  const int fd = spec->fds[w->index];
  l->w = w;
  l->spec = spec;
  l->fd = -1;
  l->paused = ACCEPTING;
  if (listen(fd, LISTEN_BACKLOG) != 0) return uv_translate_sys_error(errno);
  const int rv = uv_poll_init_socket(&w->loop, &l->poll, fd);
  if (rv != 0) return rv;
  l->poll.data = l;
  const int started = uv_poll_start(&l->poll, UV_READABLE, on_listen_readable);
  if (started != 0) return started; /* the socket stays the spec's, closed with it */
  l->polling = true;
  l->fd = fd;
  spec->fds[w->index] = -1; /* ours now: closed with the poll handle */
  return 0;
}
