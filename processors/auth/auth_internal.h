/* What the auth processor's files share: its settings, the key set loaded from the key files,
 * the store that swaps key sets when the files change, and the token check. */
#ifndef EXTPROC_AUTH_INTERNAL_H
#define EXTPROC_AUTH_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <cjson/cJSON.h>

/* RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output. */
enum { AUTH_MIN_HS256_SECRET_BYTES = 32 };
/* Key files are a few keys; anything larger is a mistake (a wrong path), not a key file. */
enum { AUTH_MAX_KEY_FILE_BYTES = 1 << 20 };
/* A JWT in a header: Envoy's default header size limit is 60 KiB, real tokens are a few KiB;
 * 16 KiB bounds the decoding work an unauthenticated client can ask for. */
enum { AUTH_MAX_TOKEN_BYTES = 16 * 1024 };
/* Forwarded claims, required scopes and accepted audiences are short lists in a setting. */
enum { AUTH_MAX_LIST = 32 };
/* A forwarded claim's header value: objects and lists are forwarded as JSON, cut nowhere;
 * longer values are not forwarded (logged) rather than inflating every upstream request. */
enum { AUTH_MAX_FORWARD_VALUE_BYTES = 4096 };

/* ---- Settings (settings.c) ------------------------------------------------------------- */

typedef struct auth_forward {
  char *claim;  /* claim name in the token (or "sub" for an API key's name) */
  char *header; /* lower-case header name sent upstream */
} auth_forward;

typedef struct auth_settings {
  char *hs256_secret_file;        /* NULL: no HS256 */
  char *jwks_file;                /* NULL: no RS256/ES256 */
  char *api_keys_file;            /* NULL: no API keys */
  char *api_key_header;           /* lower-case; default x-api-key */
  char *issuer;                   /* NULL: iss not checked */
  char *audiences[AUTH_MAX_LIST]; /* any one must be in aud; none: aud not checked */
  size_t audience_count;
  char *required_scopes[AUTH_MAX_LIST]; /* all must be granted; none: no scope check */
  size_t required_scope_count;
  char *required_scope_text; /* as configured, for www-authenticate's scope= */
  auth_forward forwards[AUTH_MAX_LIST];
  size_t forward_count;
  char *metadata_namespace;
  char *realm;
  long clock_skew_s;
  long reload_interval_s; /* 0: files are read once, at start */
} auth_settings;

/* Whether any key file is configured. */
static inline bool auth_settings_have_keys(const auth_settings *s) {
  return s->hs256_secret_file || s->jwks_file || s->api_keys_file;
}

/* Reads every EXTPROC_AUTH_* variable. Returns 0, or -1 after logging the bad setting. No key
 * file at all is not an error here: the runner creates every processor it could serve, so an
 * unconfigured auth processor must still be created; it then refuses every request. */
int auth_settings_load(auth_settings *s);
void auth_settings_free(auth_settings *s);

/* ---- Key sets (keys.c) ----------------------------------------------------------------- */

typedef enum auth_key_type { AUTH_KEY_RSA, AUTH_KEY_EC_P256 } auth_key_type;

typedef struct auth_jwk {
  char *kid;          /* NULL when the JWK has none */
  char *alg;          /* the JWK's "alg", NULL when absent */
  auth_key_type type; /* from kty (and crv) */
  char *pem;          /* SubjectPublicKeyInfo PEM, what libjwt verifies with */
  size_t pem_len;
} auth_jwk;

typedef struct auth_api_key {
  unsigned char digest[32]; /* SHA-256 of the key */
  char *name;               /* "" when the line has none */
  char *scopes;             /* space-separated, "" for none */
} auth_api_key;

/* One generation of keys. Immutable once published; freed when the last reader lets go. */
typedef struct auth_keyset {
  atomic_long refs;
  unsigned char *hs256_secret;
  size_t hs256_secret_len;
  auth_jwk *jwks;
  size_t jwk_count;
  auth_api_key *api_keys;
  size_t api_key_count;
} auth_keyset;

/* Each loader reads its file whole (small; see AUTH_MAX_KEY_FILE_BYTES) into the key set.
 * Return 0, or -1 with `err` (at least 256 bytes) saying what is wrong. */
int auth_load_hs256_secret(const char *path, auth_keyset *ks, char *err, size_t errlen);
int auth_load_jwks(const char *path, auth_keyset *ks, char *err, size_t errlen);
int auth_load_api_keys(const char *path, auth_keyset *ks, char *err, size_t errlen);
/* Reads a whole file of at most AUTH_MAX_KEY_FILE_BYTES, NUL-terminated. NULL on error. */
char *auth_read_file(const char *path, size_t *len, char *err, size_t errlen);
void auth_keyset_free(auth_keyset *ks);
/* Decodes unpadded base64url (RFC 4648 section 5; padding is tolerated) into a new buffer,
 * NUL-terminated for convenience. NULL on a bad character or out-of-memory. */
unsigned char *auth_b64url_decode(const char *in, size_t inlen, size_t *outlen);

/* ---- The store: current key set and reloads (store.c) --------------------------------- */

/* What identifies a version of a key file without reading it. */
typedef struct auth_file_stamp {
  bool present;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
} auth_file_stamp;

enum { AUTH_FILE_SECRET, AUTH_FILE_JWKS, AUTH_FILE_API_KEYS, AUTH_FILE_COUNT };

typedef struct auth_store {
  const auth_settings *settings;
  pthread_mutex_t lock;       /* guards `current` against a reader taking a reference to a key
                               * set that a reload is dropping at the same time */
  auth_keyset *current;       /* holds one reference */
  atomic_llong next_check_ms; /* monotonic time of the next look at the files */
  atomic_bool checking;       /* one thread at a time looks at the files */
  auth_file_stamp stamps[AUTH_FILE_COUNT]; /* of the versions tried last; only the checker */
  atomic_ulong generation;                 /* key sets published so far; for tests and logs */
} auth_store;

/* Loads every configured file. Returns 0, or -1 after logging (at start a bad file is fatal). */
int auth_store_init(auth_store *st, const auth_settings *settings);
void auth_store_destroy(auth_store *st);
/* The current key set, with a reference the caller drops with auth_keyset_release(). At most
 * every reload interval, first looks at the files and, if one changed, loads them all into a
 * new key set that replaces the current one; a file that does not load is logged and the old
 * keys stay. Never NULL after a successful init. */
auth_keyset *auth_store_acquire(auth_store *st);
void auth_keyset_release(auth_keyset *ks);
/* Looks at the files now (what auth_store_acquire does when the interval has passed). */
void auth_store_check_files(auth_store *st);

/* ---- Checking a credential (verify.c) -------------------------------------------------- */

typedef enum auth_outcome {
  AUTH_OK,
  AUTH_MISSING,            /* no credential at all: 401 without an error code (RFC 6750 3.1) */
  AUTH_INVALID_REQUEST,    /* malformed authorization header: 400-class, sent as 401 */
  AUTH_INVALID_TOKEN,      /* bad, expired or unverifiable credential: 401 */
  AUTH_INSUFFICIENT_SCOPE, /* valid, but lacks a required scope: 403 */
} auth_outcome;

typedef struct auth_verdict {
  auth_outcome outcome;
  const char *reason; /* static text for the error body and the debug log */
  const char *method; /* "jwt" or "api_key" once known */
  cJSON *claims;      /* owned; the token's claims, or {"sub": name, "scope": ...} for a key */
} auth_verdict;

/* Checks the bearer token (`authorization` value, may be NULL) or else the API key (may be
 * NULL) against the key set and the settings at `now` (seconds since the epoch). The caller
 * frees verdict->claims with cJSON_Delete. */
void auth_check(const auth_settings *s, const auth_keyset *ks, const char *authorization,
                const char *api_key, time_t now, auth_verdict *verdict);

/* Whether `granted` (space-separated) or the claims' "scope"/"scp" grant every required
 * scope. */
bool auth_scopes_granted(const auth_settings *s, const cJSON *claims);

#endif
