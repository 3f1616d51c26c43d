/* Listening sockets: address parsing, binding, and handing accepted connections on. */
#ifndef EXTPROC_LISTENER_H
#define EXTPROC_LISTENER_H

#include "transport/transport.h"

/* Parses `address` ("HOST:PORT", "[V6]:PORT" or "unix:PATH") and binds its sockets, one per
 * worker for TCP. A unix socket file gets mode `unix_mode` (permission bits; 0 leaves what
 * bind() made: 0777 less the umask). Returns 0 or a negative extproc_error (spec is left empty
 * on error). */
int listener_open(const char *address, listener_spec *spec, unsigned workers, unsigned unix_mode);

/* Binds and listens on one TCP socket for `address` ("HOST:PORT" or "[V6]:PORT"), for an
 * endpoint served outside the worker loops (metrics). Returns the socket (>= 0), owned by the
 * caller, with its port in `*port`; or EXTPROC_EINVAL for a malformed address, EXTPROC_EIO if
 * binding fails (detail in the log). */
int listener_open_single(const char *address, int *port);

/* Closes sockets no worker took over and frees the per-worker table. */
void listener_spec_free(listener_spec *spec, unsigned workers);

/* Starts listening on worker `w`'s socket of `spec`, using handle `l`, which takes the socket.
 * Returns 0 or a libuv error (the socket then stays the spec's; a handle initialized already is
 * closed with the loop). */
int listener_start(worker *w, listener_spec *spec, listener *l);

/* Accepts again on a paused listener (it pauses again at once if the reason persists). */
void listener_resume(listener *l);

/* Closes the listener's handle and socket. */
void listener_stop(listener *l);

#endif
