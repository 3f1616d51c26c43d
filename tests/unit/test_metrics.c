/* Metrics: the registry renders the Prometheus text format exactly (types, labels, escaping,
 * cumulative histogram buckets), counts from many threads add up, and the server's endpoint
 * answers GET /metrics over real HTTP. */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/metrics.h"
#include "extproc/server.h"
#include "h2_client.h"
#include "test_util.h"

static void test_counter_gauge_and_labels_render(void **state) {
  (void)state;
  metrics *m = metrics_new();
  assert_non_null(m);
  const char *labels[] = {"processor", "phase"};
  metric_family *f = metrics_family(m, "extproc_messages_total", "Messages.", METRIC_COUNTER,
                                    labels, 2, NULL, 0, 0);
  assert_non_null(f);
  /* The same name gives the same family. */
  assert_ptr_equal(
      f, metrics_family(m, "extproc_messages_total", "x", METRIC_GAUGE, NULL, 0, NULL, 0, 0));
  const char *a[] = {"Trivial", "request_headers"};
  const char *b[] = {"Say \"hi\"\\\n", "response_body"};
  metric_series *sa = metrics_series(f, a);
  assert_ptr_equal(sa, metrics_series(f, a));
  metric_add(sa, 3);
  metric_add(metrics_series(f, b), 1);
  metric_series *g = metrics_series(
      metrics_family(m, "extproc_streams_active", "Open.\nNow.", METRIC_GAUGE, NULL, 0, NULL, 0, 0),
      NULL);
  metric_set(g, 7);
  metric_sub(g, 2);
  assert_int_equal(metric_value(g), 5);
  metric_add(NULL, 1); /* an unset series is ignored */

  size_t len = 0;
  char *text = metrics_render(m, &len);
  assert_non_null(text);
  assert_int_equal(len, strlen(text));
  assert_string_equal(text,
                      "# HELP extproc_messages_total Messages.\n"
                      "# TYPE extproc_messages_total counter\n"
                      "extproc_messages_total{processor=\"Trivial\",phase=\"request_headers\"} 3\n"
                      "extproc_messages_total{processor=\"Say \\\"hi\\\"\\\\\\n\","
                      "phase=\"response_body\"} 1\n"
                      "# HELP extproc_streams_active Open.\\nNow.\n"
                      "# TYPE extproc_streams_active gauge\n"
                      "extproc_streams_active 5\n");
  free(text);
  metrics_free(m);
}

static void test_histogram_buckets_are_cumulative(void **state) {
  (void)state;
  metrics *m = metrics_new();
  const uint64_t bounds[] = {1000, 10000, 100000}; /* ns */
  const char *labels[] = {"phase"};
  metric_family *f = metrics_family(m, "extproc_callback_duration_seconds", "Callback time.",
                                    METRIC_HISTOGRAM, labels, 1, bounds, 3, 1e-9);
  const char *v[] = {"request_headers"};
  metric_series *s = metrics_series(f, v);
  const uint64_t observed[] = {500, 1000, 5000, 50000, 2000000};
  for (size_t i = 0; i < 5; i++)
    metric_observe(s, observed[i]);
  char *text = metrics_render(m, NULL);
  assert_non_null(text);
  assert_non_null(strstr(
      text, "extproc_callback_duration_seconds_bucket{phase=\"request_headers\",le=\"1e-06\"} 2\n"
            "extproc_callback_duration_seconds_bucket{phase=\"request_headers\",le=\"1e-05\"} 3\n"
            "extproc_callback_duration_seconds_bucket{phase=\"request_headers\",le=\"0.0001\"} 4\n"
            "extproc_callback_duration_seconds_bucket{phase=\"request_headers\",le=\"+Inf\"} 5\n"
            "extproc_callback_duration_seconds_sum{phase=\"request_headers\"} 0.0020565\n"
            "extproc_callback_duration_seconds_count{phase=\"request_headers\"} 5\n"));
  assert_non_null(strstr(text, "# TYPE extproc_callback_duration_seconds histogram\n"));
  free(text);
  /* Bad shapes are refused. */
  assert_null(metrics_family(m, "h2", "x", METRIC_HISTOGRAM, NULL, 0, NULL, 0, 1));
  assert_null(
      metrics_family(m, "l5", "x", METRIC_COUNTER, labels, METRIC_MAX_LABELS + 1, NULL, 0, 0));
  metrics_free(m);
}

enum { THREADS = 4, ADDS = 100000 };

static void *add_many(void *arg) {
  for (int i = 0; i < ADDS; i++)
    metric_add(arg, 1);
  return NULL;
}

static void test_counts_from_many_threads_add_up(void **state) {
  (void)state;
  metrics *m = metrics_new();
  metric_series *s = metrics_series(
      metrics_family(m, "extproc_x_total", "x", METRIC_COUNTER, NULL, 0, NULL, 0, 0), NULL);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    pthread_create(&t[i], NULL, add_many, s);
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  assert_int_equal(metric_value(s), THREADS * ADDS);
  metrics_free(m);
}

/* One HTTP/1.1 request to 127.0.0.1:port; returns the whole response (malloc'd). */
static char *http_get(int port, const char *method, const char *path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  char req[256];
  const int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         method, path);
  assert_int_equal(write(fd, req, (size_t)n), n);
  size_t cap = 65536, len = 0;
  char *out = malloc(cap);
  ssize_t r;
  while ((r = read(fd, out + len, cap - len - 1)) > 0)
    len += (size_t)r;
  out[len] = '\0';
  close(fd);
  return out;
}

static void test_the_endpoint_serves_metrics_over_http(void **state) {
  (void)state;
  extproc_server *srv;
  assert_int_equal(extproc_server_new(&srv, NULL), 0);
  assert_int_equal(extproc_server_metrics_listen(srv, "not an address"), EXTPROC_EINVAL);
  const int port = extproc_server_metrics_listen(srv, "127.0.0.1:0");
  assert_true(port > 0);
  assert_int_equal(extproc_server_metrics_listen(srv, "127.0.0.1:0"), EXTPROC_ESTATE);
  char *r = http_get(port, "GET", "/metrics");
  assert_non_null(strstr(r, "HTTP/1.1 200"));
  assert_non_null(strstr(r, "text/plain; version=0.0.4"));
  assert_non_null(strstr(r, "# TYPE extproc_streams_total counter\nextproc_streams_total 0\n"));
  free(r);
  r = http_get(port, "GET", "/other");
  assert_non_null(strstr(r, "HTTP/1.1 404"));
  free(r);
  r = http_get(port, "POST", "/metrics");
  assert_non_null(strstr(r, "HTTP/1.1 405"));
  free(r);
  extproc_server_free(srv);
}

/* The value of the sample line that starts with `line` (e.g. `extproc_x{a="b"} `) in an
 * exposition, or -1 if there is none. */
static long long sample(const char *text, const char *line) {
  for (const char *at = strstr(text, line); at; at = strstr(at + 1, line))
    if (at == text || at[-1] == '\n') return atoll(at + strlen(line));
  return -1;
}

static int setup_metrics_server(extproc_server **srv, extproc_processor **proc, int *port) {
  assert_int_equal(extproc_processor_new(proc, "Counted"), 0);
  extproc_server_options opts;
  extproc_server_options_init(&opts);
  opts.workers = 1;
  opts.drain_delay_ms = 0;
  assert_int_equal(extproc_server_new(srv, &opts), 0);
  const int index = extproc_server_listen(*srv, "127.0.0.1:0", *proc);
  assert_true(index >= 0);
  *port = extproc_server_port(*srv, index);
  const int metrics_port = extproc_server_metrics_listen(*srv, "127.0.0.1:0");
  assert_true(metrics_port > 0);
  assert_int_equal(extproc_server_start(*srv), 0);
  return metrics_port;
}

/* Over the wire: a malformed message is a protocol violation, a processor's series exist from
 * the start, and a connection is counted while open. */
static void test_the_server_counts_violations_and_connections(void **state) {
  (void)state;
  extproc_server *srv;
  extproc_processor *proc;
  int port;
  const int metrics_port = setup_metrics_server(&srv, &proc, &port);
  char *r = http_get(metrics_port, "GET", "/metrics");
  assert_int_equal(sample(r, "extproc_protocol_violations_total{kind=\"malformed\"} "), 0);
  assert_int_equal(
      sample(r, "extproc_messages_total{processor=\"Counted\",phase=\"request_headers\"} "), 0);
  free(r);

  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  const int32_t id =
      h2_client_open_stream(c, "/envoy.service.ext_proc.v3.ExternalProcessor/Process");
  const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f}; /* field 31, invalid wire type 7 */
  assert_int_equal(h2_client_send_message(c, id, garbage, sizeof(garbage), 0), 0);
  assert_int_equal(h2_client_wait_trailers(c, id), 0);
  assert_int_equal(h2_client_get_stream(c, id)->grpc_status, 3 /* INVALID_ARGUMENT */);

  r = http_get(metrics_port, "GET", "/metrics");
  assert_int_equal(sample(r, "extproc_protocol_violations_total{kind=\"malformed\"} "), 1);
  assert_int_equal(sample(r, "extproc_connections_open "), 1);
  assert_true(sample(r, "extproc_received_bytes_total ") > 0);
  free(r);
  h2_client_free(c);
  extproc_server_stop_now(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

/* Descriptors this process has open now. */
static size_t open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  size_t n = 0;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* Waits (bounded) until the descriptor count stops changing, and returns it. */
static size_t settled_fds(void) {
  size_t last = open_fds();
  for (int i = 0; i < 20; i++) {
    sleep_ms(100);
    const size_t now = open_fds();
    if (now == last && i >= 3) break;
    last = now;
  }
  return last;
}

enum { IDLE_SCRAPERS = 200, SCRAPE_CONNECTION_LIMIT = 16 };

/* Clients of the metrics port that connect and never finish their request (slowloris), many
 * more than scrapers would: the endpoint holds a bounded number of their connections, so they
 * cannot take the descriptors the processors need, and the processors keep serving. */
static void test_idle_scrapers_hold_a_bounded_number_of_descriptors(void **state) {
  (void)state;
  extproc_server *srv;
  extproc_processor *proc;
  int port;
  const int metrics_port = setup_metrics_server(&srv, &proc, &port);
  const size_t before = settled_fds();
  int fds[IDLE_SCRAPERS];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)metrics_port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < IDLE_SCRAPERS; i++) {
    fds[i] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fds[i] >= 0);
    assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(write(fds[i], "GET /metr", 9), 9);
  }
  /* Ours, plus the server's side of those it accepted. */
  const size_t during = settled_fds();
  print_message("descriptors: %zu before, %zu with %d idle scrapers (%zu of them the server's)\n",
                before, during, IDLE_SCRAPERS, during - before - IDLE_SCRAPERS);
  assert_true(during - before <= IDLE_SCRAPERS + SCRAPE_CONNECTION_LIMIT + 2);
  h2_client *c = h2_client_connect_tcp("127.0.0.1", port);
  assert_non_null(c);
  assert_int_equal(h2_client_health_check(c), 0);
  h2_client_free(c);
  for (int i = 0; i < IDLE_SCRAPERS; i++)
    close(fds[i]);
  char *r = http_get(metrics_port, "GET", "/metrics"); /* served again once they are gone */
  assert_non_null(strstr(r, "HTTP/1.1 200"));
  free(r);
  extproc_server_stop_now(srv);
  extproc_server_wait(srv);
  extproc_server_free(srv);
  extproc_processor_free(proc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_counter_gauge_and_labels_render),
      cmocka_unit_test(test_histogram_buckets_are_cumulative),
      cmocka_unit_test(test_counts_from_many_threads_add_up),
      cmocka_unit_test(test_the_endpoint_serves_metrics_over_http),
      cmocka_unit_test(test_the_server_counts_violations_and_connections),
      cmocka_unit_test(test_idle_scrapers_hold_a_bounded_number_of_descriptors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
