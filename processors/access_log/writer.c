/* The access log's writer thread: a bounded queue in front of a file with size-based rotation
 * (see writer.h). */
#include "writer.h"

#include <errno.h>
#include <extproc/extproc.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Lines are copied into one buffer and written with one call; past this many bytes the
 * buffer is written out first, so a large batch never needs a buffer as large as the queue. */
#define WRITE_CHUNK_BYTES (1u << 20)
/* A file that cannot be opened is tried again after this long; lines meanwhile are lost. */
#define REOPEN_RETRY_MS 1000
/* Drops are logged at most this often (plus once at the end), so a full disk under heavy
 * traffic makes one line a second, not one per lost line. */
#define DROP_REPORT_MS 1000
/* A file name with a rotation suffix ".N" must fit in this. */
#define ROTATED_NAME_MAX 4096

typedef struct al_line {
  char *text;
  size_t len;
} al_line;

struct al_writer {
  /* Settings, read-only after al_writer_new. */
  char *path;
  bool to_stdout;
  uint64_t max_bytes;
  unsigned keep;
  size_t queue_lines, queue_bytes;

  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t has_work; /* the writer waits on it for lines */
  pthread_cond_t idle;     /* al_writer_flush waits on it for an empty queue */

  /* Under mu. */
  al_line *ring;
  size_t head, count, bytes;
  bool stop, busy, waiting;
  al_writer_stats stats;

  /* The writer thread's own. */
  al_line *batch;
  char *buf;
  size_t buf_cap;
  int fd;
  uint64_t size;      /* bytes in the file, as far as this writer knows */
  uint64_t reopen_at; /* monotonic ms before which no open is tried */
  int failing;        /* errno of the last write if it failed, else 0 */
  uint64_t reported_drops, last_report;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- the file */

static void open_file(al_writer *w) {
  if (w->fd >= 0) return;
  if (w->to_stdout) {
    w->fd = STDOUT_FILENO;
    return;
  }
  if (now_ms() < w->reopen_at) return;
  /* 0640: lines may carry headers and bodies, which are nobody else's business. */
  int fd = open(w->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "access-log: cannot open %s: %s", w->path,
                strerror(errno));
    if (fd >= 0) close(fd);
    w->reopen_at = now_ms() + REOPEN_RETRY_MS;
    return;
  }
  w->fd = fd;
  w->size = (uint64_t)st.st_size;
}

static void close_file(al_writer *w) {
  if (w->fd >= 0 && !w->to_stdout) close(w->fd);
  w->fd = -1;
}

/* path.(i) for i > 0, path itself for 0. */
static bool rotated_name(const al_writer *w, unsigned i, char *out, size_t cap) {
  int n = i ? snprintf(out, cap, "%s.%u", w->path, i) : snprintf(out, cap, "%s", w->path);
  return n > 0 && (size_t)n < cap;
}

/* path.(keep-1) -> path.keep, ..., path -> path.1: the oldest falls off the end. */
static void rotate(al_writer *w) {
  close_file(w);
  char from[ROTATED_NAME_MAX], to[ROTATED_NAME_MAX];
  for (unsigned i = w->keep; i > 0; i--) {
    if (!rotated_name(w, i - 1, from, sizeof(from)) || !rotated_name(w, i, to, sizeof(to))) return;
    if (rename(from, to) != 0 && errno != ENOENT)
      extproc_log(NULL, EXTPROC_LOG_WARN, "access-log: cannot rename %s to %s: %s", from, to,
                  strerror(errno));
  }
  pthread_mutex_lock(&w->mu);
  w->stats.rotations++;
  pthread_mutex_unlock(&w->mu);
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return k < 0 ? errno : EIO;
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Writes the `lines` lines in buf[0, used). On failure they are lost: the file is cut back to
 * its last whole line (a later line must not be glued to half of this one) and reopened at
 * the next write. */
static void write_out(al_writer *w, size_t lines, size_t used, uint64_t *written, uint64_t *lost) {
  if (lines == 0) return;
  open_file(w);
  if (w->fd < 0) {
    *lost += lines;
    return;
  }
  int err = write_all(w->fd, w->buf, used);
  if (err == 0) {
    w->size += used;
    *written += lines;
    if (w->failing)
      extproc_log(NULL, EXTPROC_LOG_WARN, "access-log: writing %s works again", w->path);
    w->failing = 0;
    return;
  }
  *lost += lines;
  /* Once per spell of failures: the drop reports count the lines lost meanwhile. */
  if (err != w->failing)
    extproc_log(NULL, EXTPROC_LOG_ERROR,
                "access-log: writing %s failed: %s; lines are dropped until it works again",
                w->path, strerror(err));
  w->failing = err;
  if (w->to_stdout) return;
  if (ftruncate(w->fd, (off_t)w->size) != 0) w->size = 0; /* unknown now: reread at reopen */
  close_file(w);
}

static bool reserve(al_writer *w, size_t need) {
  if (need <= w->buf_cap) return true;
  size_t cap = w->buf_cap ? w->buf_cap : 4096;
  while (cap < need)
    cap *= 2;
  char *buf = realloc(w->buf, cap);
  if (!buf) return false;
  w->buf = buf;
  w->buf_cap = cap;
  return true;
}

static bool must_rotate(const al_writer *w, size_t used, size_t need) {
  if (w->to_stdout || w->max_bytes == 0) return false;
  uint64_t size = w->size + used;
  /* A line larger than max_bytes still goes into a file of its own. */
  return size > 0 && size + need > w->max_bytes;
}

static void write_batch(al_writer *w, size_t n, uint64_t *written, uint64_t *lost) {
  size_t used = 0, pending = 0;
  open_file(w); /* the size must be known before deciding to rotate */
  for (size_t i = 0; i < n; i++) {
    const al_line *l = &w->batch[i];
    size_t need = l->len + 1;
    if (pending && (used + need > WRITE_CHUNK_BYTES || must_rotate(w, used, need))) {
      write_out(w, pending, used, written, lost);
      used = pending = 0;
    }
    if (must_rotate(w, 0, need)) {
      rotate(w);
      open_file(w);
    }
    if (!reserve(w, used + need)) {
      (*lost)++;
      continue;
    }
    memcpy(w->buf + used, l->text, l->len);
    w->buf[used + l->len] = '\n';
    used += need;
    pending++;
  }
  write_out(w, pending, used, written, lost);
  for (size_t i = 0; i < n; i++)
    free(w->batch[i].text);
}

/* ---------------------------------------------------------------- the thread */

static size_t take_batch(al_writer *w) {
  size_t n = w->count;
  for (size_t i = 0; i < n; i++)
    w->batch[i] = w->ring[(w->head + i) % w->queue_lines];
  w->head = 0;
  w->count = 0;
  w->bytes = 0;
  return n;
}

/* Called with mu held: logs (after unlocking) the drops since the last report, at most once
 * per DROP_REPORT_MS unless `final`. */
static void report_drops(al_writer *w, bool final) {
  uint64_t queue = w->stats.dropped_queue, lost = w->stats.dropped_write;
  uint64_t all = queue + lost, now = now_ms();
  if (all == w->reported_drops || (!final && now - w->last_report < DROP_REPORT_MS)) return;
  uint64_t since = all - w->reported_drops;
  w->reported_drops = all;
  w->last_report = now;
  pthread_mutex_unlock(&w->mu);
  extproc_log(NULL, EXTPROC_LOG_WARN,
              "access-log: %llu lines dropped (%llu in all: %llu queue full, %llu write failed)",
              (unsigned long long)since, (unsigned long long)all, (unsigned long long)queue,
              (unsigned long long)lost);
  pthread_mutex_lock(&w->mu);
}

static void wait_for_work(al_writer *w) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += DROP_REPORT_MS / 1000;
  w->waiting = true;
  pthread_cond_timedwait(&w->has_work, &w->mu, &until);
  w->waiting = false;
}

static void *run(void *arg) {
  al_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    report_drops(w, false);
    if (w->count == 0 && w->stop) break;
    if (w->count == 0) {
      wait_for_work(w);
      continue;
    }
    size_t n = take_batch(w);
    w->busy = true;
    pthread_mutex_unlock(&w->mu);
    uint64_t written = 0, lost = 0;
    write_batch(w, n, &written, &lost);
    pthread_mutex_lock(&w->mu);
    w->busy = false;
    w->stats.written += written;
    w->stats.dropped_write += lost;
    if (w->count == 0) pthread_cond_broadcast(&w->idle);
  }
  report_drops(w, true);
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---------------------------------------------------------------- the API */

bool al_writer_push(al_writer *w, char *line, size_t len) {
  pthread_mutex_lock(&w->mu);
  bool fits = w->count < w->queue_lines && len < w->queue_bytes - w->bytes;
  if (fits) {
    w->ring[(w->head + w->count) % w->queue_lines] = (al_line){line, len};
    w->count++;
    w->bytes += len + 1;
    if (w->waiting) pthread_cond_signal(&w->has_work);
  } else {
    w->stats.dropped_queue++;
  }
  pthread_mutex_unlock(&w->mu);
  if (!fits) free(line);
  return fits;
}

void al_writer_flush(al_writer *w) {
  pthread_mutex_lock(&w->mu);
  if (w->waiting) pthread_cond_signal(&w->has_work);
  while (w->count > 0 || w->busy)
    pthread_cond_wait(&w->idle, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

void al_writer_stats_get(al_writer *w, al_writer_stats *out) {
  pthread_mutex_lock(&w->mu);
  *out = w->stats;
  pthread_mutex_unlock(&w->mu);
}

static void destroy(al_writer *w) {
  close_file(w);
  pthread_cond_destroy(&w->idle);
  pthread_cond_destroy(&w->has_work);
  pthread_mutex_destroy(&w->mu);
  free(w->buf);
  free(w->batch);
  free(w->ring);
  free(w->path);
  free(w);
}

static bool init_sync(al_writer *w) {
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return false;
  /* The writer's timed wait must not jump with the wall clock. */
  bool ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
            pthread_cond_init(&w->has_work, &attr) == 0;
  pthread_condattr_destroy(&attr);
  return ok && pthread_cond_init(&w->idle, NULL) == 0 && pthread_mutex_init(&w->mu, NULL) == 0;
}

int al_writer_new(al_writer **out, const al_writer_options *opts) {
  *out = NULL;
  if (!opts->path || !*opts->path || opts->keep == 0 || opts->queue_lines == 0 ||
      opts->queue_bytes == 0)
    return -1;
  al_writer *w = calloc(1, sizeof(*w));
  if (!w) return -1;
  w->fd = -1;
  w->path = strdup(opts->path);
  w->to_stdout = strcmp(opts->path, "-") == 0;
  w->max_bytes = opts->max_bytes;
  w->keep = opts->keep;
  w->queue_lines = opts->queue_lines;
  w->queue_bytes = opts->queue_bytes;
  w->ring = calloc(opts->queue_lines, sizeof(al_line));
  w->batch = calloc(opts->queue_lines, sizeof(al_line));
  if (!w->path || !w->ring || !w->batch || !init_sync(w)) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "access-log: out of memory");
    free(w->batch), free(w->ring), free(w->path), free(w);
    return -1;
  }
  /* A file that cannot be opened at start is a bad setting, not something to find out later. */
  open_file(w);
  if (w->fd < 0) {
    destroy(w);
    return -1;
  }
  /* The writer takes no signal: a SIGTERM sent to the process must reach the server's handler,
   * not kill the process through this thread while no handler is installed (at start-up, or as
   * the server closes its handles). */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  const int created = pthread_create(&w->thread, NULL, run, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (created != 0) {
    extproc_log(NULL, EXTPROC_LOG_ERROR, "access-log: cannot start the writer thread");
    destroy(w);
    return -1;
  }
  *out = w;
  return 0;
}

void al_writer_free(al_writer *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_signal(&w->has_work);
  pthread_mutex_unlock(&w->mu);
  pthread_join(w->thread, NULL);
  destroy(w);
}
