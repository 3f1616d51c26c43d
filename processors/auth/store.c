/* The current key set, and its replacement when a key file changes.
 *
 * Readers run on every worker loop. Each takes a reference to the current key set for the
 * length of one check and drops it after, so a reload never frees keys in use: it publishes the
 * new set and drops the store's reference to the old one, which is freed by whoever lets go
 * last. Taking the reference and reading the pointer happen under a mutex held for those two
 * instructions only (an atomic pointer alone would let a reader increment the count of a set
 * freed between its load and its increment).
 *
 * The files are looked at from the request path, at most once per reload interval, by one
 * thread at a time (the others go on with the current keys): a stat() per file, and only when
 * one changed (inode, size or modification time) are they read, on that loop. They are small
 * (1 MiB at most, a few KiB in practice) and change rarely, so that read is accepted on the
 * loop instead of a thread of its own. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth_internal.h"
#include "extproc/extproc.h"

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *file_path(const auth_settings *s, int which) {
  switch (which) {
  case AUTH_FILE_SECRET: return s->hs256_secret_file;
  case AUTH_FILE_JWKS: return s->jwks_file;
  default: return s->api_keys_file;
  }
}

static auth_file_stamp stamp_of(const char *path) {
  auth_file_stamp st = {0};
  struct stat sb;
  if (!path || stat(path, &sb) != 0) return st;
  st.present = true;
  st.dev = sb.st_dev;
  st.ino = sb.st_ino;
  st.size = sb.st_size;
  st.mtime = sb.st_mtim;
  return st;
}

static bool same_stamp(const auth_file_stamp *a, const auth_file_stamp *b) {
  return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Loads every configured file into a new key set with one reference; NULL after logging. */
static auth_keyset *load_all(const auth_settings *s) {
  auth_keyset *ks = calloc(1, sizeof(*ks));
  if (!ks) return NULL;
  atomic_init(&ks->refs, 1);
  char err[512] = "out of memory";
  int rv = 0;
  if (s->hs256_secret_file) rv = auth_load_hs256_secret(s->hs256_secret_file, ks, err, sizeof(err));
  if (rv == 0 && s->jwks_file) rv = auth_load_jwks(s->jwks_file, ks, err, sizeof(err));
  if (rv == 0 && s->api_keys_file) rv = auth_load_api_keys(s->api_keys_file, ks, err, sizeof(err));
  if (rv == 0) return ks;
  extproc_log(NULL, EXTPROC_LOG_ERROR, "auth: key file not loaded: %s", err);
  auth_keyset_free(ks);
  return NULL;
}

int auth_store_init(auth_store *st, const auth_settings *settings) {
  memset(st, 0, sizeof(*st));
  st->settings = settings;
  for (int i = 0; i < AUTH_FILE_COUNT; i++)
    st->stamps[i] = stamp_of(file_path(settings, i));
  st->current = load_all(settings);
  if (!st->current) return -1;
  pthread_mutex_init(&st->lock, NULL);
  atomic_init(&st->generation, 1);
  atomic_init(&st->checking, false);
  atomic_init(&st->next_check_ms, now_ms() + settings->reload_interval_s * 1000);
  return 0;
}

void auth_store_destroy(auth_store *st) {
  if (!st->current) return;
  auth_keyset_release(st->current);
  st->current = NULL;
  pthread_mutex_destroy(&st->lock);
}

void auth_keyset_release(auth_keyset *ks) {
  if (ks && atomic_fetch_sub(&ks->refs, 1) == 1) auth_keyset_free(ks);
}

static void publish(auth_store *st, auth_keyset *fresh) {
  pthread_mutex_lock(&st->lock);
  auth_keyset *old = st->current;
  st->current = fresh;
  pthread_mutex_unlock(&st->lock);
  const unsigned long gen = atomic_fetch_add(&st->generation, 1) + 1;
  extproc_log(NULL, EXTPROC_LOG_INFO,
              "auth: keys reloaded (generation %lu: %zu JWKS keys, %zu "
              "API keys%s)",
              gen, fresh->jwk_count, fresh->api_key_count,
              fresh->hs256_secret ? ", an HS256 secret" : "");
  auth_keyset_release(old);
}

void auth_store_check_files(auth_store *st) {
  bool changed = false;
  auth_file_stamp now[AUTH_FILE_COUNT];
  for (int i = 0; i < AUTH_FILE_COUNT; i++) {
    now[i] = stamp_of(file_path(st->settings, i));
    if (file_path(st->settings, i) && !same_stamp(&now[i], &st->stamps[i])) changed = true;
  }
  if (!changed) return;
  /* Remember this version even when it does not load, so a bad file is logged once and tried
   * again only when it changes again (a writer still busy with it changes it once more). */
  memcpy(st->stamps, now, sizeof(now));
  auth_keyset *fresh = load_all(st->settings);
  if (!fresh) {
    extproc_log(NULL, EXTPROC_LOG_WARN, "auth: keeping the keys loaded before");
    return;
  }
  publish(st, fresh);
}

static void maybe_check(auth_store *st) {
  if (st->settings->reload_interval_s == 0) return;
  const long long t = now_ms();
  if (t < atomic_load_explicit(&st->next_check_ms, memory_order_relaxed)) return;
  bool idle = false;
  if (!atomic_compare_exchange_strong(&st->checking, &idle, true)) return;
  /* Another thread may have checked between our look at the time and our turn. */
  if (t >= atomic_load(&st->next_check_ms)) {
    atomic_store(&st->next_check_ms, t + st->settings->reload_interval_s * 1000);
    auth_store_check_files(st);
  }
  atomic_store(&st->checking, false);
}

auth_keyset *auth_store_acquire(auth_store *st) {
  maybe_check(st);
  pthread_mutex_lock(&st->lock);
  auth_keyset *ks = st->current;
  atomic_fetch_add(&ks->refs, 1);
  pthread_mutex_unlock(&st->lock);
  return ks;
}
