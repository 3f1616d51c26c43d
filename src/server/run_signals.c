#include "server/run_signals.h"

#include <pthread.h>

void run_signals_mask(int how, sigset_t *old) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(how, &set, old);
}

void run_signals_set(void (*disposition)(int)) {
  signal(SIGINT, disposition);
  signal(SIGTERM, disposition);
  signal(SIGHUP, disposition);
}
