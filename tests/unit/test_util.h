/* Helpers shared by the C tests. */
#ifndef EXTPROC_TEST_UTIL_H
#define EXTPROC_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A TCP port on 127.0.0.1 that nothing listened on a moment ago (the kernel's pick, released
 * at once, for a child process to bind). -1 if no socket could be bound. */
int free_loopback_port(void);

/* Monotonic milliseconds, and a sleep in milliseconds. */
int64_t now_ms(void);
void sleep_ms(long ms);

/* A ProcessingRequest (request_headers with an empty HttpHeaders) whose attributes["k"] is a
 * Struct holding a Value -> ListValue -> Value chain `depth` levels deep: small on the wire, but
 * protobuf-c would unpack it by recursion `depth` frames deep. Returns a malloc'd buffer; the
 * message is its last *len bytes, from *start. NULL on out-of-memory. */
uint8_t *nested_attributes(unsigned depth, uint8_t **start, size_t *len);

/* cmocka setup and teardown bounding each test with alarm(): a test that hangs (only a bug
 * makes one) is ended by SIGALRM, whose default action fails the run, instead of stalling the
 * suite. */
enum { TEST_WATCHDOG_SECONDS_DEFAULT = 240 };
int watchdog_setup(void **state);
int watchdog_teardown(void **state);

#endif
