/* CommonKV offline factorization (DESIGN.md §3 steps 1-4): stacked K-then-V weights per layer
 * group, thin SVD in double precision (LAPACKE dgesdd), sqrt(Sigma) split, whitening, rank plans
 * for a target compression ratio and merge-weight files. Depends on model.h, record.h and
 * LAPACKE; never prints, never exits. */
#include "commonkv.h"

#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kvs_ckv_factors_delete(struct kvs_ckv_factors *f)
{
    if (!f) return;
    for (uint32_t g = 0; g < KVS_MAX_GROUPS; g++) {
        free(f->sigma[g]);
        free(f->A[g]);
        free(f->B[g]);
    }
    free(f);
}

enum kvs_status kvs_ckv_cholesky(const double *xtx, int D, double eps, double **L, char *err, size_t errlen)
{
    *L = NULL;
    double *a = malloc((size_t)D * D * sizeof(double));
    if (!a) {
        kvs_seterr(err, errlen, "whitening: out of memory");
        return KVS_ERR_NOMEM;
    }
    memcpy(a, xtx, (size_t)D * D * sizeof(double));
    double tr = 0;
    for (int i = 0; i < D; i++) tr += a[(size_t)i * D + i];
    double add = eps * (tr > 0 ? tr / D : 1.0);
    for (int i = 0; i < D; i++) a[(size_t)i * D + i] += add;
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', D, a, D);
    if (info != 0) {
        free(a);
        kvs_seterr(err, errlen, "whitening: Cholesky of the calibration Gram matrix failed (info %d)", (int)info);
        return KVS_ERR_BACKEND;
    }
    for (int i = 0; i < D; i++)
        for (int j = i + 1; j < D; j++) a[(size_t)i * D + j] = 0;
    *L = a;
    return KVS_OK;
}

enum kvs_status kvs_ckv_svd(const float *M, int rows, int D, const double *L, float **A, float **B, float **sigma,
                            char *err, size_t errlen)
{
    *A = *B = *sigma = NULL;
    int k = KVS_MIN(rows, D);
    double *m = malloc((size_t)rows * D * sizeof(double));
    double *u = malloc((size_t)rows * k * sizeof(double));
    double *vt = malloc((size_t)k * D * sizeof(double));
    double *s = malloc((size_t)k * sizeof(double));
    float *a = malloc((size_t)k * D * sizeof(float));
    float *b = malloc((size_t)rows * k * sizeof(float));
    float *sg = malloc((size_t)k * sizeof(float));
    enum kvs_status st = KVS_OK;
    if (!m || !u || !vt || !s || !a || !b || !sg) {
        kvs_seterr(err, errlen, "SVD of a %dx%d matrix: out of memory", rows, D);
        st = KVS_ERR_NOMEM;
        goto done;
    }
    if (L) {
        /* M*L row by row: L is lower-triangular, so column j only sees rows i >= j of L */
        double *row = malloc((size_t)D * sizeof(double));
        if (!row) {
            kvs_seterr(err, errlen, "SVD: out of memory");
            st = KVS_ERR_NOMEM;
            goto done;
        }
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < D; j++) row[j] = M[(size_t)r * D + j];
            for (int j = 0; j < D; j++) {
                double acc = 0;
                for (int i = j; i < D; i++) acc += row[i] * L[(size_t)i * D + j];
                m[(size_t)r * D + j] = acc;
            }
        }
        free(row);
    } else {
        for (size_t i = 0; i < (size_t)rows * D; i++) m[i] = M[i];
    }
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', rows, D, m, D, s, u, k, vt, D);
    if (info != 0) {
        kvs_seterr(err, errlen, "SVD of a %dx%d matrix failed (dgesdd info %d)", rows, D, (int)info);
        st = KVS_ERR_BACKEND;
        goto done;
    }
    for (int i = 0; i < k; i++) {
        double rs = sqrt(s[i] > 0 ? s[i] : 0);
        sg[i] = (float)s[i];
        double *vi = vt + (size_t)i * D;
        if (L) {
            /* a_i^T = sqrt(s_i) v_i^T L^-1  <=>  L^T a_i = sqrt(s_i) v_i: back substitution */
            for (int j = D - 1; j >= 0; j--) {
                double acc = vi[j];
                for (int t = j + 1; t < D; t++) acc -= L[(size_t)t * D + j] * vi[t];
                vi[j] = acc / L[(size_t)j * D + j];
            }
        }
        for (int j = 0; j < D; j++) a[(size_t)i * D + j] = (float)(rs * vi[j]);
        for (int r = 0; r < rows; r++) b[(size_t)r * k + i] = (float)(u[(size_t)r * k + i] * rs);
    }
done:
    free(m); free(u); free(vt); free(s);
    if (st != KVS_OK) {
        free(a); free(b); free(sg);
        return st;
    }
    *A = a;
    *B = b;
    *sigma = sg;
    return KVS_OK;
}

static void group_layout(struct kvs_ckv_factors *f, uint32_t n_layer, uint32_t G)
{
    f->group_size = G;
    f->n_groups = (n_layer + G - 1) / G;
    for (uint32_t g = 0; g < f->n_groups; g++) {
        f->g_l0[g] = g * G;
        f->g_nl[g] = KVS_MIN(G, n_layer - g * G);
        f->r_max[g] = KVS_MIN(2 * f->g_nl[g] * f->d_kv, f->n_embd);
    }
}

enum kvs_status kvs_ckv_factors_build(struct kvs_ckv_factors **out, const struct kvs_model *m, uint32_t G,
                                      double *const *xtx, uint64_t calib_key, kvs_progress_fn progress,
                                      void *ud, char *err, size_t errlen)
{
    *out = NULL;
    const struct kvs_hparams *hp = &m->hp;
    uint32_t dkv = hp->n_head_kv * hp->head_dim, D = hp->n_embd;
    if (G == 0 || G > KVS_CKV_MAX_G || (hp->n_layer + G - 1) / G > KVS_MAX_GROUPS) {
        kvs_seterr(err, errlen, "commonkv: group size %u out of range (1..%d, at most %d groups)", G, KVS_CKV_MAX_G,
                   KVS_MAX_GROUPS);
        return KVS_ERR_ARG;
    }
    struct kvs_ckv_factors *f = calloc(1, sizeof *f);
    if (!f) {
        kvs_seterr(err, errlen, "commonkv: out of memory");
        return KVS_ERR_NOMEM;
    }
    f->n_layer = hp->n_layer;
    f->n_embd = D;
    f->d_kv = dkv;
    f->whitened = xtx != NULL;
    f->model_key = kvs_ckv_model_key(m);
    f->calib_key = xtx ? calib_key : 0;
    group_layout(f, hp->n_layer, G);
    uint64_t t0 = kvs_now_ns();
    enum kvs_status st = KVS_OK;
    for (uint32_t g = 0; g < f->n_groups && st == KVS_OK; g++) {
        if (progress && !progress(ud, "factorizing layer groups (SVD)", (float)g / f->n_groups)) {
            kvs_seterr(err, errlen, "commonkv: cancelled");
            st = KVS_ERR_CANCELLED;
            break;
        }
        uint32_t nl = f->g_nl[g], rows = 2 * nl * dkv;
        float *M = malloc((size_t)rows * D * sizeof(float));
        double *L = NULL;
        if (!M) {
            kvs_seterr(err, errlen, "commonkv: out of memory stacking group %u", g);
            st = KVS_ERR_NOMEM;
            break;
        }
        for (uint32_t i = 0; i < nl && st == KVS_OK; i++) {
            const struct kvs_layer *ly = &m->layers[f->g_l0[g] + i];
            for (int kv = 0; kv < 2; kv++) {
                const struct kvs_weight *w = kv ? &ly->wv : &ly->wk;
                if ((uint32_t)w->rows != dkv || (uint32_t)w->cols != D) {
                    kvs_seterr(err, errlen, "commonkv: layer %u %s weight is %lldx%lld, expected %ux%u",
                               f->g_l0[g] + i, kv ? "V" : "K", (long long)w->rows, (long long)w->cols, dkv, D);
                    st = KVS_ERR_FORMAT;
                    break;
                }
                float *wf = kvs_weight_to_f32(w);
                if (!wf) {
                    kvs_seterr(err, errlen, "commonkv: out of memory dequantizing layer %u", f->g_l0[g] + i);
                    st = KVS_ERR_NOMEM;
                    break;
                }
                memcpy(M + ((size_t)kv * nl * dkv + (size_t)i * dkv) * D, wf, (size_t)dkv * D * sizeof(float));
                free(wf);
            }
        }
        if (st == KVS_OK && xtx) st = kvs_ckv_cholesky(xtx[g], (int)D, 1e-4, &L, err, errlen);
        if (st == KVS_OK) {
            float *A, *B, *S;
            st = kvs_ckv_svd(M, (int)rows, (int)D, L, &A, &B, &S, err, errlen);
            if (st == KVS_OK) {
                f->A[g] = A;
                f->B[g] = B;
                f->sigma[g] = S;
            }
        }
        free(L);
        free(M);
    }
    if (st != KVS_OK) {
        kvs_ckv_factors_delete(f);
        return st;
    }
    f->svd_seconds = (double)(kvs_now_ns() - t0) / 1e9;
    if (progress) progress(ud, "factorizing layer groups (SVD)", 1.0f);
    *out = f;
    return KVS_OK;
}

uint64_t kvs_ckv_model_key(const struct kvs_model *m)
{
    uint64_t h = 0xcbf29ce484222325ull;
#define FNV(byte) do { h ^= (uint8_t)(byte); h *= 0x100000001b3ull; } while (0)
    uint64_t size = m->gguf.size, mtime = 0;
    struct stat sb;
    if (m->gguf.path[0] && stat(m->gguf.path, &sb) == 0) mtime = (uint64_t)sb.st_mtime;
    for (int i = 0; i < 8; i++) FNV(size >> (8 * i));
    for (int i = 0; i < 8; i++) FNV(mtime >> (8 * i));
    const uint8_t *p = m->gguf.map;
    if (p && size) {
        const uint64_t piece = 4096, n_pieces = 16;
        if (size <= piece * n_pieces) {
            for (uint64_t i = 0; i < size; i++) FNV(p[i]);
        } else {
            for (uint64_t k = 0; k < n_pieces; k++) {
                uint64_t off = (size - piece) / (n_pieces - 1) * k;
                for (uint64_t i = 0; i < piece; i++) FNV(p[off + i]);
            }
        }
    }
#undef FNV
    return h;
}

void kvs_ckv_cache_dir_default(char *buf, size_t cap)
{
    const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (x && *x) snprintf(buf, cap, "%s/kvscope", x);
    else if (home && *home) snprintf(buf, cap, "%s/.cache/kvscope", home);
    else snprintf(buf, cap, "%s", "");
}

int kvs_ckv_spectrum_records(const struct kvs_ckv_factors *f, struct kvs_record **recs, int cap)
{
    int n = 0;
    for (uint32_t g = 0; g < f->n_groups && n < cap; g++) {
        struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, f->r_max[g]);
        if (!r) break;
        r->u.matrix.kind = KVS_MAT_SPECTRUM;
        r->u.matrix.group = g;
        r->u.matrix.rows = 1;
        r->u.matrix.cols = f->r_max[g];
        memcpy(r->u.matrix.v, f->sigma[g], (size_t)f->r_max[g] * sizeof(float));
        recs[n++] = r;
    }
    return n;
}

/* ---------------------------------------------------------------- rank plans */

static double plan_bytes(const struct kvs_ckv_factors *f, const uint32_t *rank, double merged_share, double *full)
{
    /* bytes per token of context: merged_share of the (group, token) slots are merged */
    double held = 0, fb = 0;
    for (uint32_t g = 0; g < f->n_groups; g++) {
        double nl = f->g_nl[g], r = rank[g];
        held += (1 - merged_share) * (nl * r * 2 + 4) + merged_share * (r * 2 + 4);
        fb += nl * 2.0 * f->d_kv * 2;
    }
    if (full) *full = fb;
    return held;
}

/* Water-filling of a total rank budget (in per-token latent floats, sum of nl*r) over groups by
 * normalised singular energies: the next rank goes to the group whose next direction carries the
 * largest share of its group's energy. Similar layers stack into a faster-decaying spectrum, so a
 * group of similar layers gets less rank. */
static void rank_by_energy(const struct kvs_ckv_factors *f, double budget, uint32_t *rank)
{
    double tot[KVS_MAX_GROUPS];
    for (uint32_t g = 0; g < f->n_groups; g++) {
        tot[g] = 0;
        for (uint32_t i = 0; i < f->r_max[g]; i++) tot[g] += (double)f->sigma[g][i] * f->sigma[g][i];
        rank[g] = 1;
        budget -= f->g_nl[g];
    }
    for (;;) {
        int best = -1;
        double be = -1;
        for (uint32_t g = 0; g < f->n_groups; g++) {
            if (rank[g] >= f->r_max[g] || f->g_nl[g] > budget) continue;
            double s = f->sigma[g][rank[g]];
            double e = tot[g] > 0 ? s * s / tot[g] : 0;
            if (e > be) { be = e; best = (int)g; }
        }
        if (best < 0) break;
        rank[best]++;
        budget -= f->g_nl[best];
    }
}

void kvs_ckv_plan(const struct kvs_ckv_factors *f, const struct kvs_method_config *cfg, int n_ctx,
                  struct kvs_ckv_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    int prot = (int)(cfg->sinks + cfg->recent);
    double mu = n_ctx > prot ? (double)(n_ctx - prot) / n_ctx : 0.0;
    bool merging = (cfg->methods & KVS_M_COMMONKV) != 0 && f->group_size > 1;
    if (!merging) mu = 0;
    float cr = cfg->target_cr;
    uint32_t D = f->n_embd;
    double full = 0;
    if (cfg->rank || cfg->rank_ratio > 0 || cr < 0) {
        uint32_t r = cfg->rank ? cfg->rank
                   : cfg->rank_ratio > 0 ? (uint32_t)lround(cfg->rank_ratio * D)
                   : (uint32_t)lround(0.5 * D);
        for (uint32_t g = 0; g < f->n_groups; g++) plan->rank[g] = KVS_MAX(1u, KVS_MIN(r, f->r_max[g]));
    } else {
        /* Derived from the target: plan to merge a share of the mergeable slots (the rest of the
         * saving comes from rank), so both the cross-layer sharing and the low rank carry part of it. */
        double ms = cfg->merge_share >= 0 ? KVS_MIN(1.0, (double)cfg->merge_share) : KVS_CKV_MERGE_SHARE;
        double share = merging ? ms * mu : 0.0;
        uint32_t one[KVS_MAX_GROUPS] = {0};
        for (uint32_t g = 0; g < f->n_groups; g++) one[g] = 1;
        double per_rank = plan_bytes(f, one, share, &full);
        double fixed = 0;
        for (uint32_t g = 0; g < f->n_groups; g++) fixed += 4;
        per_rank -= fixed;                      /* bytes per token per unit of rank */
        double r = ((1 - cr) * full - fixed) / per_rank;
        uint32_t ru = (uint32_t)KVS_MAX(1.0, floor(r));
        for (uint32_t g = 0; g < f->n_groups; g++) plan->rank[g] = KVS_MIN(ru, f->r_max[g]);
        /* a short context leaves little to merge: say what the target then costs in rank */
        if (merging && mu < 0.5)
            snprintf(plan->note, sizeof plan->note,
                     "only %d of %d tokens can merge (%u sinks + %u recent protected): the target falls on the "
                     "rank, %u of %u (%.2f D)", KVS_MAX(0, n_ctx - prot), n_ctx, cfg->sinks, cfg->recent, ru, D,
                     (double)ru / D);
    }
    if (cfg->rank_by_similarity) {
        double budget = 0;
        for (uint32_t g = 0; g < f->n_groups; g++) budget += (double)f->g_nl[g] * plan->rank[g];
        rank_by_energy(f, budget, plan->rank);
    }
    double held0 = plan_bytes(f, plan->rank, 0, &full);
    double held1 = plan_bytes(f, plan->rank, mu, NULL);
    plan->cr_rank_only = (float)(1 - held0 / full);
    plan->cr_max = (float)(1 - held1 / full);
    plan->reachable = true;
    bool explicit_rank = cfg->rank || cfg->rank_ratio > 0 || cr < 0;
    if (explicit_rank && cfg->merge_share >= 0 && merging) {
        /* rank and share both given: they decide; a target only stops merging once met */
        plan->merge_frac = (float)KVS_MIN(1.0, (double)cfg->merge_share);
        double held = plan_bytes(f, plan->rank, plan->merge_frac * mu, NULL);
        if (cr >= 0 && 1 - held / full < cr - 0.02)
            snprintf(plan->note, sizeof plan->note,
                     "rank %u with merge share %.2f reaches CR %.3f, short of the target %.2f", plan->rank[0],
                     plan->merge_frac, 1 - held / full, cr);
        plan->reachable = cr < 0 || 1 - held / full >= cr - 0.02;
        return;
    }
    if (cr < 0) {
        plan->merge_frac = 0;
        return;
    }
    if (cr > plan->cr_max + 0.02f) {
        plan->reachable = false;
        plan->merge_frac = 1;
        snprintf(plan->note, sizeof plan->note,
                 "target CR %.2f is beyond reach at rank %u with %d of %d tokens protected: at most %.3f",
                 cr, plan->rank[0], KVS_MIN(prot, n_ctx), n_ctx, plan->cr_max);
    } else if (cr < plan->cr_rank_only - 0.02f) {
        plan->reachable = false;
        plan->merge_frac = 0;
        snprintf(plan->note, sizeof plan->note, "rank %u alone already removes %.3f of the bytes (target %.2f)",
                 plan->rank[0], plan->cr_rank_only, cr);
    } else {
        double span = held0 - held1;
        plan->merge_frac = span > 0 ? (float)KVS_MAX(0.0, KVS_MIN(1.0, (held0 - (1 - cr) * full) / span)) : 0.0f;
    }
}

/* ---------------------------------------------------------------- merge weights */

enum kvs_status kvs_ckv_weights_load(const char *path, float *w, int n_layer, char *err, size_t errlen)
{
    for (int l = 0; l < n_layer; l++) w[l] = 1.0f;
    int fd = kvs_open_regular(path, err, errlen); /* a FIFO would block */
    FILE *fp = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!fp) {
        if (fd >= 0) {
            kvs_seterr(err, errlen, "%s: cannot open merge weights: %s", path, strerror(errno));
            close(fd);
        }
        return KVS_ERR_IO;
    }
    char line[256];
    int lineno = 0, n = 0;
    enum kvs_status st = KVS_OK;
    while (fgets(line, sizeof line, fp)) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (*s == '#' || *s == '\n' || *s == 0) continue;
        int l;
        float v;
        if (sscanf(s, "%d %f", &l, &v) != 2 || l < 0 || l >= n_layer || !(v >= 0) || !isfinite(v)) {
            kvs_seterr(err, errlen, "%s:%d: expected 'LAYER WEIGHT' with 0 <= LAYER < %d and WEIGHT >= 0", path,
                       lineno, n_layer);
            st = KVS_ERR_FORMAT;
            break;
        }
        w[l] = v;
        n++;
    }
    fclose(fp);
    if (st == KVS_OK && n == 0) {
        kvs_seterr(err, errlen, "%s: no weights found", path);
        st = KVS_ERR_FORMAT;
    }
    return st;
}

enum kvs_status kvs_ckv_weights_save(const char *path, const float *w, int n_layer, const char *model_name,
                                     char *err, size_t errlen)
{
    FILE *fp = fopen(path, "w");
    if (!fp) {
        kvs_seterr(err, errlen, "%s: cannot create", path);
        return KVS_ERR_IO;
    }
    fprintf(fp, "# kvscope merge weights (per-layer key sensitivity) for %s\n# layer weight\n",
            model_name ? model_name : "?");
    for (int l = 0; l < n_layer; l++) fprintf(fp, "%d %.6g\n", l, w[l]);
    if (fclose(fp) != 0) {
        kvs_seterr(err, errlen, "%s: write failed", path);
        return KVS_ERR_IO;
    }
    return KVS_OK;
}
