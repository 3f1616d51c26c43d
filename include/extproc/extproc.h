/**
 * @file
 * libextproc: write Envoy External Processors in C.
 *
 * This header is the processor author's API. A processor is a set of callbacks, one per phase
 * of an HTTP exchange as Envoy's ext_proc filter sends them (request_headers, request_body,
 * request_trailers, response_headers, response_body, response_trailers). Each callback reads
 * the phase's data from an extproc_request and records what Envoy should do (header mutations,
 * a body replacement, an immediate response); when the callback returns, the SDK builds the one
 * ProcessingResponse Envoy expects for that phase and sends it.
 *
 * Two ways to define a processor, as in the Python SDK the idea comes from:
 *   - a static table (extproc_processor_def) filled in once, like a subclass;
 *   - a builder (extproc_processor_new + extproc_processor_on), one function per phase, like
 *     decorators.
 *
 * Threading: a request and everything read from it belong to the event-loop thread that
 * delivered the callback, and are valid only during that callback, except after the callback
 * returns EXTPROC_DEFER (see extproc_request_resume). A processor is immutable once served and
 * may be shared by all loops.
 *
 * Errors: functions returning int return 0 on success or a negative extproc_error.
 */
#ifndef EXTPROC_EXTPROC_H
#define EXTPROC_EXTPROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "extproc/version.h"
#include "extproc/visibility.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Error codes returned (negated) by the API. */
typedef enum extproc_error {
  EXTPROC_OK = 0,      /**< success */
  EXTPROC_EINVAL = -1, /**< an argument is NULL, empty or malformed (e.g. a bad header name) */
  EXTPROC_ESTATE =
      -2, /**< not allowed in this phase or state (e.g. a body write in a headers phase) */
  EXTPROC_ENOMEM = -3,    /**< out of memory */
  EXTPROC_EIO = -4,       /**< a system call failed (bind, listen, thread creation...) */
  EXTPROC_ETIMEDOUT = -5, /**< a wait ran out (testing harness), or a deferred answer came
                             after its callback deadline (extproc_request_resume) */
  EXTPROC_ELIMIT = -6,    /**< a configured limit was reached (extproc_body_accumulate_error) */
} extproc_error;

/** Returns a static, human-readable description of an extproc_error. Never NULL. */
EXTPROC_API const char *extproc_strerror(int error);

/** The phases of one HTTP exchange, named after ProcessingRequest's `request` oneof. */
typedef enum extproc_phase {
  EXTPROC_REQUEST_HEADERS = 0,   /**< the request's headers (request_headers) */
  EXTPROC_REQUEST_BODY = 1,      /**< the request's body, or a chunk of it (request_body) */
  EXTPROC_REQUEST_TRAILERS = 2,  /**< the request's trailers (request_trailers) */
  EXTPROC_RESPONSE_HEADERS = 3,  /**< the response's headers (response_headers) */
  EXTPROC_RESPONSE_BODY = 4,     /**< the response's body, or a chunk of it (response_body) */
  EXTPROC_RESPONSE_TRAILERS = 5, /**< the response's trailers (response_trailers) */
  EXTPROC_PHASE_COUNT = 6        /**< the number of phases; not a phase itself */
} extproc_phase;

/** Returns Envoy's name of a phase ("request_headers", ...), or "unknown". Static storage. */
EXTPROC_API const char *extproc_phase_name(extproc_phase phase);

/** gRPC status codes, as used in the stream's final `grpc-status` and in
 * ImmediateResponse.grpc_status. */
typedef enum extproc_grpc_code {
  EXTPROC_GRPC_OK = 0,                  /**< success, not an error */
  EXTPROC_GRPC_CANCELLED = 1,           /**< the call was cancelled, usually by the caller */
  EXTPROC_GRPC_UNKNOWN = 2,             /**< an error that fits no other code */
  EXTPROC_GRPC_INVALID_ARGUMENT = 3,    /**< the request itself is invalid, whatever the state */
  EXTPROC_GRPC_DEADLINE_EXCEEDED = 4,   /**< time ran out before the call completed */
  EXTPROC_GRPC_NOT_FOUND = 5,           /**< something the call needs does not exist */
  EXTPROC_GRPC_ALREADY_EXISTS = 6,      /**< what the call would create exists already */
  EXTPROC_GRPC_PERMISSION_DENIED = 7,   /**< the caller is known but not allowed to do this */
  EXTPROC_GRPC_RESOURCE_EXHAUSTED = 8,  /**< a limit or quota was reached (e.g. message size) */
  EXTPROC_GRPC_FAILED_PRECONDITION = 9, /**< the system is not in a state that allows the call */
  EXTPROC_GRPC_ABORTED = 10,            /**< the call was aborted, e.g. by a concurrency conflict */
  EXTPROC_GRPC_OUT_OF_RANGE = 11,       /**< an argument is outside its valid range */
  EXTPROC_GRPC_UNIMPLEMENTED = 12,      /**< the operation is not implemented or supported */
  EXTPROC_GRPC_INTERNAL = 13,           /**< an internal error: an invariant was broken */
  EXTPROC_GRPC_UNAVAILABLE = 14,    /**< the service is unavailable for now; retrying may help */
  EXTPROC_GRPC_DATA_LOSS = 15,      /**< data was lost or corrupted beyond recovery */
  EXTPROC_GRPC_UNAUTHENTICATED = 16 /**< the caller has no valid credentials */
} extproc_grpc_code;

/** What a phase callback returns. */
typedef enum extproc_result {
  /** Reply now with what the callback recorded (possibly nothing: plain CONTINUE). */
  EXTPROC_CONTINUE = 0,
  /** The callback failed: the processor's error policy applies (see extproc_error_policy). */
  EXTPROC_FAIL = 1,
  /** The answer comes later: the callback called extproc_request_defer() and it (or a thread it
   * handed the request to) will call extproc_request_resume() exactly once. No reply is sent and no
   * later message of this stream is dispatched until then. */
  EXTPROC_DEFER = 2
} extproc_result;

/** What happens when a callback returns EXTPROC_FAIL (or its context_init fails).
 * Either way one log line names the processor, the phase and the request id. */
typedef enum extproc_error_policy {
  /** End the gRPC stream with a non-OK grpc-status (INTERNAL unless extproc_request_fail gave
   * another) and a grpc-message. Envoy then applies the filter's `failure_mode_allow`: the HTTP
   * request continues unprocessed if true, or fails with a 500 if false. */
  EXTPROC_ON_ERROR_FAIL_STREAM = 0,
  /** Answer the phase with an ImmediateResponse carrying the processor's error HTTP status
   * (default 500) and no body. */
  EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE = 1
} extproc_error_policy;

/** How Envoy sends a body (ProcessingMode.BodySendMode). */
typedef enum extproc_body_mode {
  EXTPROC_BODY_MODE_UNKNOWN = -1,        /**< Envoy did not say (no protocol_config) */
  EXTPROC_BODY_NONE = 0,                 /**< no body is sent */
  EXTPROC_BODY_STREAMED = 1,             /**< chunk by chunk, one reply per chunk */
  EXTPROC_BODY_BUFFERED = 2,             /**< whole, in one message */
  EXTPROC_BODY_BUFFERED_PARTIAL = 3,     /**< whole, or cut at Envoy's buffer limit */
  EXTPROC_BODY_FULL_DUPLEX_STREAMED = 4, /**< chunks without waiting; any number of replies */
  EXTPROC_BODY_GRPC = 5 /**< Envoy's GRPC mode, for gRPC traffic (ProcessingMode.GRPC) */
} extproc_body_mode;

/** Whether Envoy sends headers or trailers (ProcessingMode.HeaderSendMode). */
typedef enum extproc_header_mode {
  EXTPROC_HEADER_DEFAULT = 0, /**< in an override: keep what the filter is configured with */
  EXTPROC_HEADER_SEND = 1,    /**< sent to the processor */
  EXTPROC_HEADER_SKIP = 2     /**< not sent */
} extproc_header_mode;

/** ProcessingMode, for reading the mode in effect and for mode_override.
 *
 * Set `struct_size` to sizeof(extproc_processing_mode) before use, e.g.
 *   extproc_processing_mode mode = {.struct_size = sizeof(mode)};
 * It lets a later minor release add fields at the end without breaking compiled callers (see
 * extproc/version.h); a struct_size of 0 is refused with EXTPROC_EINVAL. */
typedef struct extproc_processing_mode {
  size_t struct_size; /**< sizeof(extproc_processing_mode), as compiled by the caller */
  extproc_header_mode request_header_mode;   /**< whether request headers are sent */
  extproc_header_mode response_header_mode;  /**< whether response headers are sent */
  extproc_body_mode request_body_mode;       /**< how the request body is sent */
  extproc_body_mode response_body_mode;      /**< how the response body is sent */
  extproc_header_mode request_trailer_mode;  /**< whether request trailers are sent */
  extproc_header_mode response_trailer_mode; /**< whether response trailers are sent */
} extproc_processing_mode;

/** ProcessingRequest.protocol_config: what Envoy says its body modes are. Envoy sends it in the
 * stream's first message only; the SDK keeps it. */
typedef struct extproc_protocol_config {
  bool known; /**< false when Envoy sent none (older Envoy, or observability mode) */
  extproc_body_mode request_body_mode;  /**< how Envoy sends the request body */
  extproc_body_mode response_body_mode; /**< how Envoy sends the response body */
  /** True when Envoy sends body chunks without waiting for the reply to the headers. */
  bool send_body_without_waiting_for_header_response;
} extproc_protocol_config;

/** One HTTP exchange as seen by one processor (one ext_proc gRPC stream). Opaque. */
typedef struct extproc_request extproc_request;

/** The facts the SDK extracts while the exchange goes on. Strings are NUL-terminated, owned by
 * the request, and stay valid until the request ends; NULL when not (yet) known. */
typedef struct extproc_request_info {
  const char *method;       /**< request `:method` */
  const char *path;         /**< request `:path`, with the query string */
  const char *scheme;       /**< request `:scheme` */
  const char *authority;    /**< request `:authority` */
  const char *request_id;   /**< request `x-request-id` */
  const char *content_type; /**< request `content-type` */
  int64_t content_length;   /**< request `content-length` in bytes; -1 when absent or invalid */
  uint32_t response_status; /**< response `:status`; 0 until response_headers is seen */
} extproc_request_info;

/** A phase callback. `ctx` is the processor's per-request context (context_size bytes, zeroed,
 * then given to context_init) or NULL when context_size is 0. Runs on the event-loop thread: it
 * must not block. */
typedef extproc_result (*extproc_phase_fn)(extproc_request *req, void *ctx);

/** Called once per request before its first callback, with the zeroed context. Return 0, or
 * non-zero to fail the request (the error policy applies); context_cleanup is then not called,
 * so a failing init frees whatever it allocated itself. May read the request. */
typedef int (*extproc_context_init_fn)(extproc_request *req, void *ctx);

/** Called once per request when it ends (normally, by reset, or at server shutdown), if
 * context_init succeeded or was not set. Frees what the context owns (not the context). */
typedef void (*extproc_context_cleanup_fn)(void *ctx);

/** The static-table way to define a processor. Unset callbacks answer their phase with a plain
 * CONTINUE. Set `struct_size` to sizeof(extproc_processor_def):
 *
 *   static const extproc_processor_def def = {
 *       .struct_size = sizeof(extproc_processor_def),
 *       .name = "MyProcessor",
 *       .request_headers = on_request_headers,
 *   };
 *
 * so a later minor release can add fields at the end without breaking compiled callers (fields
 * the caller's version lacks take their defaults; see extproc/version.h). */
typedef struct extproc_processor_def {
  size_t struct_size;  /**< sizeof(extproc_processor_def), as compiled by the caller */
  const char *name;    /**< shown in logs; copied */
  size_t context_size; /**< bytes of per-request context, zeroed per request; 0 for none */
  extproc_context_init_fn context_init;       /**< sets up the context; may be NULL */
  extproc_context_cleanup_fn context_cleanup; /**< frees what the context owns; may be NULL */
  extproc_phase_fn request_headers;           /**< callback for request_headers; may be NULL */
  extproc_phase_fn request_body;              /**< callback for request_body; may be NULL */
  extproc_phase_fn request_trailers;          /**< callback for request_trailers; may be NULL */
  extproc_phase_fn response_headers;          /**< callback for response_headers; may be NULL */
  extproc_phase_fn response_body;             /**< callback for response_body; may be NULL */
  extproc_phase_fn response_trailers;         /**< callback for response_trailers; may be NULL */
  extproc_error_policy on_error;              /**< what EXTPROC_FAIL does (default: FAIL_STREAM) */
  uint32_t error_http_status; /**< for EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE; 0 means 500 */
  void *user_data;            /**< returned by extproc_request_user_data(); not owned */
  /** Callbacks may block, and run on the server's blocking pool instead of the event
   * loop (see extproc_processor_set_blocking). Default false. */
  bool blocking;
  /** Milliseconds a deferred or blocking phase may take before the error policy
   * answers it (see extproc_processor_set_deadline). 0 (the default): no deadline. */
  uint32_t deadline_ms;
  /** Bytes extproc_body_accumulate() keeps per direction (see
   * extproc_processor_set_max_body_accumulate). 0 means the default, 16 MiB. */
  size_t max_body_accumulate_bytes;
} extproc_processor_def;

/** A processor: its name, callbacks, context and error settings. Opaque; created by
 * extproc_processor_new() or extproc_processor_new_from_def(). */
typedef struct extproc_processor extproc_processor;

/** Creates a processor from a static table, which is copied (the name too). On success stores
 * it in `*out` (free it with extproc_processor_free()) and returns 0; otherwise stores NULL and
 * returns EXTPROC_EINVAL (out, def or def->name NULL, struct_size not set or from a newer
 * version using fields this library lacks, a bad error policy or status) or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_processor_new_from_def(extproc_processor **out,
                                               const extproc_processor_def *def);

/** Creates an empty processor named `name` (copied) for the builder style: register callbacks
 * with extproc_processor_on() and friends before serving it. Stores it in `*out` and returns 0;
 * otherwise stores NULL and returns EXTPROC_EINVAL (out or name NULL) or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_processor_new(extproc_processor **out, const char *name);

/** Registers `fn` for `phase`, replacing any earlier one; NULL unregisters.
 * Returns 0, or EXTPROC_EINVAL for a NULL processor or an unknown phase. Not thread-safe:
 * call before the processor is served. */
EXTPROC_API int extproc_processor_on(extproc_processor *proc, extproc_phase phase,
                                     extproc_phase_fn fn);

/** Sets the per-request context: `size` bytes allocated and zeroed per request, then given to
 * `init` (may be NULL); `cleanup` (may be NULL) runs when the request ends. Returns 0 or
 * EXTPROC_EINVAL. Call before serving. */
EXTPROC_API int extproc_processor_set_context(extproc_processor *proc, size_t size,
                                              extproc_context_init_fn init,
                                              extproc_context_cleanup_fn cleanup);

/** Sets the error policy; `http_status` is used by EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE
 * (0 means 500; otherwise 200..599). Returns 0 or EXTPROC_EINVAL. Call before serving. */
EXTPROC_API int extproc_processor_set_error_policy(extproc_processor *proc,
                                                   extproc_error_policy policy,
                                                   uint32_t http_status);

/** Reveals the processor chain to the client: when `header` is set (e.g. "x-ext-procs-applied"),
 * the processor puts its name first in that header of the client's response, as
 * "Name,earlier,names" built on the value the response already carries (the upstream's
 * response headers as earlier processors left them; never the request, which a client could
 * forge), and in every immediate response it sends. Envoy runs response phases in reverse
 * filter order, so the client reads the names in the order the filters are chained. Written in
 * the response_headers reply, so it needs response headers SEND. NULL turns it off (the
 * default). `header` is copied. Returns 0, EXTPROC_EINVAL for an invalid header name, or
 * EXTPROC_ENOMEM. Call before serving. */
EXTPROC_API int extproc_processor_set_chain_header(extproc_processor *proc, const char *header);

/** Marks the processor's callbacks as blocking (they may sleep, read files, call slow services
 * synchronously). When served by a server, each of its callbacks then runs on the server's
 * blocking pool (extproc_server_options.blocking_threads threads), never on an event loop, so
 * other processors and streams on the same loop keep their latency. The phase is deferred on
 * the callback's behalf, so the callback just returns its result; it may still call
 * extproc_request_defer() and return EXTPROC_DEFER to answer later from yet another thread.
 * While a callback waits for a pool thread, its stream takes no more input (HTTP/2
 * flow-control credit is held back, as for any deferred phase); that is the back-pressure of a
 * full pool. The deadline (extproc_processor_set_deadline) counts the time spent waiting.
 * Inside a blocking callback everything of the request may be used as in any callback, except
 * extproc_override_message_timeout() (refused: replies leave only from the loop thread).
 * context_init and context_cleanup still run on the loop and must not block. The testing
 * harness runs blocking callbacks on a small pool of its own. Returns 0 or EXTPROC_EINVAL
 * (NULL). Call before serving. */
EXTPROC_API int extproc_processor_set_blocking(extproc_processor *proc, bool blocking);

/** Sets the callback deadline: a phase that is deferred (extproc_request_defer) or runs as a
 * blocking callback and has no answer `ms` milliseconds after it was deferred (or handed to
 * the blocking pool, queueing included) is answered by the processor's error policy: with
 * EXTPROC_ON_ERROR_FAIL_STREAM the gRPC stream ends with DEADLINE_EXCEEDED (Envoy's
 * failure_mode_allow then decides), with EXTPROC_ON_ERROR_IMMEDIATE_RESPONSE the client gets
 * the policy's HTTP status (details "ext_proc_callback_deadline_exceeded"). One error line is
 * logged with processor, phase and request id. The late answer is then dropped:
 * extproc_request_resume() returns EXTPROC_ETIMEDOUT, a blocking callback's result is
 * ignored, and the request is freed only then. A callback running on the loop thread is not
 * interrupted (it must not block anyway). Choose it below Envoy's message_timeout (default
 * 200 ms) for the policy's answer to reach the client; above it, Envoy has given up first. 0
 * (the default) sets no deadline. Returns 0 or EXTPROC_EINVAL (NULL). Call before serving. */
EXTPROC_API int extproc_processor_set_deadline(extproc_processor *proc, uint32_t ms);

/** Caps the bytes extproc_body_accumulate() keeps per direction of a request (request body and
 * response body each). A chunk that would pass the cap is refused: the call returns NULL,
 * extproc_body_accumulate_error() returns EXTPROC_ELIMIT, one warning is logged with
 * processor, phase and request id, and the failure is recorded as RESOURCE_EXHAUSTED so that a
 * callback returning EXTPROC_FAIL reports it. `bytes` 0 means the default, 16 MiB (the
 * server's default max_message_bytes: a BUFFERED body is never larger). Returns 0 or
 * EXTPROC_EINVAL (NULL). Call before serving. */
EXTPROC_API int extproc_processor_set_max_body_accumulate(extproc_processor *proc, size_t bytes);

/** Sets the pointer returned by extproc_request_user_data(). Not owned. Call before serving. */
EXTPROC_API void extproc_processor_set_user_data(extproc_processor *proc, void *user_data);

/** Frees a processor's user_data; called with it by extproc_processor_free(). */
typedef void (*extproc_user_data_free_fn)(void *user_data);

/** Hands the user_data (see extproc_processor_set_user_data()) to the processor: `free_fn` is
 * called once with it when the processor is freed (extproc_processor_free()), after serving has
 * ended, unless user_data is NULL then. NULL (the default) leaves user_data owned by the
 * caller. Lets a processor constructor keep processor-wide state (settings, loaded keys) whose
 * lifetime is the processor's. Returns 0 or EXTPROC_EINVAL (NULL processor). Not thread-safe:
 * call before serving. */
EXTPROC_API int extproc_processor_set_user_data_free(extproc_processor *proc,
                                                     extproc_user_data_free_fn free_fn);

/** Returns the processor's name (owned by the processor), or "" for NULL. */
EXTPROC_API const char *extproc_processor_name(const extproc_processor *proc);

/** Frees a processor. It must no longer be served. NULL is ignored. */
EXTPROC_API void extproc_processor_free(extproc_processor *proc);

/** @name Reading the request
 * @{ */

/** The phase being processed (EXTPROC_PHASE_COUNT for a NULL request). The getters below accept
 * NULL and then answer "nothing": NULL, false, -1 or unknown. */
EXTPROC_API extproc_phase extproc_request_phase(const extproc_request *req);

/** The facts extracted so far; owned by the request, valid until it ends. */
EXTPROC_API const extproc_request_info *extproc_request_get_info(const extproc_request *req);

/** The processor's user_data (see extproc_processor_def.user_data). */
EXTPROC_API void *extproc_request_user_data(const extproc_request *req);

/** The event loop the request's stream runs on: a libuv `uv_loop_t *` (returned as `void *`, so
 * that this header does not need libuv's), for processors that answer through an asynchronous
 * client on the stream's own loop instead of a thread: attach the client's handles to it,
 * call extproc_request_defer() and return EXTPROC_DEFER, then call extproc_request_resume() from
 * the client's callback on the same loop (one loop per worker thread; all streams of a
 * connection share it).
 *
 * Returns NULL for a NULL request and in the in-process testing harness (testing.h), which has
 * no loop: a processor must then answer without one (fall back, or refuse the phase).
 *
 * Thread: use the loop only on its own thread, i.e. from a non-blocking callback of a request
 * on it, from context_cleanup, or from callbacks of handles on that loop; libuv loops are not
 * thread-safe. A blocking callback (extproc_processor_set_blocking) runs on a pool thread and
 * must not touch it.
 *
 * Lifetime: the loop is owned by the server and outlives every stream on it; the same pointer
 * is returned for every request on that worker until the server stops. Key per-loop state
 * (e.g. one client connection per loop) by it. Handles a processor starts on the loop must be
 * unreferenced (`uv_unref()`), or they keep the loop, and so extproc_server_stop(), from
 * finishing. When the server stops, once every stream on a loop has ended, the server closes
 * every handle still open on it (without calling their owners' close callbacks) and frees the
 * loop: after extproc_server_wait() has returned (or extproc_server_free(), which waits),
 * neither the loop nor the processor's handles on it may be touched, only the processor's own
 * memory released. */
EXTPROC_API void *extproc_request_loop(const extproc_request *req);

/** The name of the processor serving this request. */
EXTPROC_API const char *extproc_request_processor_name(const extproc_request *req);

/** True when Envoy said nothing follows this message in its direction: for a headers phase,
 * HttpHeaders.end_of_stream (the request or response has no body and no trailers); for a body
 * phase, HttpBody.end_of_stream; always true for trailers. */
EXTPROC_API bool extproc_request_end_of_stream(const extproc_request *req);

/** One header of the current phase's header map (request headers, response headers or
 * trailers). Names are lower case as Envoy sends them; values are read from `raw_value`,
 * falling back to `value`. Both strings are NUL-terminated and owned by the request; they are
 * valid until the callback returns. */
typedef struct extproc_header {
  const char *name;  /**< the header's name */
  size_t name_len;   /**< bytes, without the terminating NUL */
  const char *value; /**< the header's value */
  size_t value_len;  /**< bytes, without the terminating NUL */
} extproc_header;

/** The current phase's headers in the order Envoy sent them, pseudo-headers included; `*count`
 * receives their number. Returns NULL with *count = 0 in a body phase. Valid until the callback
 * returns. */
EXTPROC_API const extproc_header *extproc_headers(const extproc_request *req, size_t *count);

/** The first value of header `name` (compared case-insensitively) in the current phase, or NULL
 * if absent (or in a body phase). Valid until the callback returns. */
EXTPROC_API const char *extproc_header_get(const extproc_request *req, const char *name);

/** Every value of a repeated header: stores up to `max` value pointers into `values` (may be
 * NULL when max is 0) in the order sent and returns how many there are in all. */
EXTPROC_API size_t extproc_header_get_all(const extproc_request *req, const char *name,
                                          const char **values, size_t max);

/** The current body chunk (HttpBody.body) and its length in bytes in `*len`. Returns NULL with
 * *len = 0 outside body phases; a non-NULL pointer with *len = 0 for an empty chunk. Valid
 * until the callback returns. */
EXTPROC_API const uint8_t *extproc_body(const extproc_request *req, size_t *len);

/** ProcessingRequest.protocol_config as Envoy sent it in the first message. Owned by the
 * request. */
EXTPROC_API const extproc_protocol_config *
extproc_request_protocol_config(const extproc_request *req);

/** The body mode in effect for the current phase's direction: Envoy's protocol_config, updated
 * by this processor's own mode_override; EXTPROC_BODY_MODE_UNKNOWN if Envoy did not say. */
EXTPROC_API extproc_body_mode extproc_request_body_mode(const extproc_request *req);

/** The processing mode in effect, as far as Envoy told: body modes as above (unknown ones as
 * NONE: without protocol_config, set both body modes yourself before overriding, or the override
 * turns a body off), header and trailer modes EXTPROC_HEADER_DEFAULT ("as configured"). The
 * starting point for extproc_mode_override(). `mode->struct_size` must be set; the fields its
 * version has are filled. Returns 0, or EXTPROC_EINVAL (mode NULL or struct_size not set). A
 * NULL request fills the "nothing known" mode. */
EXTPROC_API int extproc_request_processing_mode(const extproc_request *req,
                                                extproc_processing_mode *mode);

/** True when Envoy sent this message in observability mode: it expects no reply, and none is
 * sent whatever the callback records. */
EXTPROC_API bool extproc_request_observability_mode(const extproc_request *req);

/** In a body phase: appends the current chunk to the direction's accumulated body (once per
 * chunk, however often called) and returns the whole body so far, `*len` bytes. For STREAMED,
 * BUFFERED_PARTIAL and FULL_DUPLEX_STREAMED processors that need the whole body at the end.
 * The buffer is owned by the request and valid until the next call or the end of the request.
 * Returns NULL (and *len = 0) outside body phases, on out-of-memory, or when the body would
 * pass the processor's cap (extproc_processor_set_max_body_accumulate; default 16 MiB); from
 * then on every call for that direction returns NULL, since the body is incomplete.
 * extproc_body_accumulate_error() tells which. */
EXTPROC_API const uint8_t *extproc_body_accumulate(extproc_request *req, size_t *len);

/** Why the last extproc_body_accumulate() call on `req` returned NULL: EXTPROC_ELIMIT (the body
 * passed max_body_accumulate_bytes; the failure is already recorded as RESOURCE_EXHAUSTED, so
 * returning EXTPROC_FAIL reports it, or answer e.g. 413 with extproc_immediate_response()),
 * EXTPROC_ENOMEM, or EXTPROC_ESTATE (not a body phase); 0 if it returned the body (or was
 * never called); EXTPROC_EINVAL for NULL. Same thread rules as the request. */
EXTPROC_API int extproc_body_accumulate_error(const extproc_request *req);

/** The per-request context (see extproc_processor_set_context), or NULL if it has none. */
EXTPROC_API void *extproc_request_context(const extproc_request *req);

/** Allocates `size` bytes (aligned for any type, uninitialized) that live until the request
 * ends; never freed individually. Handy for keeping values across phases in the context.
 * Returns NULL on out-of-memory. Same thread rules as the rest of the request. */
EXTPROC_API void *extproc_request_alloc(extproc_request *req, size_t size);

/** Copies the NUL-terminated string `s` into memory that lives until the request ends.
 * Returns NULL if `s` is NULL or on out-of-memory. */
EXTPROC_API char *extproc_request_strdup(extproc_request *req, const char *s);
/** @} */

/** @name Header mutations (HeaderMutation of the phase's reply)
 *
 * They apply to the headers of the current phase's direction: in request phases to the headers
 * sent upstream, in response phases to the headers sent to the client, in trailer phases to
 * the trailers. Written to `raw_value` only (Envoy answers 500 when `value` is set too), with
 * the legacy `append` flag and `append_action` set consistently. Names must be valid HTTP
 * header names (copied, lower-cased); values must not contain control characters other than
 * horizontal tab (CR, LF, NUL...) (copied). Each returns 0, EXTPROC_EINVAL for a bad name or
 * value, EXTPROC_ENOMEM, or EXTPROC_ESTATE with a log line when Envoy would never apply the
 * write: in observability mode, after an immediate or streamed immediate response was started,
 * or in a FULL_DUPLEX_STREAMED body phase (whose replies are streamed_response pieces, which
 * carry no header mutation).
 * @{ */

/** Replaces every existing value (or adds the header): append=false, OVERWRITE_IF_EXISTS_OR_ADD. */
EXTPROC_API int extproc_header_set(extproc_request *req, const char *name, const char *value);
/** Adds one more value: append=true, APPEND_IF_EXISTS_OR_ADD. */
EXTPROC_API int extproc_header_append(extproc_request *req, const char *name, const char *value);
/** Adds the header only if the phase's headers lack it (checked here against what Envoy sent,
 * and sent as ADD_IF_ABSENT), so an existing value is never touched. */
EXTPROC_API int extproc_header_add_if_absent(extproc_request *req, const char *name,
                                             const char *value);
/** Removes the header (HeaderMutation.remove_headers). */
EXTPROC_API int extproc_header_remove(extproc_request *req, const char *name);
/** @} */

/** @name Body mutations (BodyMutation)
 * @{ */

/** Replaces the body with `len` bytes copied from `data`:
 *  - in a body phase, this chunk (BUFFERED: the whole body; STREAMED: this chunk;
 *    BUFFERED_PARTIAL: the part Envoy sent; FULL_DUPLEX_STREAMED: what is sent on in place of
 *    this chunk, as a streamed_response). In BUFFERED mode, when the direction's headers carried
 *    content-length, the SDK also sets content-length to the new size (Envoy answers 500 for a
 *    stale one); in the other modes Envoy has already removed it.
 *  - in a headers phase, the whole body, with CommonResponse status CONTINUE_AND_REPLACE: Envoy
 *    takes this body and expects no body or trailer reply for that direction any more; any such
 *    message already on its way is dropped unanswered, without a callback.
 * Returns 0, EXTPROC_EINVAL, EXTPROC_ENOMEM, or EXTPROC_ESTATE with a log line in a trailers
 * phase, in observability mode, or after an immediate or streamed immediate response. */
EXTPROC_API int extproc_body_replace(extproc_request *req, const void *data, size_t len);
/** Clears the body: the same as replacing it with nothing (BodyMutation.clear_body; in
 * FULL_DUPLEX_STREAMED this chunk is dropped). Same returns. */
EXTPROC_API int extproc_body_clear(extproc_request *req);

/** FULL_DUPLEX_STREAMED only: sends `len` bytes on as body (a StreamedBodyResponse); call it any
 * number of times per chunk, or not at all (the chunk is then passed on unchanged, unless it was
 * cleared or replaced). `end_of_stream` ends the direction's body; the SDK sends an empty
 * end_of_stream reply itself when Envoy's last chunk comes and none was sent. Returns 0,
 * EXTPROC_ESTATE in another mode or phase or after the body was ended, EXTPROC_EINVAL, or
 * EXTPROC_ENOMEM. */
EXTPROC_API int extproc_streamed_body_send(extproc_request *req, const void *data, size_t len,
                                           bool end_of_stream);
/** @} */

/** @name Other reply fields
 * @{ */

/** Overrides the processing mode for the rest of the exchange (ProcessingResponse.mode_override),
 * e.g. to ask for the response body after seeing the request. Start from
 * extproc_request_processing_mode(). Envoy grants it only in a headers reply, when the filter
 * has allow_mode_override (without send_body_without_waiting_for_header_response), never for a
 * FULL_DUPLEX_STREAMED filter, and, when the filter lists allowed_override_modes, only if the
 * override equals an entry on every field but request_header_mode. Envoy compares after
 * replacing the override's DEFAULT header and trailer modes with the filter's processing_mode
 * as written, and takes the entries as written: an entry saying SEND or SKIP does not match a
 * filter that leaves that mode DEFAULT, nor the reverse, even though both mean the same.
 * Envoy refuses silently, so the SDK goes on as if the override took effect
 * (extproc_request_body_mode() says what was asked; a refused switch to or from
 * FULL_DUPLEX_STREAMED breaks the exchange). Whatever Envoy decided, content-length stays
 * true: an override asking for a streaming body mode (STREAMED, BUFFERED_PARTIAL,
 * FULL_DUPLEX_STREAMED) removes the content-length of its own phase's headers unless Envoy
 * already dropped it, and a changed body gets its new length where Envoy keeps the header
 * (docs/protocol.md). Returns 0, EXTPROC_EINVAL (also for a struct_size not set), or
 * EXTPROC_ESTATE with a log line outside a headers phase, in observability mode, or after an
 * immediate response. */
EXTPROC_API int extproc_mode_override(extproc_request *req, const extproc_processing_mode *mode);

/** Sets CommonResponse.clear_route_cache in a request headers or request body reply (Envoy acts
 * on it for request headers that were mutated). Returns 0, EXTPROC_EINVAL for NULL, or
 * EXTPROC_ESTATE with a log line where Envoy would never act on it: a trailers phase, a response
 * phase (Envoy ignores it in that direction), a FULL_DUPLEX_STREAMED body phase, observability
 * mode, or after an immediate response. */
EXTPROC_API int extproc_clear_route_cache(extproc_request *req);

/** Asks Envoy for more time for this message: sends at once a ProcessingResponse carrying only
 * override_message_timeout (`ms` milliseconds, at least 1), then the callback answers as usual,
 * typically later through EXTPROC_DEFER. Envoy honours it up to the filter's
 * max_message_timeout (0, the default, disables it). Only from the callback itself (the loop
 * thread). Returns 0, EXTPROC_EINVAL, or EXTPROC_ESTATE (outside a callback, in a blocking
 * callback, in observability mode, or after the stream ended). */
EXTPROC_API int extproc_override_message_timeout(extproc_request *req, uint32_t ms);
/** @} */

/** @name Immediate response (ProcessingResponse.immediate_response)
 * @{ */

/** Starts an immediate response: instead of the phase's reply, Envoy answers the client at once
 * with `http_status` (100..599) and ends processing. Header and body mutations recorded for the
 * phase are discarded, and later ones refused. Returns 0, EXTPROC_EINVAL for a bad status,
 * EXTPROC_ESTATE with a log line in observability mode or after a streamed immediate response,
 * or EXTPROC_ENOMEM. Calling it again changes the status. */
EXTPROC_API int extproc_immediate_response(extproc_request *req, uint32_t http_status);
/** Sets a header of the immediate response (ImmediateResponse.headers, overwrite semantics).
 * Returns 0, EXTPROC_ESTATE with a log line if no immediate response was started (nothing
 * would carry it), EXTPROC_EINVAL, or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_immediate_header_set(extproc_request *req, const char *name,
                                             const char *value);
/** Sets the immediate response's body (`len` bytes copied). Same returns. */
EXTPROC_API int extproc_immediate_body(extproc_request *req, const void *data, size_t len);
/** Sets ImmediateResponse.grpc_status, for gRPC clients behind Envoy. Same returns. */
EXTPROC_API int extproc_immediate_grpc_status(extproc_request *req, extproc_grpc_code code);
/** Sets ImmediateResponse.details (Envoy's response code details; copied). Same returns. */
EXTPROC_API int extproc_immediate_details(extproc_request *req, const char *details);

/** A streamed immediate response (ProcessingResponse.streamed_immediate_response): like an
 * immediate response, but its body may be sent in pieces, over this and later callbacks. Start
 * it in request_headers (Envoy requires request headers SEND) with the status; headers set with
 * extproc_immediate_header_set() in the same callback go with it. Then send body pieces with
 * extproc_streamed_immediate_body(), the last with end_of_stream. Envoy accepts one only when the
 * request body mode is NONE or FULL_DUPLEX_STREAMED. Later messages of the exchange get no
 * reply of their own. Returns 0, EXTPROC_EINVAL, EXTPROC_ESTATE (not in request_headers, in
 * observability mode, or in another request body mode), or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_streamed_immediate_response(extproc_request *req, uint32_t http_status,
                                                    bool end_of_stream);
/** Sends a body piece of a started streamed immediate response. Returns 0, EXTPROC_ESTATE (none
 * started, or it has ended), EXTPROC_EINVAL, or EXTPROC_ENOMEM. */
EXTPROC_API int extproc_streamed_immediate_body(extproc_request *req, const void *data, size_t len,
                                                bool end_of_stream);
/** @} */

/** @name Failure and deferred answers
 * @{ */

/** Records why the callback is about to return EXTPROC_FAIL: the gRPC status (not OK) and a
 * message (copied; may be NULL) used by EXTPROC_ON_ERROR_FAIL_STREAM and in the log line.
 * Returns 0 or EXTPROC_EINVAL. */
EXTPROC_API int extproc_request_fail(extproc_request *req, extproc_grpc_code code,
                                     const char *message);

/** Declares that the current phase will be answered later, through extproc_request_resume().
 * Call it in the callback before the request can reach another thread (or a timer, or an
 * asynchronous client), then return EXTPROC_DEFER. From this call on the phase is deferred
 * whatever the callback returns, so a resume that comes before the callback returns is never
 * lost. Only from the callback itself (the loop thread, or the pool thread of a blocking
 * callback); calling it twice is harmless. The processor's deadline
 * (extproc_processor_set_deadline), if any, runs from the moment the callback returns.
 * In a body phase the chunk, which the callback reads where it arrived, is copied here so that
 * it outlives the callback (extproc_body() returns the copy from now on).
 * Returns 0, EXTPROC_EINVAL for NULL, EXTPROC_ESTATE (with a log line) outside a callback, or
 * EXTPROC_ENOMEM (with a log line) when that copy cannot be made: the phase is then not
 * deferred. */
EXTPROC_API int extproc_request_defer(extproc_request *req);

/** Finishes a deferred phase, as if its callback had returned `result` (EXTPROC_CONTINUE or
 * EXTPROC_FAIL). Thread-safe: call it from any thread, exactly once per deferral. It may come
 * before the callback has even returned, if the callback called extproc_request_defer() first;
 * the reply is then sent when the callback returns. A callback that returns EXTPROC_DEFER
 * without extproc_request_defer() is deferred too, but then a resume before it returns is
 * refused.
 *
 * Ownership while deferred: from the moment the callback hands `req` to another thread until
 * that thread calls this function, only that thread may use `req` (to read it and record the
 * answer); after the call, nobody may. If Envoy ended the exchange meanwhile (for instance its
 * message_timeout ran out), the answer is dropped with a warning and the request freed. If the
 * processor's deadline passed first, the error policy has already answered the phase: this
 * call still hands the request back (it must be made, or the request is never freed), drops
 * the answer and returns EXTPROC_ETIMEDOUT.
 *
 * At shutdown a deferred request waits at most for the server's grace period
 * (extproc_server_options.shutdown_grace_ms): then it is abandoned, with a warning saying so.
 * A late resume of an abandoned request, even after extproc_server_wait() or
 * extproc_server_free() has returned, frees it on the calling thread (running context_cleanup
 * there, without touching the processor or the server) and returns 0; nothing is sent. The
 * request must still be resumed (or the process exit) for its memory to be freed.
 *
 * Returns 0, EXTPROC_ETIMEDOUT (after the deadline, as above; the request is released all the
 * same), EXTPROC_EINVAL (NULL, or a result of EXTPROC_DEFER) or EXTPROC_ESTATE with a log line
 * (no phase of this request is waiting for a resume: not deferred, not declared with
 * extproc_request_defer(), or already resumed). */
EXTPROC_API int extproc_request_resume(extproc_request *req, extproc_result result);
/** @} */

/** @name Logging
 * @{ */

/** How important a log line is; lines below the threshold are not written. */
typedef enum extproc_log_level {
  EXTPROC_LOG_DEBUG = 0, /**< detail for debugging, e.g. how long each message took */
  EXTPROC_LOG_INFO = 1,  /**< normal events, e.g. a signal that stops the server */
  EXTPROC_LOG_WARN = 2,  /**< something wrong that the SDK handled, e.g. a refused call */
  EXTPROC_LOG_ERROR = 3, /**< a failure, e.g. a failed request or a listener that cannot bind */
  EXTPROC_LOG_OFF = 4    /**< as a threshold: no lines at all */
} extproc_log_level;

/** How log lines are written. */
typedef enum extproc_log_format {
  /** One line per event: `TIME LEVEL processor=P phase=F request_id=R peer=A: message`, each
   * field only where known; control characters are shown as '?'. The default. */
  EXTPROC_LOG_FORMAT_TEXT = 0,
  /** One JSON object per line (RFC 8259, valid UTF-8): "time" (RFC 3339 UTC, microseconds),
   * "level" (DEBUG, INFO, WARN, ERROR), "message", and "processor", "phase", "request_id",
   * "peer" where known; "suppressed" when the rate limit dropped similar lines before it. */
  EXTPROC_LOG_FORMAT_JSON = 1
} extproc_log_format;

/** Sets the process-wide log threshold (default EXTPROC_LOG_INFO). Lines go to stderr. Thread-safe.
 *
 * Warnings and errors are rate-limited per call site (the format string): at most 10 lines per
 * second each; the next line printed from that call site ends with "(N similar lines
 * suppressed)". Debug and info lines are not limited; serving a request logs nothing at info.
 */
EXTPROC_API void extproc_log_set_level(extproc_log_level level);
/** Parses "debug", "info", "warn"/"warning", "error", "off" (any case). Returns 0 and stores the
 * level, or EXTPROC_EINVAL. */
EXTPROC_API int extproc_log_level_parse(const char *text, extproc_log_level *level);
/** Sets the process-wide log format (default EXTPROC_LOG_FORMAT_TEXT); a value that is not an
 * extproc_log_format is ignored. Thread-safe; lines already being written keep their format. */
EXTPROC_API void extproc_log_set_format(extproc_log_format format);
/** Parses "text" or "json" (any case). Returns 0 and stores the format, or EXTPROC_EINVAL. */
EXTPROC_API int extproc_log_format_parse(const char *text, extproc_log_format *format);
/** Logs a line from processor code at `level`, naming the processor, phase, request id
 * (Envoy's `x-request-id`) and peer address (Envoy's end of the connection) of `req` (may be
 * NULL), in the format set by extproc_log_set_format(). printf-style; `fmt` is also the rate
 * limit's key. Thread-safe. */
EXTPROC_API void extproc_log(const extproc_request *req, extproc_log_level level, const char *fmt,
                             ...) __attribute__((format(printf, 3, 4)));
/** @} */

#ifdef __cplusplus
}
#endif

#include "extproc/values.h" /* attributes, metadata and dynamic metadata */

#endif /* EXTPROC_EXTPROC_H */
