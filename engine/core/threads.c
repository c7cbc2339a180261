/* Fixed thread pool for data-parallel loops. A loop is cut into chunks that the caller and the
 * workers claim from one atomic counter, so a worker the OS has not scheduled yet never holds the
 * loop up: the caller simply takes its chunks (an oversubscribed 2-core machine is the normal
 * case here: engine, UI and other processes share the cores). Chunk boundaries depend on the loop
 * length only, never on the thread count or on who claims what, so a loop body whose result per
 * chunk is fixed gives the same bytes at any -t (DESIGN.md §7). Workers spin briefly between loops
 * (decode issues hundreds of small loops per token), then sleep so an idle engine costs no CPU.
 * Depends on libc and pthreads only. */
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

struct kvs_pool {
    int n;                  /* threads in all, caller included */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work;
    uint64_t work;          /* atomic: generation << 32 | next chunk to claim */
    uint32_t done;          /* atomic: chunks finished in this generation */
    uint32_t nchunks;
    int64_t total;
    kvs_range_fn fn;
    void *ctx;
    bool quit;
};

struct worker_arg { struct kvs_pool *p; int index; };

#define PUBLISHING 0xffffffffu /* chunk index while kvs_pool_for fills in a new loop */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void range_of(int64_t n, int64_t parts, int64_t i, int64_t *b, int64_t *e)
{
    int64_t q = n / parts, r = n % parts;
    *b = i * q + (i < r ? i : r);
    *e = *b + q + (i < r ? 1 : 0);
}

/* Claims and runs chunks of generation GEN until none is left. A claim is a CAS on the combined
 * word, so a participant still holding an old generation can never claim a chunk of a new one. */
static void run_chunks(struct kvs_pool *p, uint32_t gen, int index)
{
    for (;;) {
        uint64_t v = __atomic_load_n(&p->work, __ATOMIC_ACQUIRE);
        if ((uint32_t)(v >> 32) != gen) return;
        uint32_t c = (uint32_t)v;
        if (c == PUBLISHING) { /* the caller is still filling in this loop's fields */
            cpu_relax();
            continue;
        }
        if (c >= __atomic_load_n(&p->nchunks, __ATOMIC_RELAXED)) return;
        if (!__atomic_compare_exchange_n(&p->work, &v, v + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
        int64_t b, e;
        range_of(p->total, p->nchunks, c, &b, &e);
        if (e > b) p->fn(p->ctx, b, e, index);
        __atomic_add_fetch(&p->done, 1, __ATOMIC_ACQ_REL);
    }
}

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct kvs_pool *p = wa->p;
    int idx = wa->index;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        int spins = 0;
        while ((uint32_t)(__atomic_load_n(&p->work, __ATOMIC_ACQUIRE) >> 32) == seen &&
               !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE) && spins < 20000) {
            cpu_relax();
            spins++;
        }
        if ((uint32_t)(__atomic_load_n(&p->work, __ATOMIC_ACQUIRE) >> 32) == seen) {
            pthread_mutex_lock(&p->mu);
            while (!p->quit && (uint32_t)(__atomic_load_n(&p->work, __ATOMIC_ACQUIRE) >> 32) == seen)
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) break;
        seen = (uint32_t)(__atomic_load_n(&p->work, __ATOMIC_ACQUIRE) >> 32);
        run_chunks(p, seen, idx);
    }
    return NULL;
}

struct kvs_pool *kvs_pool_new(int n)
{
    if (n <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (int)c : 1;
    }
    if (n > 256) n = 256;
    struct kvs_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p->threads) { kvs_pool_delete(p); return NULL; }
    for (int i = 1; i < n; i++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) { p->n = i; kvs_pool_delete(p); return NULL; }
        wa->p = p;
        wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = i;
            kvs_pool_delete(p);
            return NULL;
        }
    }
    return p;
}

void kvs_pool_delete(struct kvs_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->quit, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        if (p->threads && p->threads[i]) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    free(p->threads);
    free(p);
}

int kvs_pool_size(const struct kvs_pool *p) { return p ? p->n : 1; }

void kvs_pool_for(struct kvs_pool *p, int64_t n, kvs_range_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (!p || p->n == 1 || n == 1) {
        /* one participant: the same chunks, in order, so per-chunk results match a threaded run */
        int64_t chunks = n < KVS_POOL_CHUNKS ? n : KVS_POOL_CHUNKS;
        for (int64_t c = 0; c < chunks; c++) {
            int64_t b, e;
            range_of(n, chunks, c, &b, &e);
            if (e > b) fn(ctx, b, e, 0);
        }
        return;
    }
    /* A fixed number of chunks, whatever the thread count: enough to balance up to a dozen threads
     * without much claiming traffic, and the same boundaries for every -t (determinism). */
    int64_t chunks = KVS_POOL_CHUNKS;
    if (chunks > n) chunks = n;
    /* The new generation opens closed (chunk index PUBLISHING) before the loop's fields change: a
     * worker still in the previous loop's run_chunks may read the new nchunks, but its claim is a
     * CAS against the old generation and fails. Filling the fields first let such a late worker
     * claim (and run) a chunk of the new loop under the old generation and count it done, so the
     * chunk ran twice and the caller could return before the loop had finished. */
    uint32_t gen = (uint32_t)(__atomic_load_n(&p->work, __ATOMIC_ACQUIRE) >> 32) + 1;
    __atomic_store_n(&p->work, (uint64_t)gen << 32 | PUBLISHING, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    __atomic_store_n(&p->nchunks, (uint32_t)chunks, __ATOMIC_RELAXED); /* read by late workers */
    __atomic_store_n(&p->done, 0, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->work, (uint64_t)gen << 32, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, gen, 0);
    /* only chunks a worker has claimed and not finished are left: spin briefly, then yield */
    for (int spins = 0; __atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < (uint32_t)chunks; spins++) {
        if (spins < 4000) cpu_relax();
        else sched_yield();
    }
}
