/**
 * @file
 * libextproc testing harness: drive a processor through the phases of one HTTP exchange, in
 * process, with no network, and inspect what it answered.
 *
 * The harness plays Envoy's part: each call sends one ProcessingRequest through the very
 * engine the server uses (encoded and decoded as on the wire), waits for the processor's answer
 * (also a deferred one, resumed from any thread), and records the reply. It also applies each
 * reply's header and body mutations the way Envoy does, so a test can ask what the upstream
 * would receive and what the client would get.
 *
 *   extproc_harness *h;
 *   extproc_harness_new(&h, proc);
 *   const char *req[] = {":method", "GET", ":path", "/x", "x-request-id", "abc", NULL};
 *   extproc_harness_headers(h, EXTPROC_REQUEST_HEADERS, req, true);
 *   assert(strcmp(extproc_harness_upstream_header(h, "x-extra-request-id"), "abc") == 0);
 *   extproc_harness_free(h);
 *
 * Threading: a harness is used from one thread (callbacks run on it); a processor may resume a
 * deferred phase from any thread. Strings returned are owned by the harness and valid until
 * the next call that sends a message, or until extproc_harness_free.
 */
#ifndef EXTPROC_TESTING_H
#define EXTPROC_TESTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "extproc/extproc.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One exchange played against a processor, and everything it answered. Opaque. */
typedef struct extproc_harness extproc_harness;

/** Starts one exchange for `proc` (not owned; must outlive the harness). Stores the harness in
 * `*out` and returns 0; otherwise stores NULL and returns EXTPROC_EINVAL (out or proc NULL) or
 * EXTPROC_ENOMEM. */
EXTPROC_API int extproc_harness_new(extproc_harness **out, const extproc_processor *proc);

/** Marks every following message with observability_mode (Envoy then expects no reply). */
EXTPROC_API void extproc_harness_set_observability_mode(extproc_harness *h, bool on);

/** How long a call waits for a deferred phase to be resumed, in milliseconds. Default 5000. */
EXTPROC_API void extproc_harness_set_timeout_ms(extproc_harness *h, uint32_t ms);

/** The body modes Envoy announces in the first message's protocol_config (by default none is
 * sent, as by an Envoy that does not). Call before the first message. */
EXTPROC_API void extproc_harness_set_protocol_config(extproc_harness *h,
                                                     extproc_body_mode request_body_mode,
                                                     extproc_body_mode response_body_mode);

/** Adds a string attribute (e.g. "request.path") to the next message, as Envoy sends the
 * filter's request_attributes / response_attributes. Copied. Returns 0 or a negative error. */
EXTPROC_API int extproc_harness_add_attribute(extproc_harness *h, const char *name,
                                              const char *value);

/** Sets metadata_context.filter_metadata[ns][key] = value (a string) on every following message,
 * as the filter's metadata_options.forwarding_namespaces would. Copied. Returns 0 or a negative
 * error. */
EXTPROC_API int extproc_harness_add_metadata(extproc_harness *h, const char *ns, const char *key,
                                             const char *value);

/** Sends request_headers, response_headers, request_trailers or response_trailers (`phase`),
 * with `headers` a NULL-terminated array of name, value, name, value... (names as Envoy sends
 * them: lower case, pseudo-headers included). `end_of_stream` is HttpHeaders.end_of_stream
 * (ignored for trailers). Headers also become the harness's view of what the upstream
 * (request phases) or the client (response phases) would get, before mutations.
 * Returns 0 once the processor has answered (or ended the stream), EXTPROC_EINVAL for a bad
 * phase or odd header list, EXTPROC_ESTATE if the exchange already ended, or EXTPROC_ETIMEDOUT
 * if a deferred phase was not resumed in time. */
EXTPROC_API int extproc_harness_headers(extproc_harness *h, extproc_phase phase,
                                        const char *const *headers, bool end_of_stream);

/** Sends one request_body or response_body chunk of `len` bytes. Same returns. */
EXTPROC_API int extproc_harness_body(extproc_harness *h, extproc_phase phase, const void *data,
                                     size_t len, bool end_of_stream);

/** Half-closes the stream as Envoy does once it has sent everything. Returns 0. */
EXTPROC_API int extproc_harness_end(extproc_harness *h);

/** Frees the harness and ends the exchange (as a reset if it was still open). A deferred phase is
 * waited for (see extproc_harness_set_timeout_ms); if it is still not resumed, its request is
 * freed when the resume comes, whose answer is dropped. NULL is ignored. */
EXTPROC_API void extproc_harness_free(extproc_harness *h);

/** @name What the processor answered
 * @{ */

/** One header write, as it was sent (HeaderValueOption). */
typedef struct extproc_harness_header_write {
  const char *name;     /**< the header's name, as sent */
  const char *value;    /**< from raw_value; NUL-terminated */
  size_t value_len;     /**< bytes, without the terminating NUL */
  bool value_field_set; /**< the legacy `value` field was also set (the SDK never does that) */
  bool append;          /**< the legacy `append` flag (false when absent) */
  int append_action;    /**< HeaderValueOption.HeaderAppendAction, as a number */
} extproc_harness_header_write;

/** What kind of ProcessingResponse a reply is. */
typedef enum extproc_harness_reply_kind {
  EXTPROC_HARNESS_PHASE_REPLY = 0,        /**< HeadersResponse, BodyResponse or TrailersResponse */
  EXTPROC_HARNESS_IMMEDIATE = 1,          /**< ImmediateResponse */
  EXTPROC_HARNESS_STREAMED_IMMEDIATE = 2, /**< a part of a StreamedImmediateResponse */
  EXTPROC_HARNESS_TIMEOUT_OVERRIDE = 3    /**< only override_message_timeout */
} extproc_harness_reply_kind;

/** What a phase reply's BodyMutation does to the body. */
typedef enum extproc_harness_body_change {
  EXTPROC_HARNESS_BODY_UNCHANGED = 0, /**< no body or clear_body mutation */
  EXTPROC_HARNESS_BODY_REPLACED = 1,  /**< BodyMutation.body: `body` is the new body */
  EXTPROC_HARNESS_BODY_CLEARED = 2    /**< BodyMutation.clear_body */
} extproc_harness_body_change;

/** One ProcessingResponse. For an immediate response, `header_writes` are its headers. */
typedef struct extproc_harness_reply {
  extproc_harness_reply_kind kind; /**< which kind of reply this is */
  extproc_phase phase;             /**< the phase it answers (for a phase reply) */
  bool continue_and_replace;       /**< CommonResponse status was CONTINUE_AND_REPLACE */
  const extproc_harness_header_write *header_writes; /**< the header writes, in order */
  size_t header_write_count;                         /**< number of `header_writes` */
  const char *const *header_removes;                 /**< names in HeaderMutation.remove_headers */
  size_t header_remove_count;                        /**< number of `header_removes` */
  extproc_harness_body_change body_change;           /**< what the BodyMutation does */
  const uint8_t *body;    /**< the replacement body, a streamed piece, or the immediate body */
  size_t body_len;        /**< bytes in `body` */
  bool streamed_body;     /**< body is a StreamedBodyResponse piece (FULL_DUPLEX_STREAMED body, or
                             a streamed immediate response's body) */
  bool end_of_stream;     /**< that piece's end_of_stream, or the streamed headers' */
  bool has_mode_override; /**< the reply carries a mode_override */
  extproc_processing_mode mode_override; /**< that mode_override, if `has_mode_override` */
  uint32_t override_message_timeout_ms;  /**< for EXTPROC_HARNESS_TIMEOUT_OVERRIDE, in ms */
  uint32_t immediate_status;             /**< HTTP status of an immediate response */
  bool has_grpc_status;                  /**< ImmediateResponse.grpc_status was set */
  uint32_t grpc_status;                  /**< ImmediateResponse.grpc_status */
  const char *details;                   /**< ImmediateResponse.details */
  bool clear_route_cache;                /**< CommonResponse.clear_route_cache */
} extproc_harness_reply;

/** Number of replies received since the harness started. */
EXTPROC_API size_t extproc_harness_reply_count(const extproc_harness *h);

/** Reply `index` (0 = first), or NULL if there is none. */
EXTPROC_API const extproc_harness_reply *extproc_harness_reply_at(const extproc_harness *h,
                                                                  size_t index);

/** The reply to the last message sent, or NULL if that message got none (observability mode,
 * or the stream ended instead). */
EXTPROC_API const extproc_harness_reply *extproc_harness_last_reply(const extproc_harness *h);

/** Namespace `ns` of the reply's dynamic_metadata (a struct value: read its keys with
 * extproc_value_field), or NULL. Valid as long as the reply. */
EXTPROC_API const extproc_value *extproc_harness_reply_metadata(const extproc_harness_reply *r,
                                                                const char *ns);

/** The value a reply writes for header `name` (the last write wins), or NULL. */
EXTPROC_API const char *extproc_harness_reply_header(const extproc_harness_reply *r,
                                                     const char *name);

/** True once the gRPC stream has ended; then `*grpc_status` and `*grpc_message` (may be NULL)
 * receive the final status (0 = OK) and message ("" if none). */
EXTPROC_API bool extproc_harness_stream_ended(const extproc_harness *h, uint32_t *grpc_status,
                                              const char **grpc_message);
/** @} */

/** @name Envoy's view after the mutations
 * @{ */

/** The first value of header `name` in the request the upstream would receive (request headers
 * after every mutation so far), or NULL. Case-insensitive. */
EXTPROC_API const char *extproc_harness_upstream_header(const extproc_harness *h, const char *name);

/** The first value of header `name` in the response the client would get (response headers after
 * every mutation, or the immediate response's headers), or NULL. Case-insensitive. */
EXTPROC_API const char *extproc_harness_client_header(const extproc_harness *h, const char *name);

/** Every value of `name` the upstream (request headers) or client (response headers) would see:
 * stores up to `max` pointers and returns how many there are. */
EXTPROC_API size_t extproc_harness_upstream_header_all(const extproc_harness *h, const char *name,
                                                       const char **values, size_t max);
/** The same as extproc_harness_upstream_header_all(), for the client's response headers. */
EXTPROC_API size_t extproc_harness_client_header_all(const extproc_harness *h, const char *name,
                                                     const char **values, size_t max);

/** The immediate response sent, if any (its status, headers and body are in the reply). */
EXTPROC_API const extproc_harness_reply *
extproc_harness_immediate_response(const extproc_harness *h);
/** @} */

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_TESTING_H */
