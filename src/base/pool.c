/* The blocking-work pool: threads that take jobs from one FIFO under one mutex. Jobs are rare
 * and slow by nature (that is why they are here), so one lock is not a bottleneck. */
#include "base/pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#include "base/arena.h"
#include "extproc/extproc.h"

struct task_pool {
  pthread_mutex_t lock;
  pthread_cond_t work; /* a job was queued, or the pool is stopping */
  queue jobs;          /* waiting for a thread, in submission order */
  size_t pending;      /* jobs in `jobs` */
  size_t idle;         /* threads waiting for a job */
  size_t queue_slots;
  bool stopping;
  unsigned thread_count;
  pthread_t threads[];
};

static void *pool_thread(void *arg) {
  task_pool *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->stopping && queue_empty(&p->jobs)) {
      p->idle++;
      pthread_cond_wait(&p->work, &p->lock);
      p->idle--;
    }
    if (p->stopping) break;
    pool_job *job = LIST_ITEM(queue_pop(&p->jobs), pool_job, link);
    p->pending--;
    pthread_mutex_unlock(&p->lock);
    job->run(job); /* the job may be gone once this returns */
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  arena_cache_release(); /* blocks a job freed on this thread */
  return NULL;
}

int pool_new(task_pool **out, unsigned threads, size_t queue_slots) {
  *out = NULL;
  if (threads == 0) return EXTPROC_EINVAL;
  task_pool *p = calloc(1, sizeof(*p) + threads * sizeof(pthread_t));
  if (!p) return EXTPROC_ENOMEM;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->work, NULL);
  p->queue_slots = queue_slots;
  /* Pool threads take no signal: a process-directed SIGTERM must reach the thread that handles
   * it, not kill the process through one of these in a moment its handler is not installed. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (; p->thread_count < threads; p->thread_count++)
    if (pthread_create(&p->threads[p->thread_count], NULL, pool_thread, p) != 0) break;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (p->thread_count < threads) {
    pool_free(p);
    return EXTPROC_EIO;
  }
  *out = p;
  return 0;
}

bool pool_submit(task_pool *p, pool_job *job) {
  pthread_mutex_lock(&p->lock);
  /* A job an idle thread is about to take needs no queue slot. */
  const bool had_room = p->pending < p->idle + p->queue_slots;
  queue_push(&p->jobs, &job->link);
  p->pending++;
  pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->lock);
  return had_room;
}

bool pool_cancel(task_pool *p, pool_job *job) {
  bool removed = false;
  pthread_mutex_lock(&p->lock);
  /* A linear walk: cancelling is rare (a deadline ran out), and the queue is short. */
  queue_link *prev = NULL;
  for (queue_link *l = p->jobs.head; l; prev = l, l = l->next) {
    if (l != &job->link) continue;
    if (prev)
      prev->next = l->next;
    else
      p->jobs.head = l->next;
    if (p->jobs.last == l) p->jobs.last = prev;
    p->pending--;
    removed = true;
    break;
  }
  pthread_mutex_unlock(&p->lock);
  return removed;
}

size_t pool_pending(task_pool *p) {
  pthread_mutex_lock(&p->lock);
  const size_t n = p->pending;
  pthread_mutex_unlock(&p->lock);
  return n;
}

void pool_free(task_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stopping = true;
  pthread_cond_broadcast(&p->work);
  pthread_mutex_unlock(&p->lock);
  for (unsigned i = 0; i < p->thread_count; i++)
    pthread_join(p->threads[i], NULL);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->work);
  free(p);
}
