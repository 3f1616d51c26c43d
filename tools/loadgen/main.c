/* extproc-load: drives an ext_proc server the way Envoy's ext_proc filter does, and reports
 * throughput, per-message latency, errors and (with --server-pid) the server's CPU and memory.
 *
 *   extproc-load --target HOST:PORT|unix:PATH [--connections M] [--concurrency N]
 *                (--duration SECONDS | --count STREAMS) [--rate STREAMS_PER_SEC]
 *                [--warmup SECONDS] [--shape headers|full|streamed|duplex|buffered]
 *                [--end cancel|half-close] [--body-bytes N] [--chunk-bytes N]
 *                [--expect-body any|same|upper] [--timeout SECONDS]
 *                [--hard-timeout SECONDS] [--server-pid PID] [--json]
 *
 * Exit status: 0 when every measured stream succeeded, 1 when errors were counted, 2 on bad
 * usage or when the run could not start, 3 when the hard timeout ended the run, 130 when
 * interrupted (SIGINT; the figures so far are still printed). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loadgen.h"

enum {
  OPT_TARGET = 256,
  OPT_CONNECTIONS,
  OPT_CONCURRENCY,
  OPT_DURATION,
  OPT_COUNT,
  OPT_RATE,
  OPT_WARMUP,
  OPT_SHAPE,
  OPT_END,
  OPT_BODY_BYTES,
  OPT_CHUNK_BYTES,
  OPT_EXPECT_BODY,
  OPT_TIMEOUT,
  OPT_HARD_TIMEOUT,
  OPT_SERVER_PID,
  OPT_JSON,
  OPT_HELP,
  MAX_CONNECTIONS = 4096,
  MAX_CONCURRENCY = 1000000,
  /* Envoy's buffers are made of 16 KiB slices and HTTP/2's default frame is 16 KiB, so a
   * streamed body usually reaches a processor in chunks of that size. */
  DEFAULT_CHUNK_BYTES = 16 * 1024,
  DEFAULT_FULL_BODY = 1024,          /* full: a small JSON-sized body each way */
  DEFAULT_STREAMED_BODY = 1u << 20,  /* streamed, duplex: an upload */
  DEFAULT_BUFFERED_BODY = 10u << 20, /* buffered: a large upload held whole */
  MAX_BODY_BYTES = 256u << 20,
};

static void usage(FILE *out) {
  fprintf(out,
          "usage: extproc-load --target HOST:PORT|[IPV6]:PORT|unix:PATH\n"
          "                    (--duration SECONDS | --count STREAMS) [options]\n"
          "  --connections M        HTTP/2 connections (default 1)\n"
          "  --concurrency N        concurrent streams in all, spread over the connections "
          "(default 1)\n"
          "  --duration SECONDS     measure for this long (streams then in flight finish)\n"
          "  --count STREAMS        measure this many streams\n"
          "  --rate STREAMS_PER_SEC start streams at this fixed rate, concurrency permitting\n"
          "                         (default: flat out)\n"
          "  --warmup SECONDS       run unmeasured first (default 0)\n"
          "  --shape headers|full|streamed|duplex|buffered\n"
          "                         headers: request and response headers (2 messages)\n"
          "                         full: all six phases, BUFFERED bodies (6 messages)\n"
          "                         streamed: request headers, then the request body's\n"
          "                         STREAMED chunks all at once, then response headers\n"
          "                         duplex: the same in FULL_DUPLEX_STREAMED: headers and\n"
          "                         chunks without waiting, answered by streamed pieces\n"
          "                         buffered: request headers, the whole BUFFERED request\n"
          "                         body, response headers (default headers)\n"
          "  --end cancel|half-close  end each stream with RST_STREAM(CANCEL) after the last\n"
          "                         reply, as Envoy does (default), or half-close and wait for\n"
          "                         the trailers\n"
          "  --body-bytes N         body size: full 1024 (each direction), streamed and duplex\n"
          "                         1048576, buffered 10485760\n"
          "  --chunk-bytes N        streamed and duplex chunk size (default 16384)\n"
          "  --expect-body any|same|upper\n"
          "                         what the body replies must carry on: anything (default),\n"
          "                         the body unchanged, or each chunk in ASCII uppercase\n"
          "  --timeout SECONDS      per reply, and for the trailers (default 5); the connections\n"
          "                         get at least 5 s to be ready\n"
          "  --hard-timeout SECONDS for the whole run (default: warmup + duration + timeout + "
          "10,\n"
          "                         or warmup + 300 with --count)\n"
          "  --server-pid PID       report that process's CPU time and memory\n"
          "  --json                 print one JSON object instead of the summary\n");
}

static bool parse_double(const char *s, double *out) {
  char *end;
  *out = strtod(s, &end);
  return *s && *end == '\0' && *out >= 0 && *out < 1e9;
}

static bool parse_u64(const char *s, uint64_t *out) {
  char *end;
  if (*s < '0' || *s > '9') return false;
  *out = strtoull(s, &end, 10);
  return *end == '\0';
}

static const char *const EXPECT_NAMES[] = {
    [EXPECT_ANY] = "any", [EXPECT_SAME] = "same", [EXPECT_UPPER] = "upper"};

static bool expect_named(const char *name, lg_expect *out) {
  for (size_t i = 0; i < sizeof(EXPECT_NAMES) / sizeof(EXPECT_NAMES[0]); i++)
    if (strcmp(name, EXPECT_NAMES[i]) == 0) {
      *out = (lg_expect)i;
      return true;
    }
  return false;
}

static size_t default_body_bytes(lg_shape shape) {
  switch (shape) {
  case SHAPE_STREAMED:
  case SHAPE_DUPLEX: return DEFAULT_STREAMED_BODY;
  case SHAPE_BUFFERED: return DEFAULT_BUFFERED_BODY;
  default: return DEFAULT_FULL_BODY;
  }
}

/* Parses argv into o; false (after a message) on bad usage. */
static bool parse_options(int argc, char **argv, lg_options *o) {
  static const struct option longs[] = {{"target", required_argument, NULL, OPT_TARGET},
                                        {"connections", required_argument, NULL, OPT_CONNECTIONS},
                                        {"concurrency", required_argument, NULL, OPT_CONCURRENCY},
                                        {"duration", required_argument, NULL, OPT_DURATION},
                                        {"count", required_argument, NULL, OPT_COUNT},
                                        {"rate", required_argument, NULL, OPT_RATE},
                                        {"warmup", required_argument, NULL, OPT_WARMUP},
                                        {"shape", required_argument, NULL, OPT_SHAPE},
                                        {"end", required_argument, NULL, OPT_END},
                                        {"body-bytes", required_argument, NULL, OPT_BODY_BYTES},
                                        {"chunk-bytes", required_argument, NULL, OPT_CHUNK_BYTES},
                                        {"expect-body", required_argument, NULL, OPT_EXPECT_BODY},
                                        {"timeout", required_argument, NULL, OPT_TIMEOUT},
                                        {"hard-timeout", required_argument, NULL, OPT_HARD_TIMEOUT},
                                        {"server-pid", required_argument, NULL, OPT_SERVER_PID},
                                        {"json", no_argument, NULL, OPT_JSON},
                                        {"help", no_argument, NULL, OPT_HELP},
                                        {NULL, 0, NULL, 0}};
  *o = (lg_options){.connections = 1, .concurrency = 1, .timeout = 5, .shape = SHAPE_HEADERS};
  bool body_set = false;
  uint64_t u;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", longs, NULL)) != -1) {
    const char *a = optarg;
    bool ok = true;
    switch (opt) {
    case OPT_TARGET: o->target = a; break;
    case OPT_CONNECTIONS:
      ok = parse_u64(a, &u) && u >= 1 && u <= MAX_CONNECTIONS;
      o->connections = (unsigned)u;
      break;
    case OPT_CONCURRENCY:
      ok = parse_u64(a, &u) && u >= 1 && u <= MAX_CONCURRENCY;
      o->concurrency = (unsigned)u;
      break;
    case OPT_DURATION: ok = parse_double(a, &o->duration) && o->duration > 0; break;
    case OPT_COUNT: ok = parse_u64(a, &o->count) && o->count > 0; break;
    case OPT_RATE: ok = parse_double(a, &o->rate) && o->rate > 0; break;
    case OPT_WARMUP: ok = parse_double(a, &o->warmup); break;
    case OPT_SHAPE: ok = shape_named(a, &o->shape); break;
    case OPT_END:
      if (strcmp(a, "cancel") == 0)
        o->end = END_CANCEL;
      else if (strcmp(a, "half-close") == 0)
        o->end = END_HALF_CLOSE;
      else
        ok = false;
      break;
    case OPT_BODY_BYTES:
      ok = parse_u64(a, &u) && u <= MAX_BODY_BYTES;
      o->body_bytes = (size_t)u;
      body_set = true;
      break;
    case OPT_CHUNK_BYTES:
      ok = parse_u64(a, &u) && u >= 1 && u <= (16u << 20);
      o->chunk_bytes = (size_t)u;
      break;
    case OPT_EXPECT_BODY: ok = expect_named(a, &o->expect_body); break;
    case OPT_TIMEOUT: ok = parse_double(a, &o->timeout) && o->timeout > 0; break;
    case OPT_HARD_TIMEOUT: ok = parse_double(a, &o->hard_timeout) && o->hard_timeout > 0; break;
    case OPT_SERVER_PID:
      ok = parse_u64(a, &u) && u >= 1 && u <= 0x7fffffff;
      o->server_pid = (pid_t)u;
      break;
    case OPT_JSON: o->json = true; break;
    case 'h':
    case OPT_HELP: usage(stdout); exit(0);
    default: usage(stderr); return false;
    }
    if (!ok) {
      fprintf(stderr, "extproc-load: bad value for --%s: '%s'\n", longs[opt - OPT_TARGET].name, a);
      return false;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "extproc-load: unexpected argument '%s'\n", argv[optind]);
    return false;
  }
  if (!o->target) {
    fprintf(stderr, "extproc-load: --target is required\n");
    usage(stderr);
    return false;
  }
  if ((o->duration > 0) == (o->count > 0)) {
    fprintf(stderr, "extproc-load: give exactly one of --duration and --count\n");
    return false;
  }
  if (!body_set) o->body_bytes = default_body_bytes(o->shape);
  if (!o->chunk_bytes) o->chunk_bytes = DEFAULT_CHUNK_BYTES;
  if (o->hard_timeout == 0)
    o->hard_timeout = o->warmup + (o->duration > 0 ? o->duration + o->timeout + 10 : 300);
  if (o->server_pid && !proc_exists(o->server_pid)) {
    fprintf(stderr, "extproc-load: no process %ld to measure (--server-pid)\n",
            (long)o->server_pid);
    return false;
  }
  return true;
}

/* ---- figures ---------------------------------------------------------------------------- */

typedef struct server_figures {
  bool cpu; /* both samples read */
  double cpu_us, cpu_us_per_stream, cpu_percent;
  /* Bodies: CPU per MiB of request body the server took in, and the body bytes it took in per
   * second of its own CPU time (bytes/s on one whole core). */
  double cpu_us_per_mib, body_bytes_per_cpu_s;
  const char *cpu_source;
  bool stat;
  double stat_user_us, stat_system_us, stat_us_per_stream, stat_percent;
} server_figures;

static server_figures server_figures_of(const lg_results *r) {
  server_figures f = {0};
  const proc_sample *a = &r->server_before, *b = &r->server_after;
  const double streams = (double)(r->streams_ok + r->streams_failed);
  const double elapsed_us = r->elapsed_s * 1e6;
  if (a->ok && b->ok) {
    f.stat = true;
    f.stat_user_us = (double)(b->stat_user_us - a->stat_user_us);
    f.stat_system_us = (double)(b->stat_system_us - a->stat_system_us);
    const double total = f.stat_user_us + f.stat_system_us;
    f.stat_us_per_stream = streams > 0 ? total / streams : 0;
    f.stat_percent = elapsed_us > 0 ? 100.0 * total / elapsed_us : 0;
  }
  if (a->clock_ok && b->clock_ok) {
    f.cpu = true;
    f.cpu_source = "cpu-clock";
    f.cpu_us = (double)(b->clock_ns - a->clock_ns) / 1e3;
  } else if (f.stat) {
    f.cpu = true;
    f.cpu_source = "stat";
    f.cpu_us = f.stat_user_us + f.stat_system_us;
  }
  if (f.cpu) {
    f.cpu_us_per_stream = streams > 0 ? f.cpu_us / streams : 0;
    f.cpu_percent = elapsed_us > 0 ? 100.0 * f.cpu_us / elapsed_us : 0;
    const double body = (double)r->body_bytes_sent;
    f.cpu_us_per_mib = body > 0 ? f.cpu_us / (body / (1 << 20)) : 0;
    f.body_bytes_per_cpu_s = f.cpu_us > 0 ? body / (f.cpu_us / 1e6) : 0;
  }
  return f;
}

/* The server's memory growth from idle to its peak, per concurrent stream (connections
 * included), in KiB; negative when unknown. */
static double peak_growth_per_stream_kib(const lg_options *o, const lg_results *r) {
  if (!r->server_idle.ok || !r->server_memory.ok) return -1;
  const double growth = (double)r->server_memory.peak_rss_kib - (double)r->server_idle.rss_kib;
  return growth > 0 ? growth / o->concurrency : 0;
}

static double per_second(uint64_t n, double s) { return s > 0 ? (double)n / s : 0; }
static double us(uint64_t ns) { return (double)ns / 1e3; }

static void json_hist(const char *name, const hist *h) {
  printf("\"%s\":{\"count\":%" PRIu64 ",\"min\":%.3f,\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,"
         "\"p99\":%.3f,\"p99_9\":%.3f,\"max\":%.3f}",
         name, h->count, h->count ? us(h->min) : 0.0, hist_mean(h) / 1e3,
         us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
         us(hist_percentile(h, 99.9)), us(h->max));
}

static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    const unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch < 0x20)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

static void print_json(const lg_options *o, const lg_script *sc, const lg_results *r) {
  const uint64_t streams = r->streams_ok + r->streams_failed;
  printf("{\"target\":");
  json_string(o->target);
  printf(",\"shape\":\"%s\",\"end\":\"%s\",\"connections\":%u,\"concurrency\":%u,"
         "\"messages_per_stream\":%zu,\"body_bytes\":%zu,\"chunk_bytes\":%zu,"
         "\"expect_body\":\"%s\",\"body_bytes_per_stream\":%" PRIu64 ",",
         shape_name(o->shape), o->end == END_CANCEL ? "cancel" : "half-close", o->connections,
         o->concurrency, sc->count, o->body_bytes, o->chunk_bytes, EXPECT_NAMES[o->expect_body],
         sc->body_bytes_per_stream);
  if (o->count)
    printf("\"count\":%" PRIu64 ",", o->count);
  else
    printf("\"duration_s\":%.3f,", o->duration);
  if (o->rate > 0) printf("\"rate\":%.3f,", o->rate);
  printf("\"warmup_s\":%.6f,\"elapsed_s\":%.6f,\"streams\":%" PRIu64 ",\"streams_failed\":%" PRIu64
         ",\"streams_started\":%" PRIu64 ",\"immediate_responses\":%" PRIu64
         ",\"streams_per_s\":%.3f,\"messages\":%" PRIu64 ",\"messages_per_s\":%.3f,"
         "\"timeout_overrides\":%" PRIu64 ",\"bytes_sent\":%" PRIu64 ",",
         r->warmup_s, r->elapsed_s, r->streams_ok, r->streams_failed, streams,
         r->immediate_responses, per_second(r->streams_ok, r->elapsed_s), r->messages,
         per_second(r->messages, r->elapsed_s), r->timeout_overrides, r->bytes_sent);
  printf("\"body_bytes_sent\":%" PRIu64 ",\"body_bytes_received\":%" PRIu64
         ",\"body_bytes_sent_per_s\":%.1f,\"body_bytes_received_per_s\":%.1f,",
         r->body_bytes_sent, r->body_bytes_received, per_second(r->body_bytes_sent, r->elapsed_s),
         per_second(r->body_bytes_received, r->elapsed_s));
  printf("\"latency_us\":{");
  json_hist("message", &r->message_latency);
  putchar(',');
  json_hist("stream", &r->stream_latency);
  printf("},\"errors\":{\"total\":%" PRIu64, r->errors_total);
  for (int e = 0; e < ERR_KINDS; e++)
    printf(",\"%s\":%" PRIu64, error_name((lg_error)e), r->errors[e]);
  printf(",\"warmup\":%" PRIu64 "}", r->warmup_errors);
  if (r->first_error[0]) {
    printf(",\"first_error\":");
    json_string(r->first_error);
  }
  printf(",\"hard_timeout\":%s,\"interrupted\":%s", r->hard_timeout ? "true" : "false",
         r->interrupted ? "true" : "false");
  printf(",\"client\":{\"cpu_us\":%" PRIu64 ",\"cpu_us_per_stream\":%.3f,\"cpu_percent\":%.2f}",
         r->client_cpu_us, streams ? (double)r->client_cpu_us / (double)streams : 0.0,
         r->elapsed_s > 0 ? (double)r->client_cpu_us / (r->elapsed_s * 1e4) : 0.0);
  if (r->server) {
    const server_figures f = server_figures_of(r);
    printf(",\"server\":{\"pid\":%ld", (long)o->server_pid);
    if (f.cpu)
      printf(",\"cpu_source\":\"%s\",\"cpu_us\":%.3f,\"cpu_us_per_stream\":%.3f,"
             "\"cpu_percent\":%.2f,\"cpu_us_per_mib\":%.3f,\"body_bytes_per_cpu_s\":%.1f",
             f.cpu_source, f.cpu_us, f.cpu_us_per_stream, f.cpu_percent, f.cpu_us_per_mib,
             f.body_bytes_per_cpu_s);
    if (f.stat)
      printf(",\"stat_utime_us\":%.0f,\"stat_stime_us\":%.0f,\"stat_cpu_us_per_stream\":%.3f,"
             "\"stat_cpu_percent\":%.2f",
             f.stat_user_us, f.stat_system_us, f.stat_us_per_stream, f.stat_percent);
    if (r->server_memory.ok)
      printf(",\"rss_kib\":%" PRIu64 ",\"peak_rss_kib\":%" PRIu64 ",\"peak_rss_reset\":%s",
             r->server_memory.rss_kib, r->server_memory.peak_rss_kib,
             r->server_peak_reset ? "true" : "false");
    if (r->server_idle.ok) printf(",\"idle_rss_kib\":%" PRIu64, r->server_idle.rss_kib);
    const double growth = peak_growth_per_stream_kib(o, r);
    if (growth >= 0) printf(",\"peak_growth_per_stream_kib\":%.3f", growth);
    putchar('}');
  }
  printf("}\n");
}

static void print_latency(const char *label, const hist *h) {
  if (!h->count) {
    printf("  %-15s none\n", label);
    return;
  }
  printf("  %-15s p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f µs\n", label,
         us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
         us(hist_percentile(h, 99.9)), us(h->max), hist_mean(h) / 1e3);
}

static void print_summary(const lg_options *o, const lg_script *sc, const lg_results *r) {
  printf("extproc-load: %s, shape %s (%zu messages/stream), end %s, %u stream%s over %u "
         "connection%s\n",
         o->target, shape_name(o->shape), sc->count,
         o->end == END_CANCEL ? "RST_STREAM(CANCEL)" : "half-close", o->concurrency,
         o->concurrency == 1 ? "" : "s", o->connections, o->connections == 1 ? "" : "s");
  printf("  %-15s %.3f s", "measured", r->elapsed_s);
  if (r->warmup_s > 0) printf(" after %.3f s of warmup", r->warmup_s);
  if (o->rate > 0) printf(", rate %.1f streams/s requested", o->rate);
  printf("%s\n", r->hard_timeout  ? "  (ended by the hard timeout)"
                 : r->interrupted ? "  (interrupted)"
                                  : "");
  printf("  %-15s %" PRIu64 " ok, %" PRIu64 " failed  %.1f streams/s\n", "streams", r->streams_ok,
         r->streams_failed, per_second(r->streams_ok, r->elapsed_s));
  if (r->immediate_responses) printf("  %-15s %" PRIu64 "\n", "immediate", r->immediate_responses);
  printf("  %-15s %" PRIu64 "  %.1f messages/s\n", "messages", r->messages,
         per_second(r->messages, r->elapsed_s));
  if (sc->body_bytes_per_stream)
    printf("  %-15s sent %.1f MiB (%.1f MB/s), received %.1f MiB (%.1f MB/s)\n", "body bytes",
           (double)r->body_bytes_sent / (1 << 20),
           per_second(r->body_bytes_sent, r->elapsed_s) / 1e6,
           (double)r->body_bytes_received / (1 << 20),
           per_second(r->body_bytes_received, r->elapsed_s) / 1e6);
  print_latency("latency/message", &r->message_latency);
  print_latency("latency/stream", &r->stream_latency);
  printf("  %-15s ", "errors");
  if (!r->errors_total) printf("none");
  for (int e = 0, first = 1; e < ERR_KINDS; e++)
    if (r->errors[e]) {
      printf("%s%s %" PRIu64, first ? "" : ", ", error_name((lg_error)e), r->errors[e]);
      first = 0;
    }
  if (r->warmup_errors) printf(" (and %" PRIu64 " during the warmup)", r->warmup_errors);
  printf("\n");
  if (r->first_error[0]) printf("  %-15s %s\n", "first error", r->first_error);
  const uint64_t streams = r->streams_ok + r->streams_failed;
  printf("  %-15s %.2f µs/stream, %.1f %% of one core\n", "client cpu",
         streams ? (double)r->client_cpu_us / (double)streams : 0.0,
         r->elapsed_s > 0 ? (double)r->client_cpu_us / (r->elapsed_s * 1e4) : 0.0);
  if (!r->server) return;
  const server_figures f = server_figures_of(r);
  if (f.cpu)
    printf("  %-15s %.2f µs/stream, %.1f %% of one core (pid %ld, %s)\n", "server cpu",
           f.cpu_us_per_stream, f.cpu_percent, (long)o->server_pid, f.cpu_source);
  if (f.stat)
    printf("  %-15s utime+stime %.0f + %.0f ms: %.2f µs/stream, %.1f %% (10 ms ticks)\n", "",
           f.stat_user_us / 1e3, f.stat_system_us / 1e3, f.stat_us_per_stream, f.stat_percent);
  if (f.cpu && r->body_bytes_sent)
    printf("  %-15s %.1f µs/MiB, %.3f GB/s per core\n", "server bodies", f.cpu_us_per_mib,
           f.body_bytes_per_cpu_s / 1e9);
  if (r->server_memory.ok)
    printf("  %-15s rss %.1f MiB, peak %.1f MiB%s\n", "server memory",
           (double)r->server_memory.rss_kib / 1024, (double)r->server_memory.peak_rss_kib / 1024,
           r->server_peak_reset ? " (since the measured period began)" : " (lifetime)");
  const double growth = peak_growth_per_stream_kib(o, r);
  if (growth >= 0)
    printf("  %-15s idle %.1f MiB; peak - idle = %.1f KiB per concurrent stream\n", "",
           (double)r->server_idle.rss_kib / 1024, growth);
}

int main(int argc, char **argv) {
  lg_options o;
  if (!parse_options(argc, argv, &o)) return 2;
  lg_script script;
  if (!script_build(&script, o.shape, o.body_bytes, o.chunk_bytes)) return 2;
  lg_results *r = calloc(1, sizeof(*r));
  if (!r) {
    script_free(&script);
    return 2;
  }
  const int rv = loadgen_run(&o, &script, r);
  if (rv == 0) {
    if (o.json)
      print_json(&o, &script, r);
    else
      print_summary(&o, &script, r);
  }
  fflush(stdout);
  const int status = rv != 0           ? 2
                     : r->hard_timeout ? 3
                     : r->interrupted  ? 130
                     : r->errors_total ? 1
                                       : 0;
  script_free(&script);
  free(r);
  return status;
}
