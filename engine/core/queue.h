/* Bounded multi-producer / single-consumer queue of record pointers between the engine thread and
 * its consumers (UI, trace writer). A producer never waits: a full queue drops the record and
 * counts it. Depends on libc and pthreads. */
#ifndef KVS_QUEUE_H
#define KVS_QUEUE_H

#include "record.h"

struct kvs_queue;

/* New queue holding at most CAP records; NULL on OOM. Free with kvs_queue_delete. */
struct kvs_queue *kvs_queue_new(uint32_t cap);
/* Unrefs any records still queued. */
void kvs_queue_delete(struct kvs_queue *q);
/* Takes over the caller's reference. Returns false (and unrefs r, counting a drop) when full or
 * closed. Never blocks. */
bool kvs_queue_push(struct kvs_queue *q, struct kvs_record *r);
/* Same, but waits while full (for consumers that must not lose records, e.g. --batch output).
 * Returns false only when the queue is closed. */
bool kvs_queue_push_wait(struct kvs_queue *q, struct kvs_record *r);
/* Pops one record (caller owns the reference) waiting at most TIMEOUT_MS (0: poll, <0: forever).
 * Returns NULL on timeout, or when closed and empty. */
struct kvs_record *kvs_queue_pop(struct kvs_queue *q, int timeout_ms);
/* Wakes waiters; later pushes fail. Pops drain what is left. */
void kvs_queue_close(struct kvs_queue *q);
uint64_t kvs_queue_dropped(const struct kvs_queue *q);
/* Optional: a file descriptor that becomes readable when a record is pushed (for poll/getch
 * loops); -1 when unavailable. */
int kvs_queue_fd(const struct kvs_queue *q);

#endif
