/* extproc-test: plays Envoy's side of ext_proc against any server from scenario files
 * (docs/scenarios.md), and says what Envoy would do with each reply. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extproc/version.h"
#include "extproc_test.h"
#include "h2_client.h"

static void usage(FILE *f) {
  fputs("usage: extproc-test --target ADDRESS [options] FILE...\n"
        "\n"
        "Plays the scenarios of each FILE against the ext_proc server at ADDRESS as Envoy 1.40\n"
        "would, checks what comes back and says what Envoy would then do.\n"
        "\n"
        "  -t, --target ADDRESS   IPV4:PORT, [IPV6]:PORT or unix:PATH\n"
        "      --tls              speak TLS (ALPN h2)\n"
        "      --ca FILE          verify the server's certificate against this CA\n"
        "      --cert FILE        client certificate for mutual TLS (with --key)\n"
        "      --key FILE         its private key\n"
        "      --sni NAME         server name to send and verify\n"
        "  -j, --jobs N           scenarios played at once (default 4)\n"
        "  -k, --filter TEXT      only scenarios whose name contains TEXT\n"
        "      --json FILE        write the JSON report to FILE (- for stdout, then the\n"
        "                         only thing on it)\n"
        "      --junit FILE       write a JUnit XML report to FILE (- for stdout, likewise)\n"
        "      --update-golden    write each scenario's golden file from what was seen\n"
        "  -v, --verbose          show every judgment and what was seen, also for passes\n"
        "  -q, --quiet            no text report on stdout\n"
        "      --version          print the version\n"
        "  -h, --help             this text\n"
        "\n"
        "Exit status: 0 all passed, 1 a scenario failed, 2 usage or scenario file error.\n",
        f);
}

/* Writes a report to `path` ("-": stdout). */
static int write_report(const char *path, int (*report)(const extest_suite *, FILE *),
                        const extest_suite *s) {
  FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
  if (!f) {
    perror(path);
    return -1;
  }
  int rc = report(s, f);
  if (f != stdout && fclose(f) != 0) rc = -1;
  if (rc != 0) fprintf(stderr, "extproc-test: cannot write %s\n", path);
  return rc;
}

int main(int argc, char **argv) {
  enum {
    OPT_TLS = 256,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_SNI,
    OPT_JSON,
    OPT_JUNIT,
    OPT_GOLDEN,
    OPT_VERSION
  };
  static const struct option longopts[] = {{"target", required_argument, NULL, 't'},
                                           {"tls", no_argument, NULL, OPT_TLS},
                                           {"ca", required_argument, NULL, OPT_CA},
                                           {"cert", required_argument, NULL, OPT_CERT},
                                           {"key", required_argument, NULL, OPT_KEY},
                                           {"sni", required_argument, NULL, OPT_SNI},
                                           {"jobs", required_argument, NULL, 'j'},
                                           {"filter", required_argument, NULL, 'k'},
                                           {"json", required_argument, NULL, OPT_JSON},
                                           {"junit", required_argument, NULL, OPT_JUNIT},
                                           {"update-golden", no_argument, NULL, OPT_GOLDEN},
                                           {"verbose", no_argument, NULL, 'v'},
                                           {"quiet", no_argument, NULL, 'q'},
                                           {"version", no_argument, NULL, OPT_VERSION},
                                           {"help", no_argument, NULL, 'h'},
                                           {NULL, 0, NULL, 0}};
  extest_target target = {0};
  extest_options options = {.jobs = 4};
  const char *json = NULL, *junit = NULL;
  bool verbose = false, quiet = false;
  for (int c; (c = getopt_long(argc, argv, "t:j:k:vqh", longopts, NULL)) != -1;) {
    switch (c) {
    case 't': target.address = optarg; break;
    case OPT_TLS: target.tls = true; break;
    case OPT_CA: target.ca_file = optarg; break;
    case OPT_CERT: target.cert_file = optarg; break;
    case OPT_KEY: target.key_file = optarg; break;
    case OPT_SNI: target.sni = optarg; break;
    case 'j': {
      char *end;
      const long n = strtol(optarg, &end, 10);
      if (*end || n < 1 || n > 256) {
        fprintf(stderr, "extproc-test: --jobs takes a number from 1 to 256, not '%s'\n", optarg);
        return 2;
      }
      options.jobs = (unsigned)n;
      break;
    }
    case 'k': options.filter = optarg; break;
    case OPT_JSON: json = optarg; break;
    case OPT_JUNIT: junit = optarg; break;
    case OPT_GOLDEN: options.update_golden = true; break;
    case 'v': verbose = true; break;
    case 'q': quiet = true; break;
    case OPT_VERSION: printf("extproc-test %s\n", EXTPROC_VERSION_STRING); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (!target.address || optind == argc) {
    fprintf(stderr, "extproc-test: %s\n",
            target.address ? "no scenario file given" : "--target is required");
    usage(stderr);
    return 2;
  }
  if (!target.cert_file != !target.key_file) {
    fprintf(stderr, "extproc-test: --cert and --key go together\n");
    return 2;
  }
  char err[1024];
  if (extest_target_check(&target, err, sizeof(err)) != 0) {
    fprintf(stderr, "extproc-test: %s\n", err);
    return 2;
  }
  /* A server that closes the connection must not kill the tool. */
  signal(SIGPIPE, SIG_IGN);
  /* Connection failures are in each scenario's report; no second copy on stderr. */
  h2_client_set_quiet(true);
  /* A report written to stdout is the whole of stdout, so it can be piped to a parser. */
  if ((json && strcmp(json, "-") == 0) || (junit && strcmp(junit, "-") == 0)) quiet = true;
  extest_suite *suite;
  if (extest_suite_load(&suite, (const char *const *)argv + optind, (size_t)(argc - optind), err,
                        sizeof(err)) != 0) {
    fprintf(stderr, "extproc-test: %s\n", err);
    return 2;
  }
  const size_t bad = extest_suite_run(suite, &target, &options);
  int rc = bad ? 1 : 0;
  if (!quiet && extest_report_text(suite, stdout, verbose) != 0) rc = 2;
  if (json && write_report(json, extest_report_json, suite) != 0) rc = 2;
  if (junit && write_report(junit, extest_report_junit, suite) != 0) rc = 2;
  extest_suite_free(suite);
  return rc;
}
