/* A small fixed thread pool for data-parallel loops (matrix rows, attention heads).
 * Depends on libc and pthreads. */
#ifndef KVS_THREADS_H
#define KVS_THREADS_H

#include "kvs.h"

struct kvs_pool;

/* Pool of N threads in all (the caller counts as one; N <= 0: online cores). NULL on failure. */
struct kvs_pool *kvs_pool_new(int n);
void kvs_pool_delete(struct kvs_pool *p);
int kvs_pool_size(const struct kvs_pool *p);

/* Calls FN(CTX, begin, end, thread_index) over [0, N) split into contiguous ranges, one per thread,
 * and returns when all are done. Not re-entrant: do not call kvs_pool_for from inside FN.
 * A NULL pool runs FN(CTX, 0, N, 0) on the caller. */
typedef void (*kvs_range_fn)(void *ctx, int64_t begin, int64_t end, int thread);
void kvs_pool_for(struct kvs_pool *p, int64_t n, kvs_range_fn fn, void *ctx);

#endif
