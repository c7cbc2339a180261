/* The methods other than full and their compositions: packed quantization kernels (round trip
 * within half a step, sizes), SnapKV pooling and selection, the streaming rule, and every method
 * and composition run on tiny llama and qwen2 models (prefill in chunks, then decoding token by
 * token) without NaNs, with bytes that add up and targets met; commonkv+quant+snapkv reaches
 * CR >= 0.95. SmolLM2 too when present. */
#include "attention.h"
#include "commonkv_priv.h"
#include "harness.h"
#include "infer.h"
#include "quant.h"
#include "threads.h"
#include "tinymodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 99;
static float frand(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static void test_qrow(void)
{
    const uint32_t bits[3] = {2, 4, 8};
    for (int b = 0; b < 3; b++) {
        uint32_t n = 70, g = 32;
        float x[70], y[70];
        for (uint32_t i = 0; i < n; i++) x[i] = frand() * 3 + (i < 32 ? 5 : 0);
        uint32_t nb = kvs_qrow_bytes(n, bits[b], g);
        /* 3 groups: 32, 32, 6 elements */
        CHECK(nb == 3 * 4 + (32 * bits[b] + 7) / 8 * 2 + (6 * bits[b] + 7) / 8);
        uint8_t *buf = malloc(nb);
        kvs_qrow_encode(x, n, bits[b], g, buf);
        kvs_qrow_decode(buf, n, bits[b], g, y);
        bool ok = true;
        for (uint32_t i0 = 0; i0 < n; i0 += g) {
            uint32_t len = KVS_MIN(g, n - i0);
            float lo = INFINITY, hi = -INFINITY;
            for (uint32_t i = i0; i < i0 + len; i++) { lo = fminf(lo, x[i]); hi = fmaxf(hi, x[i]); }
            float step = (hi - lo) / ((1u << bits[b]) - 1);
            for (uint32_t i = i0; i < i0 + len; i++) ok &= fabsf(x[i] - y[i]) <= 0.5f * step * 1.01f + 1e-2f * fabsf(lo);
        }
        CHECKF(ok, "qrow %u bits within half a step", bits[b]);
        free(buf);
        /* per-channel blocks */
        uint32_t T = 32, C = 8;
        float *k = malloc(sizeof(float) * T * C), row[8];
        for (uint32_t i = 0; i < T * C; i++) k[i] = frand() * (1 + (float)(i % C));
        uint8_t *qb = malloc(kvs_qcol_bytes(T, C, bits[b]));
        CHECK(kvs_qcol_bytes(T, C, bits[b]) == C * (4 + T * bits[b] / 8));
        kvs_qcol_encode(k, T, C, bits[b], qb);
        double err = 0, mag = 0;
        for (uint32_t t = 0; t < T; t++) {
            kvs_qcol_decode_row(qb, T, C, bits[b], t, row);
            for (uint32_t c = 0; c < C; c++) {
                err += fabs(row[c] - k[t * C + c]);
                mag += fabs(k[t * C + c]);
            }
        }
        CHECKF(err / mag < (bits[b] == 2 ? 0.35 : bits[b] == 4 ? 0.08 : 0.01), "qcol %u bits: rel err %.4f", bits[b],
               err / mag);
        /* the whole-block decoder gives decode_row's values, token for token */
        float *all = malloc(sizeof(float) * T * C);
        kvs_qcol_decode(qb, T, C, bits[b], all);
        bool same = true;
        for (uint32_t t = 0; t < T; t++) {
            kvs_qcol_decode_row(qb, T, C, bits[b], t, row);
            same &= memcmp(row, all + t * C, sizeof row) == 0;
        }
        CHECKF(same, "qcol %u bits: block decode == row decode", bits[b]);
        free(all);
        free(k);
        free(qb);
    }
}

static void test_snap_stream(void)
{
    float s[10] = {0, 0, 0, 5, 0, 0, 0, 0, 1, 0}, p[10];
    kvs_snap_pool(s, 10, 3, p);
    CHECK(p[2] == 5 && p[3] == 5 && p[4] == 5 && p[5] == 0 && p[7] == 1 && p[9] == 1);
    uint8_t keep[10];
    kvs_snap_select(p, 10, 4, keep);
    int n = 0;
    for (int i = 0; i < 10; i++) n += keep[i];
    CHECK(n == 4 && keep[2] && keep[3] && keep[4]);
    CHECK(kvs_stream_keep(0, 100, 4, 10) && kvs_stream_keep(3, 100, 4, 10) && !kvs_stream_keep(4, 100, 4, 10));
    CHECK(!kvs_stream_keep(89, 100, 4, 10) && kvs_stream_keep(90, 100, 4, 10));
}

static void tiny_opts(struct kvs_tiny_opts *o, const char *arch)
{
    kvs_tiny_defaults(o);
    o->arch = arch;
    o->n_layer = 6;
    o->n_embd = 64;
    o->n_head = 4;
    o->n_head_kv = 2;
    o->n_ctx = 1024;
    o->weight_std = 0.08f;
    o->embd_std = 0.5f;
    o->seed = 5;
}

static struct kvs_model *tiny(const char *arch)
{
    struct kvs_tiny_opts o;
    tiny_opts(&o, arch);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/methods-%s.gguf", kvs_test_tmpdir(), arch);
    if (kvs_tiny_write(path, &o) != 0) return NULL;
    struct kvs_model *m = NULL;
    if (kvs_model_load(&m, path, err, sizeof err) != KVS_OK) return NULL;
    return m;
}

struct outcome {
    bool ok, finite;
    struct kvs_rec_step rec;
    char err[512];
};

/* Prefill N_PRE tokens in chunks of BATCH, then decode N_DEC tokens one at a time (teacher forced). */
static void run(struct kvs_model *m, const char *spec, float cr, const int32_t *ids, int n_pre, int n_dec, int batch,
                struct outcome *o)
{
    memset(o, 0, sizeof *o);
    struct kvs_method_config c;
    if (kvs_method_parse(&c, spec, o->err, sizeof o->err) != KVS_OK) return;
    c.target_cr = cr;
    snprintf(c.cache_dir, sizeof c.cache_dir, "%s/factors", kvs_test_tmpdir());
    struct kvs_press *p = NULL;
    struct kvs_ctx *cx = NULL;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = n_pre + n_dec + 1;
    cp.n_batch = batch;
    cp.n_threads = 2;
    if (kvs_press_new(&p, m, &c, cp.n_ctx, NULL, NULL, o->err, sizeof o->err) != KVS_OK ||
        kvs_ctx_new(&cx, m, p, &cp, o->err, sizeof o->err) != KVS_OK) {
        kvs_press_delete(p);
        return;
    }
    int V = (int)m->hp.n_vocab;
    float *lg = malloc((size_t)n_pre * V * sizeof(float));
    o->finite = true;
    if (kvs_ctx_eval(cx, ids, n_pre, lg) != KVS_OK) {
        snprintf(o->err, sizeof o->err, "%s", kvs_ctx_error(cx));
        goto done;
    }
    for (long i = 0; i < (long)n_pre * V; i++) o->finite &= isfinite(lg[i]);
    for (int t = 0; t < n_dec; t++) {
        if (kvs_ctx_eval(cx, ids + n_pre + t, 1, NULL) != KVS_OK) {
            snprintf(o->err, sizeof o->err, "%s", kvs_ctx_error(cx));
            goto done;
        }
        const float *l = kvs_ctx_logits(cx);
        for (int i = 0; i < V; i++) o->finite &= isfinite(l[i]);
    }
    p->ops->fill_record(p, &o->rec);
    o->ok = true;
done:
    free(lg);
    kvs_ctx_delete(cx);
    kvs_press_delete(p);
}

/* Row conversions fp32 <-> fp16 (vectorised) against the scalar converters: every half, and
 * floats across the range with ties, subnormals, overflow, infinities and NaN. */
static void test_row_conversions(void)
{
    static uint16_t h[65536];
    static float f[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    kvs_f16_to_f32_row(h, f, 65536);
    bool ok = true;
    for (int i = 0; i < 65536; i++) {
        float r = kvs_fp16_to_fp32((uint16_t)i);
        ok &= isnan(r) ? isnan(f[i]) : memcmp(&r, &f[i], 4) == 0;
    }
    CHECKF(ok, "fp16 -> fp32 rows equal the scalar converter on all 65536 halves");
    int n = 0;
    for (int e = -30; e <= 18 && n < 60000; e++)
        for (int k = 0; k < 1000; k++) {
            float base = ldexpf(1.0f + (float)k / 1000.0f, e);
            f[n++] = k & 1 ? -base : base;
        }
    for (int i = 0; i < 2000; i++) f[n++] = ldexpf(1.0f + (float)(2 * i + 1) / 2048.0f, -3); /* exact ties */
    f[n++] = 65504.0f; f[n++] = 65520.0f; f[n++] = 1e9f; f[n++] = -1e9f; f[n++] = INFINITY; f[n++] = -INFINITY;
    f[n++] = NAN; f[n++] = 0.0f; f[n++] = -0.0f; f[n++] = 5.96e-8f; f[n++] = 2.98e-8f; f[n++] = 1e-10f;
    /* the row conversion is the caches' store: beyond ±65504 (±inf included) it saturates and
     * counts instead of giving ±inf (issue 13); everything else is the scalar converter's */
    uint64_t clamped = kvs_f32_to_f16_row(f, h, n), want = 0;
    ok = true;
    for (int i = 0; i < n; i++) {
        bool over = fabsf(f[i]) > 65504.0f;
        uint16_t r = over ? (f[i] > 0 ? 0x7bff : 0xfbff) : kvs_fp32_to_fp16(f[i]);
        want += over;
        bool nan_r = (r & 0x7c00) == 0x7c00 && (r & 0x3ff), nan_h = (h[i] & 0x7c00) == 0x7c00 && (h[i] & 0x3ff);
        ok &= nan_r ? nan_h : r == h[i];
        if (!ok) { fprintf(stderr, "   %.9g: row %04x scalar %04x\n", f[i], h[i], r); break; }
    }
    CHECKF(ok, "fp32 -> fp16 rows equal the scalar converter on %d floats (saturating beyond ±65504)", n);
    CHECKF(clamped == want && want > 1000, "fp32 -> fp16 rows: %llu values counted as clamped, %llu beyond ±65504",
           (unsigned long long)clamped, (unsigned long long)want);
}

/* ||out - ref|| / ||ref|| for one query row at position QP: ref is float64 attention of Q (NH heads of
 * width D, two query heads per KV head) over rows 0..QP of K and V (leading dimension DKV). */
static double ref_attention_err(const float *q, const float *k, const float *v, int dkv, int nh, int d, int qp,
                                const float *out)
{
    double e = 0, r = 0, *sc = malloc(sizeof(double) * (size_t)(qp + 1));
    for (int h = 0; h < nh; h++) {
        int kv = h / 2;
        double mx = -1e300, sum = 0;
        for (int t = 0; t <= qp; t++) {
            double s = 0;
            for (int x = 0; x < d; x++) s += (double)q[h * d + x] * k[t * dkv + kv * d + x];
            sc[t] = s / sqrt((double)d);
            mx = fmax(mx, sc[t]);
        }
        for (int t = 0; t <= qp; t++) { sc[t] = exp(sc[t] - mx); sum += sc[t]; }
        for (int x = 0; x < d; x++) {
            double o = 0;
            for (int t = 0; t <= qp; t++) o += sc[t] / sum * v[t * dkv + kv * d + x];
            e += (o - out[h * d + x]) * (o - out[h * d + x]);
            r += o * o;
        }
    }
    free(sc);
    return sqrt(e / r);
}

/* The quant press's attention over packed blocks (unpacked in parallel, at their offsets) and its
 * fp16 residual, against float64 attention over K/V quantized here with the same codecs and the
 * press's policy (once residual + group tokens are fp16, the oldest group is packed). */
static void test_quant_attend(void)
{
    struct kvs_model *m = tiny("llama");
    CHECK(m != NULL);
    if (!m) return;
    char err[256];
    struct kvs_method_config c;
    kvs_method_parse(&c, "quant", err, sizeof err);
    c.target_cr = -1;
    c.quant_bits = 4;
    c.quant_group = 32;
    c.quant_residual = 16;
    struct kvs_press *p = NULL;
    CHECKF(kvs_press_new(&p, m, &c, 256, NULL, NULL, err, sizeof err) == KVS_OK, "quant press: %s", err);
    struct kvs_pool *pool = kvs_pool_new(2);
    if (!p || !pool) { kvs_press_delete(p); kvs_pool_delete(pool); kvs_model_delete(m); return; }
    p->pool = pool;
    enum { N = 200, DKV = 32, NH = 4, D = 16, G = 32, NB = 5 }; /* 200 -> 5 packed blocks + 40 fp16 */
    static float k[N * DKV], v[N * DKV], xn[N * 64], kr[N * DKV], vr[N * DKV];
    float q[NH * D], out[NH * D];
    int32_t pos[N];
    for (int i = 0; i < N * DKV; i++) { k[i] = 2 * frand(); v[i] = frand(); }
    for (int i = 0; i < N * 64; i++) xn[i] = frand();
    for (int i = 0; i < NH * D; i++) q[i] = 2 * frand();
    for (int t = 0; t < N; t++) pos[t] = t;
    CHECK(p->ops->store(p, 0, N, pos, xn, k, v) == KVS_OK);
    CHECK(p->ops->end_step(p, N) == KVS_OK);
    static const int32_t qps[3] = {N - 1, 100, 40}; /* later ones mask the newer blocks and the residual */
    /* reference K/V: fp16 rows, the oldest NB groups packed with the press's codecs */
    for (int i = 0; i < N * DKV; i++) {
        kr[i] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(k[i]));
        vr[i] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(v[i]));
    }
    uint32_t vb = kvs_qrow_bytes(DKV, 4, G);
    uint8_t *kb = malloc(kvs_qcol_bytes(G, DKV, 4)), *vbuf = malloc(vb);
    for (int b = 0; b < NB; b++) {
        kvs_qcol_encode(kr + b * G * DKV, G, DKV, 4, kb);
        for (int t = 0; t < G; t++) kvs_qcol_decode_row(kb, G, DKV, 4, (uint32_t)t, kr + (b * G + t) * DKV);
        for (int t = 0; t < G; t++) {
            kvs_qrow_encode(vr + (b * G + t) * DKV, DKV, 4, G, vbuf);
            kvs_qrow_decode(vbuf, DKV, 4, G, vr + (b * G + t) * DKV);
        }
    }
    for (int i = 0; i < NB * G * DKV; i++) {
        kr[i] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(kr[i]));
        vr[i] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(vr[i]));
    }
    for (int qi = 0; qi < 3; qi++) {
        int32_t qp = qps[qi];
        CHECK(p->ops->attend(p, 0, 1, &qp, q, out) == KVS_OK);
        double ne = ref_attention_err(q, kr, vr, DKV, NH, D, qp, out);
        CHECKF(ne < 1e-5, "quant attention over packed blocks, query at %d: normalised error %g", qp, ne);
    }
    free(kb);
    free(vbuf);
    p->pool = NULL;
    kvs_press_delete(p);
    kvs_pool_delete(pool);
    kvs_model_delete(m);
}

/* MiniCache's merged rows as each layer reads them (its own norms times the shared SLERP
 * direction, rebuilt at every step over the pool) against float64 attention over K/V merged here
 * by the same rule: every token of the pair merged (no retained share, sinks or window), fp16 at
 * the points where the press stores fp16. */
static void test_minicache_attend(void)
{
    struct kvs_model *m = tiny("llama");   /* 6 layers: the pair (4, 5) */
    CHECK(m != NULL);
    if (!m) return;
    char err[256];
    struct kvs_method_config c;
    kvs_method_parse(&c, "minicache", err, sizeof err);
    c.target_cr = -1;
    c.mc_threshold = 0;
    c.sinks = 0;
    c.recent = 0;
    struct kvs_press *p = NULL;
    CHECKF(kvs_press_new(&p, m, &c, 256, NULL, NULL, err, sizeof err) == KVS_OK, "minicache press: %s", err);
    struct kvs_pool *pool = kvs_pool_new(2);
    if (!p || !pool) { kvs_press_delete(p); kvs_pool_delete(pool); kvs_model_delete(m); return; }
    p->pool = pool;
    enum { N = 150, DKV = 32, NH = 4, D = 16 };
    static float k[2][N * DKV], v[2][N * DKV], xn[N * 64], kr[2][N * DKV], vr[2][N * DKV];
    float q[NH * D], out[NH * D];
    int32_t pos[N];
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < N * DKV; i++) {
            k[l][i] = (1 + l + (i / D) % 3) * frand(); /* norms differ by layer and head */
            v[l][i] = (2 - l + (i / D) % 2) * frand();
        }
    for (int i = 0; i < N * 64; i++) xn[i] = frand();
    for (int i = 0; i < NH * D; i++) q[i] = 2 * frand();
    for (int t = 0; t < N; t++) pos[t] = t;
    for (int l = 0; l < 2; l++) CHECK(p->ops->store(p, 4 + l, N, pos, xn, k[l], v[l]) == KVS_OK);
    CHECK(p->ops->end_step(p, N) == KVS_OK);
    /* reference merge, token by token, per head, keys and values */
    const double tt = 0.6;
    for (int t = 0; t < N; t++)
        for (int kvi = 0; kvi < 2; kvi++)
            for (int h = 0; h < 2; h++) {
                float xa[D], xb[D], ua[D], ub[D];
                double na = 0, nb = 0, dot = 0;
                for (int x = 0; x < D; x++) {
                    size_t o = (size_t)t * DKV + h * D + x;
                    xa[x] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(kvi ? v[0][o] : k[0][o]));
                    xb[x] = kvs_fp16_to_fp32(kvs_fp32_to_fp16(kvi ? v[1][o] : k[1][o]));
                    na += (double)xa[x] * xa[x];
                    nb += (double)xb[x] * xb[x];
                }
                float fa = (float)sqrt(na), fb = (float)sqrt(nb);
                for (int x = 0; x < D; x++) {
                    ua[x] = xa[x] / fa;
                    ub[x] = xb[x] / fb;
                    dot += (double)ua[x] * ub[x];
                }
                double om = acos(fmin(1, fmax(-1, dot))), so = sin(om), e[D], es = 0;
                for (int x = 0; x < D; x++) {
                    e[x] = so < 1e-6 ? (1 - tt) * ua[x] + tt * ub[x]
                                     : (sin((1 - tt) * om) * ua[x] + sin(tt * om) * ub[x]) / so;
                    es += e[x] * e[x];
                }
                for (int x = 0; x < D; x++) {
                    float dir = kvs_fp16_to_fp32(kvs_fp32_to_fp16((float)(e[x] / sqrt(es))));
                    size_t o = (size_t)t * DKV + h * D + x;
                    float ra = kvs_fp16_to_fp32(kvs_fp32_to_fp16(kvs_fp16_to_fp32(kvs_fp32_to_fp16(fa)) * dir));
                    float rb = kvs_fp16_to_fp32(kvs_fp32_to_fp16(kvs_fp16_to_fp32(kvs_fp32_to_fp16(fb)) * dir));
                    if (kvi) { vr[0][o] = ra; vr[1][o] = rb; }
                    else { kr[0][o] = ra; kr[1][o] = rb; }
                }
            }
    static const int32_t qps[2] = {N - 1, 60};
    for (int l = 0; l < 2; l++)
        for (int qi = 0; qi < 2; qi++) {
            int32_t qp = qps[qi];
            CHECK(p->ops->attend(p, 4 + l, 1, &qp, q, out) == KVS_OK);
            double ne = ref_attention_err(q, kr[l], vr[l], DKV, NH, D, qp, out);
            CHECKF(ne < 1e-3, "minicache layer %d, query at %d: merged rows with own norms: normalised error %g", 4 + l,
                   qp, ne);
        }
    struct kvs_rec_step rec;
    memset(&rec, 0, sizeof rec);
    p->ops->fill_record(p, &rec);
    CHECK(rec.layer_kept[4] == N && rec.bytes_held < rec.bytes_full); /* every token merged, still attended */
    p->pool = NULL;
    kvs_press_delete(p);
    kvs_pool_delete(pool);
    kvs_model_delete(m);
}

static void test_all_methods(void)
{
    static const char *specs[] = {
        "commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming", "quant+snapkv", "quant+streaming",
        "commonkv+quant", "commonkv+snapkv", "commonkv+quant+snapkv", "lowrank+quant", "lowrank+quant+snapkv",
    };
    const char *archs[2] = {"llama", "qwen2"};
    for (int a = 0; a < 2; a++) {
        struct kvs_model *m = tiny(archs[a]);
        CHECK(m != NULL);
        if (!m) continue;
        int n_pre = 300, n_dec = 70, V = (int)m->hp.n_vocab;
        int32_t *ids = malloc(sizeof(int32_t) * (n_pre + n_dec));
        for (int i = 0; i < n_pre + n_dec; i++) ids[i] = (int32_t)((i * 31u + (uint32_t)i / 7u) % (uint32_t)V);
        for (size_t s = 0; s < KVS_ARRAY_LEN(specs); s++) {
            float crs[2] = {-1.0f, 0.6f};
            for (int ci = 0; ci < 2; ci++) {
                struct outcome o;
                run(m, specs[s], crs[ci], ids, n_pre, n_dec, 64, &o);
                CHECKF(o.ok, "%s %s cr %.1f: %s", archs[a], specs[s], crs[ci], o.err);
                CHECKF(o.finite, "%s %s cr %.1f: logits finite", archs[a], specs[s], crs[ci]);
                if (!o.ok) continue;
                uint64_t sum = 0;
                for (uint32_t l = 0; l < o.rec.n_layer; l++) sum += o.rec.layer_bytes_held[l];
                CHECKF(sum == o.rec.bytes_held, "%s %s: per-layer bytes add up (%llu vs %llu)", archs[a], specs[s],
                       (unsigned long long)sum, (unsigned long long)o.rec.bytes_held);
                CHECKF(o.rec.bytes_alloc >= o.rec.bytes_held, "%s %s: allocated >= held", archs[a], specs[s]);
                CHECK(o.rec.bytes_full == (uint64_t)(n_pre + n_dec) * 6 * 32 * 4);
                /* continuous knobs hit the target within 0.02 + one merge/evict block of decoded tokens */
                /* quantization compresses by a fixed factor, so with quant the target is a floor */
                bool with_quant = strstr(specs[s], "quant") != NULL, exact = !with_quant && strcmp(specs[s], "minicache");
                if (crs[ci] > 0 && exact)
                    CHECKF(fabsf(o.rec.cr_achieved - crs[ci]) <= 0.05f, "%s %s: target %.2f achieved %.4f", archs[a],
                           specs[s], crs[ci], o.rec.cr_achieved);
                if (crs[ci] > 0 && with_quant && strcmp(specs[s], "quant") && strcmp(specs[s], "lowrank+quant") &&
                    strcmp(specs[s], "commonkv+quant"))
                    CHECKF(o.rec.cr_achieved >= crs[ci] - 0.05f, "%s %s: target %.2f achieved %.4f", archs[a],
                           specs[s], crs[ci], o.rec.cr_achieved);
                if (crs[ci] > 0)
                    CHECKF(o.rec.cr_achieved > 0.1f, "%s %s: compresses (%.3f)", archs[a], specs[s], o.rec.cr_achieved);
            }
        }
        free(ids);
        /* the full composition reaches >= 95% (at a context where the protected window is small) */
        n_pre = 1000;
        ids = malloc(sizeof(int32_t) * (n_pre + n_dec));
        for (int i = 0; i < n_pre + n_dec; i++) ids[i] = (int32_t)((i * 31u + (uint32_t)i / 7u) % (uint32_t)V);
        struct outcome o;
        run(m, "commonkv+quant+snapkv", 0.95f, ids, n_pre, n_dec, 256, &o);
        CHECKF(o.ok && o.finite && o.rec.cr_achieved >= 0.95f - 0.02f, "%s composition at 0.95: %.4f (%s)", archs[a],
               o.rec.cr_achieved, o.err);
        free(ids);
        kvs_model_delete(m);
    }
}

/* Prompts shorter than the sinks, the recent window and SnapKV's observation window, for every
 * valid composition, with and without a target: nothing to evict or merge must still be well
 * defined (the asan tier runs this under UBSan: qsort/memcpy on NULL with a count of 0). */
static void test_short_prompts(void)
{
    struct kvs_model *m = tiny("llama");
    if (!m) { CHECK(0); return; }
    const char *specs[] = {"full", "commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming",
                           "commonkv+quant", "commonkv+snapkv", "commonkv+quant+snapkv", "lowrank+snapkv",
                           "lowrank+quant+snapkv", "quant+snapkv", "quant+streaming"};
    const int lens[] = {1, 3, 9};
    const float crs[] = {-1.0f, 0.9f};
    int32_t ids[16];
    int V = (int)m->hp.n_vocab;
    for (int i = 0; i < 16; i++) ids[i] = (int32_t)((i * 7 + 3) % V);
    for (size_t s = 0; s < KVS_ARRAY_LEN(specs); s++)
        for (size_t l = 0; l < KVS_ARRAY_LEN(lens); l++)
            for (size_t c = 0; c < KVS_ARRAY_LEN(crs); c++) {
                struct outcome o;
                run(m, specs[s], crs[c], ids, lens[l], 3, 4, &o);
                CHECKF(o.ok && o.finite, "%s, %d prompt tokens, cr %.1f: %s", specs[s], lens[l], (double)crs[c], o.err);
            }
    kvs_model_delete(m);
}

static void test_bad_specs(void)
{
    struct kvs_model *m = tiny("llama");
    if (!m) { CHECK(0); return; }
    /* combinations that cannot be built are refused by the parser (before any model is loaded),
     * and by kvs_press_new when a config is put together by hand */
    const char *bad[] = {"full+quant", "commonkv+lowrank", "commonkv+streaming", "snapkv+streaming", "minicache+quant"};
    const uint32_t bad_bits[] = {KVS_M_FULL | KVS_M_QUANT, KVS_M_COMMONKV | KVS_M_LOWRANK, KVS_M_COMMONKV | KVS_M_STREAMING,
                                 KVS_M_SNAPKV | KVS_M_STREAMING, KVS_M_MINICACHE | KVS_M_QUANT};
    for (size_t i = 0; i < KVS_ARRAY_LEN(bad); i++) {
        struct kvs_method_config c;
        char err[256] = "";
        struct kvs_press *p = NULL;
        CHECKF(kvs_method_parse(&c, bad[i], err, sizeof err) == KVS_ERR_ARG && strstr(err, bad[i]), "%s: %s", bad[i], err);
        kvs_method_parse(&c, "full", err, sizeof err);
        c.methods = bad_bits[i];
        snprintf(c.spec, sizeof c.spec, "%s", bad[i]);
        err[0] = 0;
        CHECKF(kvs_press_new(&p, m, &c, 64, NULL, NULL, err, sizeof err) == KVS_ERR_ARG && p == NULL && err[0],
               "%s refused", bad[i]);
    }
    /* malformed specs: one clear message each, never a silent default or a truncation */
    char long_spec[80];
    memset(long_spec, 0, sizeof long_spec);
    for (int i = 0; i + 6 < 70; i += 6) memcpy(long_spec + i, "quant+", 6);
    memcpy(long_spec + 66, "full", 4); /* 70 bytes: over the 63-byte limit */
    const struct { const char *spec, *want; } malformed[] = {
        {"", "empty method name"},           {"commonkv++quant", "empty name around '+'"},
        {"+quant", "empty name around '+'"}, {"quant+", "empty name around '+'"},
        {"quant+quant", "named twice"},      {"foo", "unknown method 'foo'"},
        {"quant+fo", "unknown method 'fo'"}, {long_spec, "the limit is 63"},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(malformed); i++) {
        struct kvs_method_config c;
        char err[256] = "";
        CHECKF(kvs_method_parse(&c, malformed[i].spec, err, sizeof err) == KVS_ERR_ARG && strstr(err, malformed[i].want),
               "'%s' refused with '%s': got '%s'", malformed[i].spec, malformed[i].want, err);
    }
    const char *good[] = {"full", "commonkv+quant+snapkv", "quant+streaming", "lowrank+snapkv"};
    for (size_t i = 0; i < KVS_ARRAY_LEN(good); i++) {
        struct kvs_method_config c;
        char err[256] = "";
        CHECKF(kvs_method_parse(&c, good[i], err, sizeof err) == KVS_OK && !strcmp(c.spec, good[i]), "%s: %s", good[i], err);
    }
    struct kvs_method_config c;
    char err[256];
    struct kvs_press *p = NULL;
    kvs_method_parse(&c, "quant", err, sizeof err);
    c.quant_bits = 3;
    CHECK(kvs_press_new(&p, m, &c, 64, NULL, NULL, err, sizeof err) == KVS_ERR_ARG);
    kvs_model_delete(m);
}

static void test_real_model(void)
{
    const char *path = getenv("KVS_MODEL") ? getenv("KVS_MODEL") : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    struct kvs_model *m = NULL;
    char err[512];
    if (access(path, R_OK) != 0 || kvs_model_load(&m, path, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "skipped: no real model at %s\n", path);
        return;
    }
    int n_pre = 1000, n_dec = 24, V = (int)m->hp.n_vocab;
    int32_t *ids = malloc(sizeof(int32_t) * (n_pre + n_dec));
    for (int i = 0; i < n_pre + n_dec; i++) ids[i] = (int32_t)(1000 + (i * 37u) % 5000u) % V;
    static const char *specs[] = {"commonkv", "lowrank", "minicache", "quant", "snapkv", "streaming",
                                  "commonkv+quant+snapkv"};
    for (size_t s = 0; s < KVS_ARRAY_LEN(specs); s++) {
        struct outcome o;
        float cr = strcmp(specs[s], "commonkv+quant+snapkv") ? 0.5f : 0.95f;
        run(m, specs[s], cr, ids, n_pre, n_dec, 256, &o);
        CHECKF(o.ok && o.finite, "SmolLM2 %s: %s", specs[s], o.err);
        fprintf(stderr, "   SmolLM2 %-22s target %.2f achieved %.4f\n", specs[s], cr, o.rec.cr_achieved);
        if (!strcmp(specs[s], "commonkv+quant+snapkv")) CHECK(o.rec.cr_achieved >= 0.94f);
    }
    /* the composition's plan hits a lower target too, instead of overshooting it with the packing */
    for (int i = 0; i < 2; i++) {
        struct outcome o;
        float cr = i ? 0.7f : 0.5f;
        run(m, "commonkv+quant+snapkv", cr, ids, n_pre, n_dec, 256, &o);
        fprintf(stderr, "   SmolLM2 %-22s target %.2f achieved %.4f\n", "commonkv+quant+snapkv", cr, o.rec.cr_achieved);
        CHECKF(o.ok && fabsf(o.rec.cr_achieved - cr) <= 0.05f, "SmolLM2 commonkv+quant+snapkv at %.2f: %.4f (%s)", cr,
               o.rec.cr_achieved, o.err);
    }
    free(ids);
    kvs_model_delete(m);
}

int main(int argc, char **argv)
{
    /* test_methods --write-tiny PATH [llama|qwen2 [WEIGHT_STD]]: the model the script tests use;
     * a huge WEIGHT_STD (1e30) gives a model whose activations overflow to NaN */
    if (argc >= 3 && !strcmp(argv[1], "--write-tiny")) {
        struct kvs_tiny_opts o;
        tiny_opts(&o, argc >= 4 ? argv[3] : "llama");
        if (argc >= 5) o.weight_std = strtof(argv[4], NULL);
        if (kvs_tiny_write(argv[2], &o) != 0) {
            fprintf(stderr, "%s\n", kvs_tiny_error());
            return 1;
        }
        return 0;
    }
    RUN(test_qrow);
    RUN(test_snap_stream);
    RUN(test_row_conversions);
    RUN(test_quant_attend);
    RUN(test_minicache_attend);
    RUN(test_all_methods);
    RUN(test_short_prompts);
    RUN(test_bad_specs);
    RUN(test_real_model);
    return kvs_test_summary();
}
