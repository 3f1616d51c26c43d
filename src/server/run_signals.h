/* The signals a running server acts on: SIGINT and SIGTERM stop it, SIGHUP reloads its TLS
 * files. Only the thread that runs the server takes them; every other thread blocks them, so a
 * process-directed signal never lands where no handler expects it. */
#ifndef EXTPROC_RUN_SIGNALS_H
#define EXTPROC_RUN_SIGNALS_H

#include <signal.h>

/* Changes the calling thread's mask for the three signals (`how`: SIG_BLOCK or SIG_UNBLOCK);
 * the mask before goes into `old` if not NULL (restore it with pthread_sigmask(SIG_SETMASK)). */
void run_signals_mask(int how, sigset_t *old);

/* Sets the process-wide action of the three signals (SIG_IGN or SIG_DFL). */
void run_signals_set(void (*disposition)(int));

#endif
