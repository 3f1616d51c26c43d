/* Helpers shared by the C tests. */
#ifndef EXTPROC_TEST_UTIL_H
#define EXTPROC_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic milliseconds, and a sleep in milliseconds. */
int64_t now_ms(void);
void sleep_ms(long ms);

/* A ProcessingRequest (request_headers with an empty HttpHeaders) whose attributes["k"] is a
 * Struct holding a Value -> ListValue -> Value chain `depth` levels deep: small on the wire, but
 * protobuf-c would unpack it by recursion `depth` frames deep. Returns a malloc'd buffer; the
 * message is its last *len bytes, from *start. NULL on out-of-memory. */
uint8_t *nested_attributes(unsigned depth, uint8_t **start, size_t *len);

#endif
