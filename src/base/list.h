/* Intrusive lists, the one way lists are kept in this library: an item embeds a link, so
 * linking allocates nothing and an item can sit in a list and an arena at once.
 *
 *   queue   singly linked, appended at the back and taken from the front (replies being
 *           built, messages waiting their turn, output chunks, header edits);
 *   dlist   doubly linked, removed from anywhere in O(1) (open connections and streams).
 *
 * A zeroed queue or dlist is empty, so they can live in calloc'd or reset structs. */
#ifndef EXTPROC_LIST_H
#define EXTPROC_LIST_H

#include <stdbool.h>
#include <stddef.h>

/* The item holding `link` (a pointer to its `member`), as the kernel's container_of. */
#define LIST_ITEM(link, type, member) ((type *)(void *)((char *)(link)-offsetof(type, member)))

typedef struct queue_link {
  struct queue_link *next;
} queue_link;

typedef struct queue {
  queue_link *head, *last;
} queue;

static inline bool queue_empty(const queue *q) { return q->head == NULL; }

static inline void queue_push(queue *q, queue_link *l) {
  l->next = NULL;
  if (q->last)
    q->last->next = l;
  else
    q->head = l;
  q->last = l;
}

/* Takes the front item's link off the queue; NULL when empty. */
static inline queue_link *queue_pop(queue *q) {
  queue_link *l = q->head;
  if (!l) return NULL;
  q->head = l->next;
  if (!q->head) q->last = NULL;
  return l;
}

typedef struct dlist_link {
  struct dlist_link *prev, *next;
} dlist_link;

typedef struct dlist {
  dlist_link *head;
} dlist;

static inline void dlist_push_front(dlist *d, dlist_link *l) {
  l->prev = NULL;
  l->next = d->head;
  if (d->head) d->head->prev = l;
  d->head = l;
}

static inline void dlist_remove(dlist *d, dlist_link *l) {
  if (l->prev)
    l->prev->next = l->next;
  else
    d->head = l->next;
  if (l->next) l->next->prev = l->prev;
  l->prev = l->next = NULL;
}

#endif
