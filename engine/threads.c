/* Fixed thread pool: workers sleep on a condition variable between parallel loops; the caller
 * runs the first range itself. Depends on libc and pthreads only. */
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
    uint64_t generation;    /* bumped for every loop */
    int pending;            /* workers still running the current loop */
    bool quit;
    kvs_range_fn fn;
    void *ctx;
    int64_t total;
};

struct worker_arg { struct kvs_pool *p; int index; };

static void range_of(int64_t n, int parts, int i, int64_t *b, int64_t *e)
{
    int64_t q = n / parts, r = n % parts;
    *b = i * q + (i < r ? i : r);
    *e = *b + q + (i < r ? 1 : 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Workers spin briefly for the next loop (decode issues hundreds of small loops per token), then
 * sleep so an idle engine costs no CPU. */
static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct kvs_pool *p = wa->p;
    int idx = wa->index;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen &&
               !__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE) && spins < 20000) {
            cpu_relax();
            spins++;
        }
        if (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen) {
            pthread_mutex_lock(&p->mu);
            while (!p->quit && __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&p->cv_work, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) break;
        seen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE);
        int64_t b, e;
        range_of(p->total, p->n, idx, &b, &e);
        if (e > b) p->fn(p->ctx, b, e, idx);
        __atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL);
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
        fn(ctx, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->total = n;
    __atomic_store_n(&p->pending, p->n - 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&p->mu);
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    int64_t b, e;
    range_of(n, p->n, 0, &b, &e);
    if (e > b) fn(ctx, b, e, 0);
    /* spin briefly, then yield: on an oversubscribed machine the last worker may not be running */
    for (int spins = 0; __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0; spins++) {
        if (spins < 2000) cpu_relax();
        else sched_yield();
    }
}
