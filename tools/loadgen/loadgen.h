/* extproc-load: options, results and the run's entry point. */
#ifndef EXTPROC_LOADGEN_H
#define EXTPROC_LOADGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hist.h"
#include "procstat.h"
#include "script.h"

typedef enum { END_CANCEL, END_HALF_CLOSE } lg_end;

/* What the body replies must carry on (--expect-body). */
typedef enum {
  EXPECT_ANY,   /* anything: only the replies' kinds are checked */
  EXPECT_SAME,  /* the body unchanged: no mutation, or the same bytes */
  EXPECT_UPPER, /* each chunk as its ASCII uppercase, the same size */
} lg_expect;

typedef struct lg_options {
  const char *target; /* HOST:PORT, [IPV6]:PORT or unix:PATH */
  unsigned connections, concurrency;
  double duration;     /* seconds; 0 with count */
  uint64_t count;      /* streams; 0 with duration */
  double rate;         /* streams per second; 0: flat out */
  double warmup;       /* seconds */
  double timeout;      /* seconds a reply (or the trailers) may take */
  double hard_timeout; /* seconds for the whole run */
  pid_t server_pid;    /* 0: none */
  bool json;
  lg_shape shape;
  lg_end end;
  lg_expect expect_body;
  size_t body_bytes, chunk_bytes;
} lg_options;

/* Stream-level failures: each failed stream counts once, under the first thing that went wrong. */
typedef enum {
  ERR_BAD_REPLY,   /* malformed, wrong oneof for the phase, unexpected, or ended before the last */
  ERR_GRPC_STATUS, /* trailers with a non-OK grpc-status */
  ERR_RESET,       /* RST_STREAM from the server */
  ERR_TIMEOUT,     /* no reply (or trailers) within --timeout */
  ERR_HTTP,        /* :status other than 200 or content-type not application/grpc */
  ERR_ABORTED,     /* lost with its connection, or refused by a GOAWAY */
  /* Connection-level events. */
  ERR_GOAWAY,     /* GOAWAY received */
  ERR_DISCONNECT, /* EOF, socket or HTTP/2 protocol error */
  ERR_CONNECT,    /* a connection attempt failed */
  ERR_KINDS
} lg_error;

enum { STREAM_ERROR_KINDS = ERR_ABORTED + 1 };

const char *error_name(lg_error e);

typedef struct lg_results {
  double elapsed_s; /* the measured period */
  double warmup_s;
  uint64_t streams_ok, streams_failed;
  uint64_t immediate_responses; /* streams answered by an immediate_response (counted as ok) */
  uint64_t messages;            /* replies received on measured streams */
  uint64_t timeout_overrides;   /* replies carrying only override_message_timeout */
  uint64_t bytes_sent;          /* gRPC message bytes of measured streams */
  uint64_t body_bytes_sent;     /* body bytes in those messages (HttpBody.body) */
  uint64_t body_bytes_received; /* body bytes the replies sent on (mutations, streamed pieces) */
  uint64_t errors[ERR_KINDS];
  uint64_t errors_total;
  uint64_t warmup_errors; /* errors of streams started during the warmup (not in `errors`) */
  char first_error[256];
  bool hard_timeout;
  bool interrupted;     /* SIGINT: streams then in flight are not counted */
  hist message_latency; /* send -> reply, ns */
  hist stream_latency;  /* first send -> last reply (cancel) or trailers (half-close), ns */
  /* Server figures over the measured period (server_pid only). */
  bool server;
  proc_sample server_before, server_after;
  proc_memory server_idle;   /* before our connections opened */
  bool server_peak_reset;    /* VmHWM was reset when the measured period began */
  proc_memory server_memory; /* at the end */
  /* Our own CPU time over the measured period, µs. */
  uint64_t client_cpu_us;
} lg_results;

/* Runs the load described by o against its target; fills r. Returns 0 when the run completed
 * (errors or not), -1 when it could not start (message on stderr). */
int loadgen_run(const lg_options *o, const lg_script *script, lg_results *r);

#endif
