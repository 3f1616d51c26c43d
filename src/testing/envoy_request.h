/* The messages Envoy sends: ProcessingRequests built the way Envoy's ext_proc filter builds them
 * (header values in raw_value only, attributes under the filter's name, forwarded metadata one
 * entry per namespace), for the testing harness, the C tests and the load generator.
 *
 * Everything is allocated in a caller's arena and freed with it; nothing is copied: the
 * messages point at the caller's strings and bytes, which must stay valid as long as the
 * message is used (typically until it is encoded). Functions returning a pointer return NULL on
 * out-of-memory (or on a bad argument, as said); functions returning bool return false then. */
#ifndef EXTPROC_ENVOY_REQUEST_H
#define EXTPROC_ENVOY_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/arena.h"
#include "envoy/service/ext_proc/v3/external_processor.pb-c.h"
#include "extproc/extproc.h"

typedef Envoy__Service__ExtProc__V3__ProcessingRequest envoy_request;

/* The key Envoy files the filter's request/response attributes under. */
#define ENVOY_REQUEST_ATTRIBUTES_KEY "envoy.filters.http.ext_proc"

/* A HeaderMap of `n` headers from `pairs`, a flat array of 2 * n NUL-terminated strings: name,
 * value, name, value... Each value goes in raw_value (its bytes, without the NUL), as Envoy
 * sends it; the legacy `value` field stays empty. */
Envoy__Config__Core__V3__HeaderMap *envoy_header_map(arena *a, const char *const *pairs, size_t n);

/* An empty ProcessingRequest: no phase set (the oneof unset), no context. */
envoy_request *envoy_request_new(arena *a);

/* A ProcessingRequest for a headers or trailers `phase` (request_headers, response_headers,
 * request_trailers or response_trailers) carrying the `n` headers of `pairs` (as in
 * envoy_header_map). `end_of_stream` is HttpHeaders.end_of_stream; trailers have none and ignore
 * it. NULL also for a body phase or a phase out of range. */
envoy_request *envoy_request_headers(arena *a, extproc_phase phase, const char *const *pairs,
                                     size_t n, bool end_of_stream);

/* A ProcessingRequest for one request_body or response_body (`phase`) chunk: `len` bytes at
 * `data` (may be NULL when `len` is 0) and HttpBody.end_of_stream. NULL also for a phase that
 * is not a body phase. */
envoy_request *envoy_request_body(arena *a, extproc_phase phase, const void *data, size_t len,
                                  bool end_of_stream);

/* Sets `m`'s protocol_config: the body modes Envoy announces on a stream's first message. */
bool envoy_request_set_protocol_config(arena *a, envoy_request *m,
                                       extproc_body_mode request_body_mode,
                                       extproc_body_mode response_body_mode);

/* Sets `m`'s attributes to one entry, ENVOY_REQUEST_ATTRIBUTES_KEY, holding a Struct with the
 * `n` string fields keys[i] = values[i] (e.g. "request.path"), in that order. With n == 0 the
 * attributes are left empty. */
bool envoy_request_set_attributes(arena *a, envoy_request *m, const char *const *keys,
                                  const char *const *values, size_t n);

/* Sets `m`'s metadata_context.filter_metadata from `n` string entries:
 * filter_metadata[namespaces[i]][keys[i]] = values[i]. Entries of one namespace go in one
 * Struct, namespaces in the order they first appear, keys in the order given. With n == 0 no
 * metadata_context is set. */
bool envoy_request_set_metadata(arena *a, envoy_request *m, const char *const *namespaces,
                                const char *const *keys, const char *const *values, size_t n);

/* The name of a ProcessingResponse `response` case as the proto spells it ("request_headers",
 * "immediate_response"...), or "nothing" for an unset oneof: for messages about replies. */
const char *envoy_response_case_name(int response_case);

/* Encodes `m` as it goes on the wire (without the gRPC prefix). Returns the bytes, in `a`, and
 * their count in `*len`. */
uint8_t *envoy_request_encode(arena *a, const envoy_request *m, size_t *len);

#endif
