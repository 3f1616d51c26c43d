/* The auth processor in process: settings it refuses, what the harness sees of a refused and an
 * admitted request (tokens minted with libjwt itself), and key sets swapped by reloads while
 * four threads check tokens with them (run under ThreadSanitizer in the TSan pass). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jwt.h>

#include "auth.h"
#include "auth_internal.h"
#include "extproc/testing.h"

#define SECRET_A "secret-a-0123456789abcdef0123456789abcdef"
#define SECRET_B "secret-b-0123456789abcdef0123456789abcdef"

typedef struct fixture {
  char dir[64];
  char secret[96];
  char api_keys[96];
} fixture;

static void write_file(const char *path, const char *text) {
  char tmp[128];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(rename(tmp, path), 0); /* replaced at once, as a deployment would */
}

static int setup(void **state) {
  fixture *fx = calloc(1, sizeof(*fx));
  strcpy(fx->dir, "/tmp/auth-test-XXXXXX");
  if (!mkdtemp(fx->dir)) return -1;
  snprintf(fx->secret, sizeof(fx->secret), "%s/secret", fx->dir);
  snprintf(fx->api_keys, sizeof(fx->api_keys), "%s/api-keys", fx->dir);
  write_file(fx->secret, SECRET_A "\n");
  /* SHA-256 of "k1". */
  write_file(fx->api_keys,
             "# comment\n\n"
             "6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2c446f0e58668b09c08a16dd0 svc read\n");
  setenv("EXTPROC_AUTH_HS256_SECRET_FILE", fx->secret, 1);
  setenv("EXTPROC_AUTH_API_KEYS_FILE", fx->api_keys, 1);
  setenv("EXTPROC_AUTH_AUDIENCE", "api", 1);
  setenv("EXTPROC_AUTH_FORWARD_CLAIMS", "sub:x-user,tier:x-tier", 1);
  unsetenv("EXTPROC_AUTH_CLOCK_SKEW");
  unsetenv("EXTPROC_AUTH_JWKS_FILE");
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fixture *fx = *state;
  unlink(fx->secret);
  unlink(fx->api_keys);
  rmdir(fx->dir);
  free(fx);
  return 0;
}

static char *mint(const char *secret, const char *aud, long exp_from_now) {
  jwt_t *j;
  assert_int_equal(jwt_new(&j), 0);
  jwt_add_grant(j, "sub", "alice");
  jwt_add_grant(j, "aud", aud);
  jwt_add_grant_int(j, "exp", (long)time(NULL) + exp_from_now);
  jwt_add_grant_int(j, "tier", 3);
  assert_int_equal(
      jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret)), 0);
  char *token = jwt_encode_str(j);
  jwt_free(j);
  assert_non_null(token);
  return token;
}

static void test_bad_settings_create_no_processor(void **state) {
  (void)state;
  setenv("EXTPROC_AUTH_CLOCK_SKEW", "soon", 1);
  assert_null(auth_processor_new());
  setenv("EXTPROC_AUTH_CLOCK_SKEW", "5", 1);
  setenv("EXTPROC_AUTH_FORWARD_CLAIMS", "sub", 1); /* no header name */
  assert_null(auth_processor_new());
  setenv("EXTPROC_AUTH_FORWARD_CLAIMS", "sub:x-user,tier:x-tier", 1);
  setenv("EXTPROC_AUTH_JWKS_FILE", "/nonexistent/jwks.json", 1);
  assert_null(auth_processor_new());
  unsetenv("EXTPROC_AUTH_JWKS_FILE");
  unsetenv("EXTPROC_AUTH_CLOCK_SKEW");
}

/* The runner creates every processor, served or not: without key files the processor is still
 * created, and refuses every request. */
static void test_unconfigured_processor_refuses_everything(void **state) {
  (void)state;
  unsetenv("EXTPROC_AUTH_HS256_SECRET_FILE");
  unsetenv("EXTPROC_AUTH_API_KEYS_FILE");
  extproc_processor *proc = auth_processor_new();
  assert_non_null(proc);
  extproc_harness *h;
  char *token = mint(SECRET_A, "api", 60);
  char auth[1024];
  snprintf(auth, sizeof(auth), "Bearer %s", token);
  const char *req[] = {":method", "GET",       ":path", "/", "authorization",
                       auth,      "x-api-key", "k1",    NULL};
  assert_int_equal(extproc_harness_new(&h, proc), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, req, true), 0);
  const extproc_harness_reply *r = extproc_harness_immediate_response(h);
  assert_non_null(r);
  assert_int_equal(r->immediate_status, 401);
  extproc_harness_free(h);
  free(token);
  extproc_processor_free(proc);
}

static void test_short_secret_is_refused(void **state) {
  fixture *fx = *state;
  write_file(fx->secret, "too-short\n");
  assert_null(auth_processor_new());
  write_file(fx->secret, SECRET_A "\n");
}

static void test_refused_and_admitted_requests(void **state) {
  (void)state;
  extproc_processor *proc = auth_processor_new();
  assert_non_null(proc);
  extproc_harness *h;

  /* No credential: 401, a bare challenge, a JSON body. */
  assert_int_equal(extproc_harness_new(&h, proc), 0);
  const char *none[] = {":method", "GET", ":path", "/", NULL};
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, none, true), 0);
  const extproc_harness_reply *r = extproc_harness_immediate_response(h);
  assert_non_null(r);
  assert_int_equal(r->immediate_status, 401);
  assert_string_equal(extproc_harness_client_header(h, "www-authenticate"),
                      "Bearer realm=\"extproc\"");
  assert_memory_equal(r->body, "{\"error\":\"unauthorized\"", 23);
  extproc_harness_free(h);

  /* A good token with a forged x-user: replaced by the claim, tier forwarded as a number. */
  char *token = mint(SECRET_A, "api", 60);
  char auth[1024];
  snprintf(auth, sizeof(auth), "Bearer %s", token);
  const char *good[] = {":method", "GET",    ":path",   "/", "authorization",
                        auth,      "x-user", "mallory", NULL};
  assert_int_equal(extproc_harness_new(&h, proc), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, good, true), 0);
  assert_null(extproc_harness_immediate_response(h));
  assert_string_equal(extproc_harness_upstream_header(h, "x-user"), "alice");
  assert_string_equal(extproc_harness_upstream_header(h, "x-tier"), "3");
  r = extproc_harness_last_reply(h);
  const extproc_value *md = extproc_harness_reply_metadata(r, "extproc.auth");
  const extproc_value *sub = extproc_value_field(md, "sub");
  assert_string_equal(extproc_value_string(sub), "alice");
  assert_string_equal(extproc_value_string(extproc_value_field(md, "auth_method")), "jwt");
  extproc_harness_free(h);
  free(token);

  /* Wrong audience and wrong secret: 401 invalid_token. */
  const char *bad_secret = SECRET_B;
  for (int i = 0; i < 2; i++) {
    token = i == 0 ? mint(SECRET_A, "other", 60) : mint(bad_secret, "api", 60);
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    const char *bad[] = {":method", "GET", ":path", "/", "authorization", auth, NULL};
    assert_int_equal(extproc_harness_new(&h, proc), 0);
    assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, bad, true), 0);
    r = extproc_harness_immediate_response(h);
    assert_non_null(r);
    assert_int_equal(r->immediate_status, 401);
    assert_non_null(strstr(extproc_harness_client_header(h, "www-authenticate"),
                           i == 0 ? "wrong audience" : "bad signature"));
    extproc_harness_free(h);
    free(token);
  }

  /* An API key, by its digest. */
  const char *keyed[] = {":method", "GET", ":path", "/", "x-api-key", "k1", NULL};
  assert_int_equal(extproc_harness_new(&h, proc), 0);
  assert_int_equal(extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, keyed, true), 0);
  assert_null(extproc_harness_immediate_response(h));
  assert_string_equal(extproc_harness_upstream_header(h, "x-user"), "svc");
  extproc_harness_free(h);
  extproc_processor_free(proc);
}

/* ---- Reloads while other threads read ---------------------------------------------------- */

enum { READERS = 4, ROUNDS = 40 };

typedef struct reader_args {
  auth_store *store;
  auth_settings *settings;
  const char *token;
  atomic_bool *stop;
  long ok, refused;
} reader_args;

static void *reader(void *p) {
  reader_args *a = p;
  char auth[1024];
  snprintf(auth, sizeof(auth), "Bearer %s", a->token);
  while (!atomic_load(a->stop)) {
    auth_keyset *ks = auth_store_acquire(a->store);
    auth_verdict v;
    auth_check(a->settings, ks, auth, NULL, time(NULL), &v);
    auth_keyset_release(ks);
    if (v.outcome == AUTH_OK)
      a->ok++;
    else
      a->refused++;
    cJSON_Delete(v.claims);
  }
  return NULL;
}

static void test_reloads_while_threads_check_tokens(void **state) {
  fixture *fx = *state;
  auth_settings settings;
  assert_int_equal(auth_settings_load(&settings), 0);
  auth_store store;
  assert_int_equal(auth_store_init(&store, &settings), 0);
  char *token = mint(SECRET_A, "api", 60);
  atomic_bool stop = false;
  reader_args args[READERS];
  pthread_t threads[READERS];
  for (int i = 0; i < READERS; i++) {
    args[i] = (reader_args){&store, &settings, token, &stop, 0, 0};
    assert_int_equal(pthread_create(&threads[i], NULL, reader, &args[i]), 0);
  }
  /* Alternate the secret; a broken file (too short) in between keeps the keys. */
  for (int round = 0; round < ROUNDS; round++) {
    write_file(fx->secret, round % 3 == 2 ? "short\n" : round % 2 ? SECRET_B : SECRET_A);
    auth_store_check_files(&store);
    usleep(2000);
  }
  atomic_store(&stop, true);
  long ok = 0, refused = 0;
  for (int i = 0; i < READERS; i++) {
    pthread_join(threads[i], NULL);
    ok += args[i].ok, refused += args[i].refused;
  }
  /* Both key sets were in use: tokens were accepted under A and refused under B. */
  assert_true(ok > 0);
  assert_true(refused > 0);
  assert_true(atomic_load(&store.generation) > 10);
  free(token);
  auth_store_destroy(&store);
  auth_settings_free(&settings);
  write_file(fx->secret, SECRET_A "\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bad_settings_create_no_processor, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unconfigured_processor_refuses_everything, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_short_secret_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_and_admitted_requests, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reloads_while_threads_check_tokens, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
