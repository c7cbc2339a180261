/* Tests of what the GPU benchmark (tests/bench_gpu.sh, issue 13) computes and writes: the decode
 * floors of app/bench_floor.c on known inputs, and the random-weight models of the test-model writer
 * (tests/lib/tinymodel.c with random_blocks): deterministic from the seed, the asked-for weight rms,
 * loadable and runnable. --write-model PATH NAME [SEED] writes one of the benchmark's models
 * (llama3-8b: Llama-3-8B-shaped, 32 layers, D 4096, 32/8 heads, ff 14336, vocab 128256, Q4_0). */
#include <string.h>

#include "bench_floor.h"
#include "harness.h"
#include "infer.h"
#include "model.h"
#include "press.h"
#include "quant.h"
#include "tinymodel.h"

static bool near(double a, double b) { return fabs(a - b) <= 1e-12 + 1e-9 * fabs(b); }

/* (weights 1 GB + cache 0.1 GB) at 1 TB/s = 1.1 ms; 2e9 MACs at 1e12 MAC/s = 2 ms */
static void test_floor_known(void)
{
    struct kvs_bench_floor f;
    struct kvs_bench_floor_in full = {1e9, 1e8, 0, 1e12, 0};
    CHECK(kvs_bench_floor_compute(&full, &f));
    CHECKF(near(f.bytes_s, 1.1e-3), "bytes_s %.9g", f.bytes_s);
    CHECKF(f.macs_s == 0, "macs_s %.9g", f.macs_s);
    CHECKF(near(f.total_s, 1.1e-3), "total_s %.9g", f.total_s);
    struct kvs_bench_floor_in ckv = {1e9, 2.5e7, 2e9, 1e12, 1e12};
    CHECK(kvs_bench_floor_compute(&ckv, &f));
    CHECKF(near(f.bytes_s, 1.025e-3), "bytes_s %.9g", f.bytes_s);
    CHECKF(near(f.macs_s, 2e-3), "macs_s %.9g", f.macs_s);
    CHECKF(near(f.total_s, 3.025e-3), "total_s %.9g", f.total_s);
    /* the rate scales only the MAC term, the bandwidth only the bytes term */
    ckv.mac_rate = 4e12;
    CHECK(kvs_bench_floor_compute(&ckv, &f) && near(f.macs_s, 5e-4) && near(f.bytes_s, 1.025e-3));
    ckv.bandwidth = 2.05e12;
    CHECK(kvs_bench_floor_compute(&ckv, &f) && near(f.bytes_s, 5e-4) && near(f.total_s, 1e-3));
    CHECKF(near(kvs_bench_floor_ratio(3e-3, 1e-3), 3.0), "ratio %g", kvs_bench_floor_ratio(3e-3, 1e-3));
    CHECK(isnan(kvs_bench_floor_ratio(1e-3, 0)) && isnan(kvs_bench_floor_ratio(0, 1e-3)));
}

static void test_floor_invalid(void)
{
    struct kvs_bench_floor f;
    struct kvs_bench_floor_in no_bw = {1e9, 1e8, 0, 0, 0};
    CHECK(!kvs_bench_floor_compute(&no_bw, &f) && isnan(f.total_s) && isnan(f.bytes_s));
    struct kvs_bench_floor_in no_rate = {1e9, 1e8, 5e8, 1e12, 0};
    CHECK(!kvs_bench_floor_compute(&no_rate, &f) && isnan(f.total_s));
    struct kvs_bench_floor_in neg = {-1, 1e8, 0, 1e12, 0};
    CHECK(!kvs_bench_floor_compute(&neg, &f));
    struct kvs_bench_floor_in nan_bw = {1e9, 1e8, 0, NAN, 0};
    CHECK(!kvs_bench_floor_compute(&nan_bw, &f));
}

/* layer l of group l/G rebuilds kept[l] keys of d_kv x rank[g] multiply-adds each */
static void test_rebuild_macs(void)
{
    uint32_t kept[5] = {10, 20, 30, 40, 50}, rank[3] = {3, 5, 7};
    double macs = kvs_bench_rebuild_macs(5, kept, 2, rank, 4);
    CHECKF(near(macs, 4.0 * (10 * 3 + 20 * 3 + 30 * 5 + 40 * 5 + 50 * 7)), "macs %.0f", macs);
    CHECK(kvs_bench_rebuild_macs(0, kept, 2, rank, 4) == 0);
    /* Llama-3-8B at 8192 tokens, G 4, rank 0.7 D = 2867: 32 * 8192 * 1024 * 2867 */
    static uint32_t k8[32], r8[8];
    for (int i = 0; i < 32; i++) k8[i] = 8192;
    for (int i = 0; i < 8; i++) r8[i] = 2867;
    CHECK(near(kvs_bench_rebuild_macs(32, k8, 4, r8, 1024), 32.0 * 8192 * 1024 * 2867));
}

/* The benchmark's models. llama3-8b: Llama-3-8B's shapes (the 3.1 RoPE scaling, so 32K of context
 * is in range), random Q4_0 blocks; llama3-tiny: the same layout at a size the emulation runs. */
static int model_opts(const char *name, uint64_t seed, struct kvs_tiny_opts *o)
{
    kvs_tiny_defaults(o);
    o->random_blocks = true;
    o->seed = seed;
    o->tied = false;
    o->wtype = o->out_type = o->embd_type = KVS_GGML_Q4_0;
    o->rope_theta = 500000.0f;
    o->rms_eps = 1e-5f;
    o->rope_llama3 = true;
    o->rope_factor = 8.0f;
    o->rope_low_freq = 1.0f;
    o->rope_high_freq = 4.0f;
    o->rope_orig_ctx = 8192;
    o->n_ctx = 131072;
    o->weight_std = 0.02f;
    o->embd_std = 0.02f;
    if (!strcmp(name, "llama3-8b")) {
        o->name = "random Llama-3-8B-shaped (kvscope test model)";
        o->n_layer = 32;
        o->n_embd = 4096;
        o->n_head = 32;
        o->n_head_kv = 8;
        o->n_ff = 14336;
        o->n_vocab = 128256;
        return 0;
    }
    if (!strcmp(name, "llama3-tiny")) {
        o->name = "random Llama-3-shaped tiny (kvscope test model)";
        o->n_layer = 4;
        o->n_embd = 256;
        o->n_head = 8;
        o->n_head_kv = 2;
        o->n_ff = 896;
        o->n_vocab = 1024;
        return 0;
    }
    return -1;
}

static void test_model_presets(void)
{
    struct kvs_tiny_opts o;
    CHECK(model_opts("llama3-8b", 1, &o) == 0);
    CHECK(o.n_layer == 32 && o.n_embd == 4096 && o.n_head == 32 && o.n_head_kv == 8 && o.n_ff == 14336);
    CHECK(o.n_embd / o.n_head == 128 && o.wtype == KVS_GGML_Q4_0 && o.random_blocks);
    /* 6.98e9 parameters in the layers and the head (8.03e9 with the embedding) */
    double layer = 2.0 * 4096 * 4096 + 2.0 * 1024 * 4096 + 3.0 * 14336 * 4096;
    double params = 32 * layer + 2.0 * 128256 * 4096;
    CHECKF(params > 8.0e9 && params < 8.1e9, "%.3g parameters", params);
    CHECK(model_opts("nope", 1, &o) != 0);
}

static double weight_rms(const struct kvs_weight *w)
{
    float *x = kvs_weight_to_f32(w);
    if (!x) return NAN;
    double s = 0;
    for (int64_t i = 0; i < w->rows * w->cols; i++) s += (double)x[i] * x[i];
    free(x);
    return sqrt(s / (double)(w->rows * w->cols));
}

static uint8_t *build(const char *name, uint64_t seed, uint32_t wtype, size_t *len)
{
    struct kvs_tiny_opts o;
    uint8_t *p = NULL;
    model_opts(name, seed, &o);
    if (wtype) o.wtype = o.out_type = wtype;
    if (kvs_tiny_build(&o, &p, len) != 0) {
        fprintf(stderr, "build %s: %s\n", name, kvs_tiny_error());
        return NULL;
    }
    return p;
}

/* same seed -> same bytes; another seed -> other weights; rms as asked; the engine runs it */
static void test_random_blocks(void)
{
    size_t la, lb, lc;
    uint8_t *a = build("llama3-tiny", 7, 0, &la), *b = build("llama3-tiny", 7, 0, &lb), *c = build("llama3-tiny", 8, 0, &lc);
    CHECK(a && b && c);
    if (!a || !b || !c) { free(a); free(b); free(c); return; }
    CHECK(la == lb && la == lc && memcmp(a, b, la) == 0);
    CHECK(memcmp(a, c, la) != 0);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/bench-random.gguf", kvs_test_tmpdir());
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(a, 1, la, f) == la);
    if (f) fclose(f);
    free(a); free(b); free(c);
    struct kvs_model *m = NULL;
    CHECKF(kvs_model_load(&m, path, err, sizeof err) == KVS_OK, "%s", err);
    if (!m) return;
    CHECK(m->hp.n_layer == 4 && m->hp.n_embd == 256 && m->hp.n_head_kv == 2 && m->layers[0].wq.type == KVS_GGML_Q4_0);
    double r = weight_rms(&m->layers[1].w_up);
    CHECKF(r > 0.018 && r < 0.022, "w_up rms %g (asked 0.02)", r);
    /* the rows differ (no repeated block pattern) */
    CHECK(memcmp(m->layers[0].wq.data, (const uint8_t *)m->layers[0].wq.data + m->layers[0].wq.row_bytes,
                 m->layers[0].wq.row_bytes) != 0);
    struct kvs_method_config mc;
    struct kvs_press *press = NULL;
    struct kvs_ctx *cx = NULL;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    CHECK(kvs_method_parse(&mc, "full", err, sizeof err) == KVS_OK);
    CHECKF(kvs_press_new(&press, m, &mc, cp.n_ctx, NULL, NULL, err, sizeof err) == KVS_OK, "%s", err);
    if (press) CHECKF(kvs_ctx_new(&cx, m, press, &cp, err, sizeof err) == KVS_OK, "%s", err);
    if (cx) {
        int32_t toks[16];
        for (int i = 0; i < 16; i++) toks[i] = (i * 37) % 256;
        CHECK(kvs_ctx_eval(cx, toks, 16, NULL) == KVS_OK);
        const float *lg = kvs_ctx_logits(cx);
        bool finite = true;
        for (uint32_t i = 0; i < m->hp.n_vocab; i++) finite &= isfinite(lg[i]) != 0;
        CHECK(finite);
    }
    kvs_ctx_delete(cx);
    kvs_press_delete(press);
    kvs_model_delete(m);
    /* Q8_0 blocks: the int8 codes' scale */
    size_t l8;
    uint8_t *q8 = build("llama3-tiny", 3, KVS_GGML_Q8_0, &l8);
    CHECK(q8 != NULL);
    if (!q8) return;
    snprintf(path, sizeof path, "%s/bench-random-q8.gguf", kvs_test_tmpdir());
    f = fopen(path, "wb");
    CHECK(f && fwrite(q8, 1, l8, f) == l8);
    if (f) fclose(f);
    free(q8);
    CHECKF(kvs_model_load(&m, path, err, sizeof err) == KVS_OK, "%s", err);
    if (!m) return;
    r = weight_rms(&m->layers[0].w_down);
    CHECKF(r > 0.018 && r < 0.022 && m->layers[0].w_down.type == KVS_GGML_Q8_0, "Q8_0 w_down rms %g", r);
    kvs_model_delete(m);
}

int main(int argc, char **argv)
{
    /* test_bench --write-model PATH NAME [SEED]: a benchmark model (tests/bench_gpu.sh) */
    if (argc >= 2 && !strcmp(argv[1], "--write-model")) {
        struct kvs_tiny_opts o;
        if (argc < 4 || argc > 5) {
            fprintf(stderr, "usage: test_bench --write-model PATH llama3-8b|llama3-tiny [SEED]\n");
            return 2;
        }
        uint64_t seed = argc == 5 ? strtoull(argv[4], NULL, 10) : 1;
        if (model_opts(argv[3], seed, &o) != 0) {
            fprintf(stderr, "test_bench: unknown model '%s' (llama3-8b, llama3-tiny)\n", argv[3]);
            return 2;
        }
        if (kvs_tiny_write(argv[2], &o) != 0) {
            fprintf(stderr, "test_bench: %s\n", kvs_tiny_error());
            return 1;
        }
        return 0;
    }
    RUN(test_floor_known);
    RUN(test_floor_invalid);
    RUN(test_rebuild_macs);
    RUN(test_model_presets);
    RUN(test_random_blocks);
    return kvs_test_summary();
}
