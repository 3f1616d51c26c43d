/* The option table's parser: flags, environment variables, precedence, units, bad values naming
 * the flag or variable with the allowed range, and --help listing every option. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "extproc/server.h"
#include "server/options.h"

/* A fake environment: NAME=VALUE pairs, NULL-terminated. */
static const char *const *fake_env;

static const char *lookup(const char *name) {
  for (const char *const *p = fake_env; p && *p; p += 2)
    if (strcmp(p[0], name) == 0) return p[1];
  return NULL;
}

static char error[512];

/* Parses `args` (NULL-terminated, without argv[0]) with environment `env`. */
static options_outcome parse(main_settings *s, const char *const *env, const char **args) {
  char *argv[32] = {"prog"};
  int argc = 1;
  for (; args && args[argc - 1]; argc++)
    argv[argc] = (char *)args[argc - 1];
  fake_env = env;
  return options_parse(s, argc, argv, lookup, error, sizeof(error));
}

#define ARGS(...) ((const char *[]){__VA_ARGS__, NULL})
#define ENV(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_defaults_match_the_server(void **state) {
  (void)state;
  main_settings s;
  assert_int_equal(parse(&s, NULL, NULL), OPTIONS_RUN);
  extproc_server_options d;
  extproc_server_options_init(&d);
  assert_memory_equal(&s.server, &d, sizeof(d));
  assert_string_equal(s.listen, "0.0.0.0:50051");
  assert_int_equal(s.log_level, EXTPROC_LOG_INFO);
  assert_int_equal(s.log_format, EXTPROC_LOG_FORMAT_TEXT);
  assert_int_equal(s.service_list_count, 0);
  assert_int_equal(s.given, 0);
}

static void test_flags_set_every_field(void **state) {
  (void)state;
  main_settings s;
  assert_int_equal(
      parse(&s, NULL,
            ARGS("--workers", "3", "--max-message-bytes", "4MiB", "--max-concurrent-streams=77",
                 "--initial-window-bytes", "65535", "--grace-period", "1.5", "--listen",
                 "unix:/tmp/x.sock", "--log-level", "DEBUG", "--log-format", "json", "--service",
                 "a:1,b", "--service", "c@[::1]:9")),
      OPTIONS_RUN);
  assert_int_equal(s.server.workers, 3);
  assert_int_equal(s.server.max_message_bytes, 4u << 20);
  assert_int_equal(s.server.max_concurrent_streams, 77);
  assert_int_equal(s.server.initial_window_bytes, 65535);
  assert_int_equal(s.server.shutdown_grace_ms, 1500);
  assert_string_equal(s.listen, "unix:/tmp/x.sock");
  assert_int_equal(s.log_level, EXTPROC_LOG_DEBUG);
  assert_int_equal(s.log_format, EXTPROC_LOG_FORMAT_JSON);
  assert_int_equal(s.service_list_count, 2);
  assert_string_equal(s.service_lists[0], "a:1,b");
  assert_string_equal(s.service_lists[1], "c@[::1]:9");
  assert_false(s.services_from_env);
}

/* TLS files are paths kept as given; the unix socket mode is octal, within 0 to 0777. */
static void test_tls_files_and_octal_mode(void **state) {
  (void)state;
  main_settings s;
  assert_int_equal(
      parse(&s, ENV("EXTPROC_TLS_CLIENT_CA", "/etc/ca.pem"),
            ARGS("--tls-cert", "/etc/c.pem", "--tls-key=/etc/k.pem", "--unix-socket-mode", "0660")),
      OPTIONS_RUN);
  assert_string_equal(s.server.tls_cert_file, "/etc/c.pem");
  assert_string_equal(s.server.tls_key_file, "/etc/k.pem");
  assert_string_equal(s.server.tls_client_ca_file, "/etc/ca.pem");
  assert_int_equal(s.server.unix_socket_mode, 0660);
  assert_int_equal(parse(&s, ENV("EXTPROC_UNIX_SOCKET_MODE", "600"), NULL), OPTIONS_RUN);
  assert_int_equal(s.server.unix_socket_mode, 0600);
  assert_int_equal(parse(&s, NULL, ARGS("--unix-socket-mode", "0680")), OPTIONS_BAD);
  assert_string_equal(error,
                      "--unix-socket-mode: '0680' is not an octal number (allowed: 0 to 0777)");
  assert_int_equal(parse(&s, NULL, ARGS("--unix-socket-mode", "1777")), OPTIONS_BAD);
  assert_string_equal(error, "--unix-socket-mode: 1777 is out of range (allowed: 0 to 0777)");
  assert_int_equal(parse(&s, NULL, ARGS("--tls-cert", "")), OPTIONS_BAD);
}

static void test_units(void **state) {
  (void)state;
  static const struct {
    const char *flag, *value;
    uint64_t expected;
  } cases[] = {
      {"--grace-period", "2", 2000},
      {"--grace-period", "500ms", 500},
      {"--grace-period", "2s", 2000},
      {"--grace-period", "1m", 60000},
      {"--grace-period", "0", 0},
      {"--grace-period", "0.25s", 250},
      {"--max-message-bytes", "100", 100},
      {"--max-message-bytes", "100B", 100},
      {"--max-message-bytes", "3KiB", 3072},
      {"--max-message-bytes", "2GiB", 1ull << 31},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    main_settings s;
    assert_int_equal(parse(&s, NULL, ARGS(cases[i].flag, cases[i].value)), OPTIONS_RUN);
    const uint64_t got =
        cases[i].flag[2] == 'g' ? s.server.shutdown_grace_ms : s.server.max_message_bytes;
    if (got != cases[i].expected)
      fail_msg("%s %s: got %llu", cases[i].flag, cases[i].value, (unsigned long long)got);
  }
}

static void test_environment_and_precedence(void **state) {
  (void)state;
  main_settings s;
  const char *const *env =
      ENV("EXTPROC_WORKERS", "5", "EXTPROC_GRACE_PERIOD", "250ms", "EXTPROC_SERVICE",
          "trivial@127.0.0.1:1", "EXTPROC_LOG_FORMAT", "json", "LOG_LEVEL", "warn");
  assert_int_equal(parse(&s, env, NULL), OPTIONS_RUN);
  assert_int_equal(s.server.workers, 5);
  assert_int_equal(s.server.shutdown_grace_ms, 250);
  assert_int_equal(s.log_format, EXTPROC_LOG_FORMAT_JSON);
  assert_int_equal(s.log_level, EXTPROC_LOG_WARN); /* the legacy variable */
  assert_int_equal(s.service_list_count, 1);
  assert_true(s.services_from_env);

  /* A flag wins over its variable; EXTPROC_LOG_LEVEL over LOG_LEVEL. */
  const char *const *env2 = ENV("EXTPROC_WORKERS", "5", "EXTPROC_SERVICE", "a", "LOG_LEVEL", "warn",
                                "EXTPROC_LOG_LEVEL", "error");
  assert_int_equal(parse(&s, env2, ARGS("--workers", "2", "--service", "b")), OPTIONS_RUN);
  assert_int_equal(s.server.workers, 2);
  assert_int_equal(s.service_list_count, 1);
  assert_string_equal(s.service_lists[0], "b");
  assert_false(s.services_from_env);
  assert_int_equal(s.log_level, EXTPROC_LOG_ERROR);

  /* A bad variable is not read when its flag is given. */
  assert_int_equal(parse(&s, ENV("EXTPROC_WORKERS", "many"), ARGS("--workers", "1")), OPTIONS_RUN);
}

static void expect_bad(const char *const *env, const char **args, const char *fragment) {
  main_settings s;
  assert_int_equal(parse(&s, env, args), OPTIONS_BAD);
  if (!strstr(error, fragment)) fail_msg("error '%s' lacks '%s'", error, fragment);
}

static void test_bad_values_name_the_flag_and_range(void **state) {
  (void)state;
  expect_bad(NULL, ARGS("--workers", "abc"),
             "--workers: 'abc' is not a whole number "
             "(allowed: 0 to 1024)");
  expect_bad(NULL, ARGS("--workers", "1025"),
             "--workers: 1025 is out of range (allowed: 0 "
             "to 1024)");
  expect_bad(NULL, ARGS("--workers", "-1"), "--workers: '-1' is not a whole number");
  expect_bad(NULL, ARGS("--workers", "1.5"), "--workers: '1.5' is not a whole number");
  expect_bad(NULL, ARGS("--max-message-bytes", "0"), "allowed: 1B to 2GiB");
  expect_bad(NULL, ARGS("--max-message-bytes", "4GiB"),
             "--max-message-bytes: 4GiB is out of "
             "range");
  expect_bad(NULL, ARGS("--max-message-bytes", "1MB"), "--max-message-bytes: unknown unit 'MB'");
  expect_bad(NULL, ARGS("--initial-window-bytes", "2GiB"), "allowed: 1B to 2147483647B");
  expect_bad(NULL, ARGS("--max-concurrent-streams", "0"), "allowed: 1 to 4294967295");
  expect_bad(NULL, ARGS("--grace-period", "2h"),
             "--grace-period: unknown unit 'h' in '2h' "
             "(units: ms, s, m; allowed: 0s to 3600s)");
  expect_bad(NULL, ARGS("--grace-period", "3601"), "--grace-period: 3601 is out of range");
  expect_bad(NULL, ARGS("--grace-period", "1e3"), "unknown unit 'e3'");
  expect_bad(NULL, ARGS("--log-level", "loud"),
             "--log-level: unknown level 'loud' (allowed: "
             "debug, info, warn, error, off)");
  expect_bad(NULL, ARGS("--log-format", "xml"), "--log-format: unknown format 'xml'");
  expect_bad(NULL, ARGS("--listen", ""), "--listen: must not be empty");
  expect_bad(NULL, ARGS("--nope"), "unknown option --nope");
  expect_bad(NULL, ARGS("--nope=1"), "unknown option --nope");
  expect_bad(NULL, ARGS("stray"), "unexpected argument 'stray'");
  expect_bad(NULL, ARGS("--workers"), "--workers needs a value");
  expect_bad(NULL, ARGS("--help=1"), "--help takes no value");
  expect_bad(ENV("EXTPROC_WORKERS", "x"), NULL, "EXTPROC_WORKERS: 'x' is not a whole number");
  expect_bad(ENV("EXTPROC_GRACE_PERIOD", "5h"), NULL, "EXTPROC_GRACE_PERIOD: unknown unit");
  expect_bad(ENV("LOG_LEVEL", "loud"), NULL, "LOG_LEVEL: unknown level 'loud'");
}

/* Every value the table allows must start a server: --max-message-bytes at its largest, alone,
 * must not be refused for a buffer budget left at its default; a budget set below the message
 * limit is refused by the parser, naming both options. */
static void test_message_limit_and_buffer_budget_together(void **state) {
  (void)state;
  main_settings s;
  assert_int_equal(parse(&s, NULL, ARGS("--max-message-bytes", "2GiB")), OPTIONS_RUN);
  extproc_server *srv = NULL;
  assert_int_equal(extproc_server_new(&srv, &s.server), 0);
  extproc_server_free(srv);
  assert_int_equal(parse(&s, NULL, ARGS("--max-message-bytes", "512MiB")), OPTIONS_RUN);
  assert_int_equal(extproc_server_new(&srv, &s.server), 0);
  extproc_server_free(srv);
  /* An explicit budget below the message limit is refused by the server; the parser names both
   * options first (exit code 2), from flags or the environment alike. */
  s.server.max_buffered_bytes = (size_t)256 << 20;
  assert_int_equal(extproc_server_new(&srv, &s.server), EXTPROC_EINVAL);
  assert_int_equal(
      parse(&s, NULL, ARGS("--max-message-bytes", "512MiB", "--max-buffered-bytes", "256MiB")),
      OPTIONS_BAD);
  assert_non_null(strstr(error, "--max-buffered-bytes (EXTPROC_MAX_BUFFERED_BYTES) of 268435456 "
                                "bytes is below --max-message-bytes"));
  assert_int_equal(parse(&s, ENV("EXTPROC_MAX_BUFFERED_BYTES", "1B"), NULL), OPTIONS_BAD);
  assert_non_null(strstr(error, "of 1 bytes is below"));
  assert_int_equal(parse(&s, ENV("EXTPROC_MAX_BUFFERED_BYTES", "16MiB"), NULL), OPTIONS_RUN);
}

static void test_help_and_version(void **state) {
  (void)state;
  main_settings s;
  assert_int_equal(parse(&s, NULL, ARGS("--help")), OPTIONS_HELP);
  assert_int_equal(parse(&s, NULL, ARGS("-h")), OPTIONS_HELP);
  assert_int_equal(parse(&s, NULL, ARGS("--workers", "2", "--version")), OPTIONS_VERSION);
}

static void test_help_lists_every_option(void **state) {
  (void)state;
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  assert_non_null(out);
  options_print_help(out);
  fclose(out);
  size_t count;
  const option_def *table = options_table(&count);
  for (size_t i = 0; i < count; i++) {
    char flag[80], env[64], def[64], line[200];
    snprintf(flag, sizeof(flag), "\n  --%s", table[i].name);
    if (!strstr(text, flag)) fail_msg("--help lacks --%s", table[i].name);
    if (table[i].type == OPT_ACTION) continue;
    options_env_name(&table[i], env, sizeof(env));
    options_default_text(&table[i], def, sizeof(def));
    snprintf(line, sizeof(line), "env %s, default %s", env, def);
    if (!strstr(text, line)) fail_msg("--help lacks '%s'", line);
  }
  assert_non_null(strstr(text, "env EXTPROC_MAX_MESSAGE_BYTES, default 16MiB, allowed 1B to "
                               "2GiB"));
  assert_non_null(strstr(text, "env EXTPROC_GRACE_PERIOD, default 5s, allowed 0s to 3600s"));
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_match_the_server),
      cmocka_unit_test(test_flags_set_every_field),
      cmocka_unit_test(test_units),
      cmocka_unit_test(test_tls_files_and_octal_mode),
      cmocka_unit_test(test_environment_and_precedence),
      cmocka_unit_test(test_bad_values_name_the_flag_and_range),
      cmocka_unit_test(test_message_limit_and_buffer_budget_together),
      cmocka_unit_test(test_help_and_version),
      cmocka_unit_test(test_help_lists_every_option),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
