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

/* kvs_pool_for cuts [0, N) into min(N, KVS_POOL_CHUNKS) contiguous chunks whose boundaries depend on N
 * only (never on the thread count or on scheduling). */
#define KVS_POOL_CHUNKS 48

/* Calls FN(CTX, begin, end, thread_index) once per chunk of [0, N) (see KVS_POOL_CHUNKS) and returns
 * when all are done; chunks run in any order on any thread. For results that do not depend on -t
 * or on scheduling, FN's output for a chunk must depend on [begin, end) only: use thread_index to
 * pick scratch, never to accumulate results across chunks. Not re-entrant: do not call
 * kvs_pool_for from inside FN. A NULL or one-thread pool runs the chunks in order on the caller. */
typedef void (*kvs_range_fn)(void *ctx, int64_t begin, int64_t end, int thread);
void kvs_pool_for(struct kvs_pool *p, int64_t n, kvs_range_fn fn, void *ctx);

#endif
