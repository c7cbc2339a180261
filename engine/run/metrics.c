/* Quality metrics, passkey prompts and the layer-similarity evidence (see metrics.h).
 * Depends on infer.h, commonkv.h and OpenBLAS; never prints. */
#include "metrics.h"

#include <cblas.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_press_full_create(struct kvs_press **out, const struct kvs_model *m,
                                      const struct kvs_method_config *cfg, int n_ctx_max, char *err, size_t errlen);

/* log-sum-exp of logits (double) */
static double lse(const float *x, int n)
{
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    return mx + log(s);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

void kvs_quality_add(struct kvs_quality_acc *a, const float *logits, const float *ref, int n_vocab, int32_t next)
{
    double lz = lse(logits, n_vocab);
    a->nll += lz - logits[next];
    if (ref) {
        double lr = lse(ref, n_vocab), kl = 0;
        a->nll_ref += lr - ref[next];
        for (int i = 0; i < n_vocab; i++) {
            double lp = ref[i] - lr, lq = logits[i] - lz;
            kl += exp(lp) * (lp - lq);
        }
        a->kl += kl > 0 ? kl : 0;
        a->top1 += argmax(logits, n_vocab) == argmax(ref, n_vocab);
    }
    a->n++;
}

double kvs_quality_ppl(const struct kvs_quality_acc *a) { return a->n ? exp(a->nll / a->n) : NAN; }
double kvs_quality_ppl_ref(const struct kvs_quality_acc *a) { return a->n ? exp(a->nll_ref / a->n) : NAN; }
double kvs_quality_kl(const struct kvs_quality_acc *a) { return a->n ? a->kl / a->n : NAN; }
double kvs_quality_top1(const struct kvs_quality_acc *a) { return a->n ? (double)a->top1 / a->n : NAN; }

/* ---------------------------------------------------------------- passkey */

static const char *filler =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

char *kvs_passkey_prompt(const struct kvs_tokenizer *tok, int n_tokens, uint32_t key, float depth)
{
    char needle[128], question[] = "What is the pass key? The pass key is";
    snprintf(needle, sizeof needle, "The pass key is %u. Remember it. %u is the pass key. ", key, key);
    const char *intro = "There is an important piece of information hidden inside a lot of irrelevant text. "
                        "Find it and memorize it. I will quiz you about it.\n";
    int64_t per = kvs_tokenizer_encode(tok, filler, strlen(filler), false, NULL, 0);
    int64_t fixed = kvs_tokenizer_encode(tok, intro, strlen(intro), false, NULL, 0) +
                    kvs_tokenizer_encode(tok, needle, strlen(needle), false, NULL, 0) +
                    kvs_tokenizer_encode(tok, question, strlen(question), false, NULL, 0) + 2;
    if (per <= 0) return NULL;
    int reps = (int)KVS_MAX(1, (n_tokens - fixed) / per);
    int at = (int)lroundf(depth * reps);
    size_t cap = strlen(intro) + strlen(needle) + strlen(question) + (size_t)reps * strlen(filler) + 8;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t len = 0;
    len += (size_t)snprintf(s + len, cap - len, "%s", intro);
    for (int i = 0; i <= reps; i++) {
        if (i == at) len += (size_t)snprintf(s + len, cap - len, "%s", needle);
        if (i < reps) len += (size_t)snprintf(s + len, cap - len, "%s", filler);
    }
    snprintf(s + len, cap - len, "\n%s", question);
    return s;
}

static const char *box_colour[8] = {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"};

char *kvs_passkey_multi_prompt(const struct kvs_tokenizer *tok, int n_tokens, const uint32_t *keys, int n_keys,
                               int ask)
{
    if (n_keys < 2 || n_keys > 8 || ask < 0 || ask >= n_keys) return NULL;
    char needle[8][96], question[160];
    int64_t fixed = 2;
    const char *intro = "There are several pass keys hidden inside a lot of irrelevant text, one for each box. "
                        "Find them and memorize them. I will quiz you about one of them.\n";
    for (int i = 0; i < n_keys; i++) {
        snprintf(needle[i], sizeof needle[i], "The pass key of the %s box is %u. ", box_colour[i], keys[i]);
        fixed += kvs_tokenizer_encode(tok, needle[i], strlen(needle[i]), false, NULL, 0);
    }
    snprintf(question, sizeof question, "What is the pass key of the %s box? The pass key of the %s box is",
             box_colour[ask], box_colour[ask]);
    int64_t per = kvs_tokenizer_encode(tok, filler, strlen(filler), false, NULL, 0);
    fixed += kvs_tokenizer_encode(tok, intro, strlen(intro), false, NULL, 0) +
             kvs_tokenizer_encode(tok, question, strlen(question), false, NULL, 0);
    if (per <= 0) return NULL;
    int reps = (int)KVS_MAX(1, (n_tokens - fixed) / per);
    size_t cap = strlen(intro) + strlen(question) + (size_t)reps * strlen(filler) + 8 * sizeof needle[0] + 8;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t len = (size_t)snprintf(s, cap, "%s", intro);
    int next = 0;
    for (int i = 0; i <= reps; i++) {
        /* needle j at depth 0.1 + 0.8 j / (n_keys - 1) */
        while (next < n_keys && i == (int)lround((0.1 + 0.8 * next / (n_keys - 1)) * reps))
            len += (size_t)snprintf(s + len, cap - len, "%s", needle[next++]);
        if (i < reps) len += (size_t)snprintf(s + len, cap - len, "%s", filler);
    }
    snprintf(s + len, cap - len, "\n%s", question);
    return s;
}

bool kvs_passkey_match(const char *text, uint32_t key)
{
    const char *p = text;
    while (*p && !isdigit((unsigned char)*p)) p++;
    if (!*p) return false;
    unsigned long v = strtoul(p, NULL, 10);
    return v == key;
}

/* ---------------------------------------------------------------- layer similarity */

struct sim_acc {
    int N, D, dkv, n, T0;
    float *x, *xn, *k;  /* (N, n, D), (N, n, D), (N, n, dkv) */
};

static void sim_hook(void *ud, int layer, int T, const int32_t *pos, const float *x, const float *xn, const float *k)
{
    struct sim_acc *a = ud;
    for (int t = 0; t < T; t++) {
        int p = pos[t];
        if (p < 0 || p >= a->n) continue;
        memcpy(a->x + ((size_t)layer * a->n + p) * a->D, x + (size_t)t * a->D, (size_t)a->D * sizeof(float));
        memcpy(a->xn + ((size_t)layer * a->n + p) * a->D, xn + (size_t)t * a->D, (size_t)a->D * sizeof(float));
        if (k) memcpy(a->k + ((size_t)layer * a->n + p) * a->dkv, k + (size_t)t * a->dkv, (size_t)a->dkv * sizeof(float));
    }
}

/* mean over tokens of cos(a_t, b_t); A and B are (n, w) */
static float mean_cos(const float *A, const float *B, int n, int w)
{
    double acc = 0;
    for (int t = 0; t < n; t++) {
        const float *a = A + (size_t)t * w, *b = B + (size_t)t * w;
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < w; i++) {
            ab += (double)a[i] * b[i];
            aa += (double)a[i] * a[i];
            bb += (double)b[i] * b[i];
        }
        acc += aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
    }
    return n ? (float)(acc / n) : NAN;
}

enum kvs_status kvs_similarity_layers(const struct kvs_model *m, const int32_t *ids, int n,
                                      const struct kvs_ckv_factors *f, const uint32_t *rank, int n_threads,
                                      float **hidden, float **keys, float **latent, char *err, size_t errlen)
{
    *hidden = *keys = *latent = NULL;
    const struct kvs_hparams *hp = &m->hp;
    struct sim_acc a = {.N = (int)hp->n_layer, .D = (int)hp->n_embd, .dkv = (int)(hp->n_head_kv * hp->head_dim),
                        .n = n};
    struct kvs_press *press = NULL;
    struct kvs_ctx *ctx = NULL;
    float *lat = NULL;
    float *H = calloc((size_t)a.N * a.N, sizeof(float)), *K = calloc((size_t)a.N * a.N, sizeof(float));
    float *L = calloc((size_t)a.N * a.N, sizeof(float));
    a.x = malloc((size_t)a.N * n * a.D * sizeof(float));
    a.xn = malloc((size_t)a.N * n * a.D * sizeof(float));
    a.k = malloc((size_t)a.N * n * a.dkv * sizeof(float));
    enum kvs_status st = KVS_OK;
    if (!H || !K || !L || !a.x || !a.xn || !a.k) goto oom;
    struct kvs_method_config cfg;
    kvs_method_parse(&cfg, "full", err, errlen);
    st = kvs_press_full_create(&press, m, &cfg, n, err, errlen);
    if (st != KVS_OK) goto done;
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = n;
    cp.n_threads = n_threads;
    st = kvs_ctx_new(&ctx, m, press, &cp, err, errlen);
    if (st != KVS_OK) goto done;
    kvs_ctx_set_hook(ctx, sim_hook, &a);
    st = kvs_ctx_eval(ctx, ids, n, NULL);
    if (st != KVS_OK) {
        kvs_seterr(err, errlen, "similarity: %s", kvs_ctx_error(ctx));
        goto done;
    }
    for (int i = 0; i < a.N; i++)
        for (int j = 0; j < a.N; j++) {
            if (j < i) {
                H[i * a.N + j] = H[j * a.N + i];
                K[i * a.N + j] = K[j * a.N + i];
                continue;
            }
            H[i * a.N + j] = mean_cos(a.x + (size_t)i * n * a.D, a.x + (size_t)j * n * a.D, n, a.D);
            K[i * a.N + j] = mean_cos(a.k + (size_t)i * n * a.dkv, a.k + (size_t)j * n * a.dkv, n, a.dkv);
        }
    for (int i = 0; i < a.N * a.N; i++) L[i] = NAN;
    if (f) {
        int rmax = 0;
        for (uint32_t g = 0; g < f->n_groups; g++) rmax = KVS_MAX(rmax, (int)rank[g]);
        lat = malloc((size_t)f->group_size * n * rmax * sizeof(float));
        if (!lat) goto oom;
        for (uint32_t g = 0; g < f->n_groups; g++) {
            int r = (int)rank[g], nl = (int)f->g_nl[g];
            for (int l = 0; l < nl; l++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, a.D, 1.0f,
                            a.xn + (size_t)(f->g_l0[g] + l) * n * a.D, a.D, f->A[g], a.D, 0.0f,
                            lat + (size_t)l * n * r, r);
            for (int i = 0; i < nl; i++)
                for (int j = 0; j < nl; j++) {
                    int li = (int)f->g_l0[g] + i, lj = (int)f->g_l0[g] + j;
                    L[li * a.N + lj] = mean_cos(lat + (size_t)i * n * r, lat + (size_t)j * n * r, n, r);
                }
        }
    }
    *hidden = H;
    *keys = K;
    *latent = L;
    H = K = L = NULL;
    goto done;
oom:
    kvs_seterr(err, errlen, "similarity: out of memory");
    st = KVS_ERR_NOMEM;
done:
    kvs_ctx_delete(ctx);
    kvs_press_delete(press);
    free(H); free(K); free(L); free(lat);
    free(a.x); free(a.xn); free(a.k);
    return st;
}
