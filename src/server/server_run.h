/* extproc_server_run() for a program that exits once the server has stopped (extproc_main()). */
#ifndef EXTPROC_SERVER_RUN_H
#define EXTPROC_SERVER_RUN_H

#include "extproc/server.h"

/* As extproc_server_run(), but SIGINT, SIGTERM and SIGHUP stay ignored when it returns (from
 * the moment the workers are done), instead of getting their default action back: a signal
 * repeated while the program frees what it used and exits does not kill it. */
int server_run_to_exit(extproc_server *srv);

#endif
