/* The CUPTI profiler's record reading, without a GPU: activity records laid out as CUPTI 12 and
 * CUPTI 13 libraries write them (the oldest and newest struct versions this header knows) are read
 * the same, and runtime-API records are folded so that a burst of calls cannot flood the ring.
 * Built without CUPTI headers it only checks the degraded status. */
#include <stddef.h>
#include <string.h>

#include "harness.h"
#include "profiler.h"

#ifdef KVS_HAVE_CUPTI
#include <cupti.h>

/* A kernel record of layout T with the fields kvscope reads set; the rest is junk, as a real
 * record's other fields are to us. */
#define KERNEL_REC(T, buf, nm, st, en, strm)                       \
    do {                                                          \
        T *k_ = (T *)(buf);                                       \
        memset(k_, 0xa5, sizeof *k_);                             \
        k_->kind = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL;          \
        k_->name = (nm);                                          \
        k_->start = (st);                                         \
        k_->end = (en);                                           \
        k_->streamId = (strm);                                    \
    } while (0)

static void test_layouts(void)
{
    struct kvs_profiler *p;
    CHECK(kvs_profiler_new(&p, 64) == KVS_OK);
    if (!p) return;
    _Alignas(8) unsigned char buf[512];
    /* CUDA 12's CUPTI writes Kernel9 records, CUDA 13's Kernel10; CUDA 8-era Kernel3/4 share them */
    KERNEL_REC(CUpti_ActivityKernel4, buf, "_ZN3kvs9k_rmsnormEv", 1000, 3000, 7);
    kvs_profiler_convert_record(p, buf);
    KERNEL_REC(CUpti_ActivityKernel9, buf, "_Z12k_lat_scoresPf", 4000, 9000, 7);
    kvs_profiler_convert_record(p, buf);
    KERNEL_REC(CUpti_ActivityKernel10, buf, "plain_name", 10000, 10500, 3);
    kvs_profiler_convert_record(p, buf);
    CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)buf;
    memset(m, 0x5a, sizeof *m);
    m->kind = CUPTI_ACTIVITY_KIND_MEMCPY;
    m->copyKind = CUPTI_ACTIVITY_MEMCPY_KIND_DTOH;
    m->bytes = 4096;
    m->start = 11000;
    m->end = 12000;
    m->streamId = 3;
    kvs_profiler_convert_record(p, buf);
    CUpti_ActivityMemset *ms = (CUpti_ActivityMemset *)buf;
    memset(ms, 0x5a, sizeof *ms);
    ms->kind = CUPTI_ACTIVITY_KIND_MEMSET;
    ms->bytes = 128;
    ms->start = 13000;
    ms->end = 13100;
    ms->streamId = 2;
    kvs_profiler_convert_record(p, buf);
    struct kvs_rec_kernel k[8];
    size_t n = kvs_profiler_drain(p, k, 8);
    CHECKF(n == 5, "%zu records", n);
    if (n == 5) {
        CHECKF(!strcmp(k[0].name, "kvs::k_rmsnorm") && k[0].start_ns == 1000 && k[0].end_ns == 3000 && k[0].stream == 7,
               "Kernel4 layout: %s %llu..%llu s%u", k[0].name, (unsigned long long)k[0].start_ns,
               (unsigned long long)k[0].end_ns, k[0].stream);
        CHECKF(!strcmp(k[1].name, "k_lat_scores") && k[1].start_ns == 4000 && k[1].end_ns == 9000,
               "Kernel9 layout: %s", k[1].name);
        CHECKF(!strcmp(k[2].name, "plain_name") && k[2].end_ns == 10500 && k[2].stream == 3, "Kernel10 layout: %s",
               k[2].name);
        CHECKF(k[3].kind == 2 && !strcmp(k[3].name, "memcpy DtoH") && k[3].bytes == 4096 && k[3].stream == 3,
               "memcpy: %s %llu", k[3].name, (unsigned long long)k[3].bytes);
        CHECKF(k[4].kind == 3 && k[4].bytes == 128 && k[4].start_ns == 13000 && k[4].stream == 2, "memset");
    }
    kvs_profiler_delete(p);
}

static void test_runtime_folding(void)
{
    struct kvs_profiler *p;
    CHECK(kvs_profiler_new(&p, 4096) == KVS_OK);
    if (!p) return;
    CUpti_ActivityAPI a;
    /* 3000 launches 10 us apart (30 ms), then one of another kind */
    for (int i = 0; i < 3000; i++) {
        memset(&a, 0, sizeof a);
        a.kind = CUPTI_ACTIVITY_KIND_RUNTIME;
        a.cbid = 211;
        a.start = 1000000 + (uint64_t)i * 10000;
        a.end = a.start + 4000;
        kvs_profiler_convert_record(p, &a);
    }
    a.cbid = 5;
    a.start += 20000;
    a.end = a.start + 100;
    kvs_profiler_convert_record(p, &a);
    struct kvs_rec_kernel k[4096];
    size_t n = kvs_profiler_drain(p, k, 4096);
    /* one record per 1 ms window of the same call: 30 (+1 for the window boundary), then the other */
    CHECKF(n >= 30 && n <= 32, "%zu runtime records kept of 3001", n);
    int folded = 0, calls = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned x = 1;
        const char *t = strstr(k[i].name, " x");
        if (t) {
            x = (unsigned)atoi(t + 2);
            folded++;
        }
        calls += (int)x;
    }
    CHECKF(folded >= 28, "%d kept records say how many calls they stand for", folded);
    /* every call is accounted for, except those folded after the last kept one */
    CHECKF(calls <= 3001 && calls >= 3001 - 100, "%d calls accounted of 3001", calls);
    CHECKF(n > 0 && !strcmp(k[n - 1].name, "runtime api 5"), "the other call kept on its own: %s",
           n ? k[n - 1].name : "");
    CHECK(kvs_profiler_dropped(p) == 0);
    kvs_profiler_delete(p);
}
#endif

int main(void)
{
#ifdef KVS_HAVE_CUPTI
    RUN(test_layouts);
    RUN(test_runtime_folding);
#else
    struct kvs_profiler *p;
    CHECK(kvs_profiler_new(&p, 8) == KVS_OK);
    if (p) {
        CHECK(kvs_profiler_start(p, 0) == KVS_ERR_UNSUPPORTED);
        CHECK(strstr(kvs_profiler_status(p), "not built") != NULL);
        kvs_profiler_delete(p);
    }
#endif
    return kvs_test_summary();
}
