/* Listening sockets. Sockets are created and bound when the listener is added (so a port 0
 * listener knows its port at once); each worker then listens on its own TCP socket with
 * SO_REUSEPORT, which lets the kernel spread connections over the loops without a shared
 * accept queue. */
#include "transport/listener.h"

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

static int open_unix(const char *path, listener_spec *spec) {
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
  spec->fds[0] = fd;
  spec->unix_path = strdup(path);
  return 0;
}

int listener_open(const char *address, listener_spec *spec, unsigned workers) {
  spec->fds = malloc(workers * sizeof(int));
  if (!spec->fds) return EXTPROC_ENOMEM;
  for (unsigned i = 0; i < workers; i++)
    spec->fds[i] = -1;
  int rv;
  if (strncmp(address, "unix:", 5) == 0) {
    spec->is_unix = true;
    rv = open_unix(address + 5, spec);
  } else {
    rv = open_tcp(address, spec, workers);
  }
  if (rv != 0) listener_spec_free(spec, workers);
  return rv;
}

void listener_spec_free(listener_spec *spec, unsigned workers) {
  if (spec->unix_path) { /* the socket file we made goes with the server */
    unlink(spec->unix_path);
    free(spec->unix_path);
    spec->unix_path = NULL;
  }
  if (!spec->fds) return;
  for (unsigned i = 0; i < workers; i++)
    if (spec->fds[i] >= 0) close(spec->fds[i]);
  free(spec->fds);
  spec->fds = NULL;
}

static void on_connection(uv_stream_t *server, int status) {
  listener *l = server->data;
  if (status < 0) {
    log_line(EXTPROC_LOG_WARN, "accept: %s", uv_strerror(status));
    return;
  }
  connection_accept(l);
}

int listener_start(worker *w, listener_spec *spec, listener *l) {
  const int fd = spec->fds[w->index];
  l->w = w;
  l->spec = spec;
  int rv = spec->is_unix ? uv_pipe_init(&w->loop, &l->h.pipe, 0) : uv_tcp_init(&w->loop, &l->h.tcp);
  if (rv != 0) return rv;
  l->h.handle.data = l;
  rv = spec->is_unix ? uv_pipe_open(&l->h.pipe, fd) : uv_tcp_open(&l->h.tcp, fd);
  if (rv == 0) {
    spec->fds[w->index] = -1; /* the handle owns it now */
    rv = uv_listen(&l->h.stream, LISTEN_BACKLOG, on_connection);
  }
  return rv;
}
