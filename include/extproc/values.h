/**
 * @file
 * libextproc structured values: google.protobuf.Struct and Value, as Envoy uses them for
 * ProcessingRequest.attributes, metadata_context and ProcessingResponse.dynamic_metadata.
 *
 * Reading: an extproc_value is a read-only view of one google.protobuf.Value owned by the
 * request; it stays valid until the request ends. Every accessor accepts NULL (an absent value)
 * and then answers "absent": NULL, 0 or false.
 *
 * Building: extproc_struct and extproc_list are parts of the reply being built; they are valid
 * until the callback returns (or, for a deferred phase, until extproc_request_resume). Keys and
 * strings are copied. Setting a key twice replaces its value. Functions returning int return 0,
 * EXTPROC_EINVAL (NULL argument, or a number that is not finite) or EXTPROC_ENOMEM.
 */
#ifndef EXTPROC_VALUES_H
#define EXTPROC_VALUES_H

#include <stdbool.h>
#include <stddef.h>

#include "extproc/visibility.h"

#ifdef __cplusplus
extern "C" {
#endif

/** One HTTP exchange (see extproc.h); declared here too so this header stands alone. */
typedef struct extproc_request extproc_request;

/** @name Reading
 * @{ */

/** A read-only view of one google.protobuf.Value. Opaque. */
typedef struct extproc_value extproc_value;

/** Which of google.protobuf.Value's kinds a value holds. */
typedef enum extproc_value_kind {
  EXTPROC_VALUE_ABSENT = 0, /**< no such value (a NULL extproc_value) */
  EXTPROC_VALUE_NULL,       /**< null_value */
  EXTPROC_VALUE_NUMBER,     /**< number_value: read it with extproc_value_number() */
  EXTPROC_VALUE_STRING,     /**< string_value: read it with extproc_value_string() */
  EXTPROC_VALUE_BOOL,       /**< bool_value: read it with extproc_value_bool() */
  EXTPROC_VALUE_STRUCT,     /**< struct_value: read its fields with extproc_value_field() */
  EXTPROC_VALUE_LIST        /**< list_value: read it with extproc_value_list_at() */
} extproc_value_kind;

/** The attribute `name` Envoy sent for this exchange (ProcessingRequest.attributes, under the
 * "envoy.filters.http.ext_proc" key, as configured by the filter's request_attributes and
 * response_attributes, e.g. "request.path", "source.address"), or NULL. Envoy sends request
 * attributes with the first request message and response attributes with the first response
 * message; the SDK keeps them for the rest of the exchange. */
EXTPROC_API const extproc_value *extproc_request_attribute(const extproc_request *req,
                                                           const char *name);

/** The value `key` of namespace `ns` in ProcessingRequest.metadata_context.filter_metadata (what
 * the filter's metadata_options.forwarding_namespaces sends), or NULL. Kept from the latest
 * message that carried metadata. */
EXTPROC_API const extproc_value *extproc_request_metadata(const extproc_request *req,
                                                          const char *ns, const char *key);

/** The kind of `v`; EXTPROC_VALUE_ABSENT for NULL. */
EXTPROC_API extproc_value_kind extproc_value_kind_of(const extproc_value *v);
/** The string, or NULL if `v` is not a string. NUL-terminated. */
EXTPROC_API const char *extproc_value_string(const extproc_value *v);
/** The number (Envoy encodes integers as numbers too), or 0 if `v` is not a number. */
EXTPROC_API double extproc_value_number(const extproc_value *v);
/** The boolean, or false if `v` is not a boolean. */
EXTPROC_API bool extproc_value_bool(const extproc_value *v);
/** The field `key` of a struct value, or NULL. */
EXTPROC_API const extproc_value *extproc_value_field(const extproc_value *v, const char *key);
/** The number of elements of a list value (0 otherwise), and element `index` (or NULL). */
EXTPROC_API size_t extproc_value_list_size(const extproc_value *v);
/** Element `index` of a list value, or NULL (out of range, or not a list). */
EXTPROC_API const extproc_value *extproc_value_list_at(const extproc_value *v, size_t index);
/** @} */

/** @name Building (dynamic metadata)
 * @{ */

/** An object (google.protobuf.Struct) being built in the reply. Opaque. */
typedef struct extproc_struct extproc_struct;
/** A list (google.protobuf.ListValue) being built in the reply. Opaque. */
typedef struct extproc_list extproc_list;

/** The object for namespace `ns` in this reply's ProcessingResponse.dynamic_metadata, created
 * on first use. Envoy keeps only namespaces listed in the filter's
 * metadata_options.receiving_namespaces.untyped, and merges each into the stream's dynamic
 * metadata (read it in access logs with \%DYNAMIC_METADATA(ns:key)%). Returns NULL for a NULL or
 * empty `ns`, on out-of-memory, or, with a log line, in observability mode (no reply is
 * sent). */
EXTPROC_API extproc_struct *extproc_dynamic_metadata(extproc_request *req, const char *ns);

/** Sets `key` to the string `value` (copied). */
EXTPROC_API int extproc_struct_set_string(extproc_struct *s, const char *key, const char *value);
/** Sets `key` to the number `value` (finite). */
EXTPROC_API int extproc_struct_set_number(extproc_struct *s, const char *key, double value);
/** Sets `key` to the boolean `value`. */
EXTPROC_API int extproc_struct_set_bool(extproc_struct *s, const char *key, bool value);
/** Sets `key` to null. */
EXTPROC_API int extproc_struct_set_null(extproc_struct *s, const char *key);
/** A nested object or list under `key`; NULL on a NULL argument or out-of-memory. */
EXTPROC_API extproc_struct *extproc_struct_set_struct(extproc_struct *s, const char *key);
/** A nested list under `key`; NULL on a NULL argument or out-of-memory. */
EXTPROC_API extproc_list *extproc_struct_set_list(extproc_struct *s, const char *key);

/** Appends the string `value` (copied). */
EXTPROC_API int extproc_list_add_string(extproc_list *l, const char *value);
/** Appends the number `value` (finite). */
EXTPROC_API int extproc_list_add_number(extproc_list *l, double value);
/** Appends the boolean `value`. */
EXTPROC_API int extproc_list_add_bool(extproc_list *l, bool value);
/** Appends a nested object; NULL on a NULL argument or out-of-memory. */
EXTPROC_API extproc_struct *extproc_list_add_struct(extproc_list *l);
/** Appends a nested list; NULL on a NULL argument or out-of-memory. */
EXTPROC_API extproc_list *extproc_list_add_list(extproc_list *l);
/** @} */

#ifdef __cplusplus
}
#endif
#endif /* EXTPROC_VALUES_H */
