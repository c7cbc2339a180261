/* The six workshop lessons (see lesson.h): a table of steps, the text of each step filled from
 * record fields, and the overlay that draws it word-wrapped beside the panels. A number the
 * records do not hold is written "n/a" (or the step says what it is waiting for), never invented.
 * Depends on curses, views/ and engine/record.h only; knows nothing of live or replay. */
#include "lesson.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct lesson_def {
    const char *title;
    const char *summary;
    int n_steps;
    int panel[4];
    int sim[4];
};

static const struct lesson_def lessons[KVS_LESSON_COUNT] = {
    {"Why the KV cache dominates memory",
     "bytes per token, growth with context, projected to a 7-8B model at 8K-128K tokens",
     3, {KVS_PANEL_MEMORY, KVS_PANEL_MEMORY, KVS_PANEL_MEMORY}, {0, 0, 0}},
    {"Adjacent layers: similar hidden states, dissimilar keys",
     "layer x layer cosine similarity of hidden states and of keys",
     3, {KVS_PANEL_SIMILARITY, KVS_PANEL_SIMILARITY, KVS_PANEL_SIMILARITY},
     {KVS_MAT_SIM_HIDDEN, KVS_MAT_SIM_KEYS, KVS_MAT_SIM_HIDDEN}},
    {"Sharing A by SVD makes the latents similar",
     "latent vs key similarity, singular values and the energy each rank keeps",
     3, {KVS_PANEL_SIMILARITY, KVS_PANEL_BUDGETS, KVS_PANEL_MEMORY}, {KVS_MAT_SIM_LATENT, 0, 0}},
    {"Merging and the similarity-driven budget",
     "per group: similarity next to merged share; which tokens may merge",
     3, {KVS_PANEL_BUDGETS, KVS_PANEL_TOKENS, KVS_PANEL_MEMORY}, {0, 0, 0}},
    {"Quality against memory as the target CR rises",
     "KL against achieved CR for several methods, one run each",
     2, {KVS_PANEL_QUALITY, KVS_PANEL_QUALITY}, {0, 0}},
    {"Composing with quantization and eviction",
     "commonkv+quant+snapkv: where each saved byte came from",
     2, {KVS_PANEL_BUDGETS, KVS_PANEL_QUALITY}, {0, 0}},
};

const char *kvs_lesson_title(int n) { return n >= 1 && n <= KVS_LESSON_COUNT ? lessons[n - 1].title : NULL; }
const char *kvs_lesson_summary(int n) { return n >= 1 && n <= KVS_LESSON_COUNT ? lessons[n - 1].summary : NULL; }
int kvs_lesson_steps(int n) { return n >= 1 && n <= KVS_LESSON_COUNT ? lessons[n - 1].n_steps : 0; }

int kvs_lesson_panel(int n, int s)
{
    if (n < 1 || n > KVS_LESSON_COUNT) return -1;
    const struct lesson_def *d = &lessons[n - 1];
    return s >= 0 && s < d->n_steps ? d->panel[s] : -1;
}

int kvs_lesson_sim_kind(int n, int s)
{
    if (n < 1 || n > KVS_LESSON_COUNT) return 0;
    const struct lesson_def *d = &lessons[n - 1];
    return s >= 0 && s < d->n_steps ? d->sim[s] : 0;
}

void kvs_lesson_init(struct kvs_lesson_state *ls, int n)
{
    memset(ls, 0, sizeof *ls);
    ls->lesson = n;
}

void kvs_lesson_observe(struct kvs_lesson_state *ls, const struct kvs_record *r)
{
    if (r->type == KVS_REC_RUN) {
        ls->n_runs++;
    } else if (r->type == KVS_REC_QUALITY && ls->n_pts < KVS_LESSON_POINTS) {
        const struct kvs_rec_quality *q = &r->u.quality;
        struct kvs_lesson_point *p = &ls->pts[ls->n_pts++];
        snprintf(p->method, sizeof p->method, "%s", q->method);
        p->cr_target = q->target_cr;
        p->cr_achieved = q->achieved_cr;
        p->kl = q->kl;
        p->top1 = q->top1;
    }
}

bool kvs_lesson_next(struct kvs_lesson_state *ls)
{
    if (ls->step >= kvs_lesson_steps(ls->lesson)) return false;
    ls->step++;
    return true;
}

bool kvs_lesson_prev(struct kvs_lesson_state *ls)
{
    if (ls->step <= 0) return false;
    ls->step--;
    return true;
}

/* ---- text building ---- */

struct out {
    char *p;
    size_t n, len;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    if (o->len + 1 >= o->n) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(o->p + o->len, o->n - o->len, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    o->len += (size_t)k;
    if (o->len >= o->n) o->len = o->n - 1;
}

static const char *bytes(char *b, size_t n, double v)
{
    if (!(v >= 0) || !isfinite(v)) return snprintf(b, n, "n/a"), b;
    return kvs_fmt_bytes(b, n, (uint64_t)llround(v));
}

/* Mean, min and max of M[l][l+1] over the layer pairs that are finite; returns the count. With
 * WITHIN set (G > 0), only pairs inside a group of G layers. */
static int adjacent(const struct kvs_record *m, uint32_t within, double *mean, double *lo, double *hi, int *lo_l, int *hi_l)
{
    *mean = NAN;
    if (!m) return 0;
    const struct kvs_rec_matrix *x = &m->u.matrix;
    if (x->rows != x->cols || x->rows < 2) return 0;
    double s = 0;
    int n = 0;
    for (uint32_t l = 0; l + 1 < x->rows; l++) {
        if (within && (l + 1) % within == 0) continue;
        float c = x->v[(size_t)l * x->cols + l + 1];
        if (!isfinite(c)) continue;
        if (!n || c < *lo) { *lo = c; if (lo_l) *lo_l = (int)l; }
        if (!n || c > *hi) { *hi = c; if (hi_l) *hi_l = (int)l; }
        s += c;
        n++;
    }
    if (n) *mean = s / n;
    return n;
}

static float mat_at(const struct kvs_record *m, uint32_t i, uint32_t j)
{
    if (!m || i >= m->u.matrix.rows || j >= m->u.matrix.cols) return NAN;
    return m->u.matrix.v[(size_t)i * m->u.matrix.cols + j];
}

/* Share of the squared singular values of group G's spectrum held by the first R. */
static double energy_kept(const struct kvs_history *h, uint32_t g, uint32_t r, uint32_t *n_sv)
{
    *n_sv = 0;
    if (g >= KVS_MAX_GROUPS || !h->spectrum[g]) return NAN;
    const struct kvs_rec_matrix *x = &h->spectrum[g]->u.matrix;
    size_t n = (size_t)x->rows * x->cols;
    double tot = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        double s2 = (double)x->v[i] * x->v[i];
        if (!isfinite(s2)) continue;
        tot += s2;
        if (i < r) kept += s2;
    }
    *n_sv = (uint32_t)n;
    return tot > 0 ? kept / tot : NAN;
}

static void lesson1(struct out *o, int s, const struct kvs_rec_run *run, const struct kvs_rec_step *st)
{
    uint64_t bpt = kvs_lesson_kv_bytes_per_token(run->n_layer, run->n_head_kv, run->head_dim);
    char b1[32], b2[32], b3[32];
    if (s == 0) {
        put(o, "Every token the model has seen keeps a key and a value in every layer, for every KV head.\n");
        put(o, "%s: %u layers x %u KV heads x %u dims x 2 (K and V) x 2 bytes (fp16) = %llu bytes per token.\n",
            run->model, run->n_layer, run->n_head_kv, run->head_dim, (unsigned long long)bpt);
        if (st && (st->valid & KVS_VALID_BYTES) && st->n_ctx)
            put(o, "Measured now: a full cache of %u tokens holds %s = %.0f bytes per token.\n", st->n_ctx,
                bytes(b1, sizeof b1, (double)st->bytes_full), (double)st->bytes_full / st->n_ctx);
        else
            put(o, "Measured: waiting for the first step.\n");
        return;
    }
    if (s == 1) {
        put(o, "The cache grows linearly with context; the weights do not grow at all.\n");
        if (st && (st->valid & KVS_VALID_BYTES))
            put(o, "Now: %u tokens, full cache %s, weights %s.\n", st->n_ctx, bytes(b1, sizeof b1, (double)st->bytes_full),
                bytes(b2, sizeof b2, (double)run->model_bytes));
        double at_max = (double)bpt * run->n_ctx_max;
        put(o, "At this run's context limit of %u tokens: %s, %.2fx the weights.\n", run->n_ctx_max,
            bytes(b3, sizeof b3, at_max), run->model_bytes ? at_max / (double)run->model_bytes : NAN);
        if (bpt && run->model_bytes)
            put(o, "The cache outgrows the weights from %.0f tokens on.\n", ceil((double)run->model_bytes / (double)bpt));
        return;
    }
    uint64_t big = kvs_lesson_kv_bytes_per_token(KVS_LESSON_BIG_LAYERS, KVS_LESSON_BIG_KV_HEADS, KVS_LESSON_BIG_HEAD_DIM);
    double w = KVS_LESSON_BIG_PARAMS * 2.0;
    put(o, "The same arithmetic for Llama-3-8B (%u layers, %u KV heads x %u, fp16): %llu bytes per token, %.1fx this model's %llu.\n",
        KVS_LESSON_BIG_LAYERS, KVS_LESSON_BIG_KV_HEADS, KVS_LESSON_BIG_HEAD_DIM, (unsigned long long)big,
        bpt ? (double)big / (double)bpt : NAN, (unsigned long long)bpt);
    put(o, "Weights (%.2fe9 params, fp16): %s.\n", KVS_LESSON_BIG_PARAMS / 1e9, bytes(b1, sizeof b1, w));
    static const uint32_t ctx[] = {8192, 32768, 131072};
    static const uint32_t batch[] = {1, 8};
    for (size_t b = 0; b < 2; b++)
        for (size_t c = 0; c < 3; c++) {
            double kv = (double)big * ctx[c] * batch[b];
            put(o, "  %3uK tokens x batch %u: %s KV = %.2fx the weights\n", ctx[c] / 1024, batch[b], bytes(b1, sizeof b1, kv),
                kv / w);
        }
    put(o, "Serving long contexts to many users is a KV cache problem: that is what CommonKV compresses.\n");
}

static void lesson2(struct out *o, int s, const struct kvs_history *h)
{
    const struct kvs_record *hid = h->mat[KVS_MAT_SIM_HIDDEN], *key = h->mat[KVS_MAT_SIM_KEYS];
    double mh = NAN, lh = 0, hh = 0, mk = NAN, lk = 0, hk = 0;
    int hl = 0, hi_l = 0;
    int nh = adjacent(hid, 0, &mh, &lh, &hh, &hl, &hi_l);
    int nk = adjacent(key, 0, &mk, &lk, &hk, NULL, NULL);
    if (!nh || !nk) { put(o, "Waiting for the similarity matrices (they come after the prompt).\n"); return; }
    if (s == 0) {
        put(o, "Each cell is the cosine similarity of two layers' inputs (hidden states after RMSNorm), averaged over prompt tokens.\n");
        put(o, "Adjacent layers (l, l+1), %d pairs: mean %.3f, from %.3f to %.3f.\n", nh, mh, lh, hh);
        put(o, "The residual stream changes a little per layer, so neighbours see nearly the same input.\n");
        return;
    }
    if (s == 1) {
        put(o, "The same cells for the keys each layer computes from those inputs (pre-RoPE).\n");
        put(o, "Adjacent pairs: mean %.3f, from %.3f to %.3f (hidden states: %.3f).\n", mk, lk, hk, mh);
        put(o, "Each layer's W_k projects into its own basis: similar inputs, dissimilar keys. Sharing K/V between layers directly throws information away.\n");
        return;
    }
    put(o, "The most similar neighbours: layers %d and %d, hidden %.3f, keys %.3f.\n", hi_l, hi_l + 1,
        (double)mat_at(hid, (uint32_t)hi_l, (uint32_t)hi_l + 1), (double)mat_at(key, (uint32_t)hi_l, (uint32_t)hi_l + 1));
    put(o, "The least similar: layers %d and %d, hidden %.3f, keys %.3f.\n", hl, hl + 1,
        (double)mat_at(hid, (uint32_t)hl, (uint32_t)hl + 1), (double)mat_at(key, (uint32_t)hl, (uint32_t)hl + 1));
    put(o, "Next lesson: give a group of layers one shared projection, and their caches become similar.\n");
}

static void lesson3(struct out *o, int s, const struct kvs_history *h, const struct kvs_rec_run *run)
{
    uint32_t G = run->group_size, d_kv = run->n_head_kv * run->head_dim;
    if (s == 0) {
        double ml = NAN, ll = 0, hl = 0, mk = NAN, lk = 0, hk = 0;
        int nl = adjacent(h->mat[KVS_MAT_SIM_LATENT], G, &ml, &ll, &hl, NULL, NULL);
        int nk = adjacent(h->mat[KVS_MAT_SIM_KEYS], G, &mk, &lk, &hk, NULL, NULL);
        if (!G || !nl) { put(o, "Waiting for the latent similarity matrix (a commonkv run sends it after the prompt).\n"); return; }
        put(o, "CommonKV stacks the K and V weights of %u adjacent layers and takes one SVD: A (rank x %u) is shared by the group, each layer keeps its own B.\n",
            G, run->n_embd);
        put(o, "Each layer caches c = A x: %u numbers per token instead of K and V.\n", run->group_rank[0]);
        put(o, "Adjacent layers inside a group, %d pairs: latents %.3f (%.3f to %.3f); their keys: %.3f.\n", nl, ml, ll, hl,
            nk ? mk : NAN);
        put(o, "Same inputs through the same A: the latents agree where the keys did not.\n");
        return;
    }
    if (s == 1) {
        put(o, "Singular values of each group's stacked weights (%u x %u). Rank r keeps the energy sum(s_i^2, i<r)/sum(s_i^2):\n",
            2 * G * d_kv, run->n_embd);
        int shown = 0;
        for (uint32_t g = 0; g < run->n_groups && g < KVS_MAX_GROUPS; g++) {
            uint32_t nsv = 0;
            double e = energy_kept(h, g, run->group_rank[g], &nsv);
            if (!nsv) continue;
            put(o, "  group %u (layers %u-%u): rank %u of %u keeps %.1f%%\n", g, g * G,
                (g + 1) * G - 1 < run->n_layer ? (g + 1) * G - 1 : run->n_layer - 1, run->group_rank[g], nsv, 100 * e);
            shown++;
        }
        if (!shown) put(o, "  waiting for the spectra.\n");
        return;
    }
    uint32_t r = run->group_rank[0];
    char b1[32], b2[32];
    put(o, "Bytes per token and layer: K+V in fp16 = 2 x %u x 2 = %u B; an unmerged latent of rank %u = %u B (%s).\n", d_kv,
        4 * d_kv, r, 2 * r, 2 * r > 4 * d_kv ? "larger" : "smaller");
    const struct kvs_rec_step *st = h->n_steps ? kvs_history_step(h, h->n_steps - 1) : NULL;
    if (st && (st->valid & KVS_VALID_BYTES))
        put(o, "Measured at %u tokens: held %s of a full %s, CR %.3f.\n", st->n_ctx, bytes(b1, sizeof b1, (double)st->bytes_held),
            bytes(b2, sizeof b2, (double)st->bytes_full), st->cr_achieved);
    put(o, "Rank alone rarely wins much: the large saving comes from merging similar latents (lesson 4).\n");
}

/* Pearson correlation of X and Y over N entries (NaN when undefined). */
static double pearson(const float *x, const float *y, int n)
{
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    if (n < 2) return NAN;
    mx /= n;
    my /= n;
    double sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
    }
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

static void lesson4(struct out *o, int s, const struct kvs_rec_run *run, const struct kvs_rec_step *st)
{
    if (!st || !(st->valid & KVS_VALID_BUDGET) || !st->n_groups) { put(o, "Waiting for a step with budgets.\n"); return; }
    uint32_t ng = st->n_groups < KVS_MAX_GROUPS ? st->n_groups : KVS_MAX_GROUPS;
    if (s == 0) {
        put(o, "Score each (group, token) by the cosine of the group's first and last layer latents. Under the target CR (%.2f), the least similar slots stay unmerged.\n",
            (double)run->target_cr);
        put(o, "  group  similarity  merged\n");
        for (uint32_t g = 0; g < ng; g++)
            put(o, "  %5u  %10.3f  %5.1f%%\n", g, (double)st->group_sim[g], 100.0 * st->group_merged[g]);
        put(o, "Correlation of similarity and merged share over %u groups: %.2f.\n", ng,
            pearson(st->group_sim, st->group_merged, (int)ng));
        return;
    }
    if (s == 1) {
        uint32_t protect = run->sinks + run->recent;
        uint32_t eligible = st->n_ctx > protect ? st->n_ctx - protect : 0;
        put(o, "Which tokens may merge: never the first %u (attention sinks) nor the last %u (recent window). Of %u tokens, %u are eligible.\n",
            run->sinks, run->recent, st->n_ctx, eligible);
        for (uint32_t g = 0; g < ng; g++)
            put(o, "  group %u: %.0f tokens merged (%.0f%% of the eligible)\n", g, (double)st->group_merged[g] * st->n_ctx,
                eligible ? 100.0 * st->group_merged[g] * st->n_ctx / eligible : 0.0);
        put(o, "A merged token is stored once per group and decoded by every layer with its own B. The trace records the share per group, not the token ids.\n");
        return;
    }
    char b1[32], b2[32], b3[32];
    put(o, "What that buys, at %u tokens: full fp16 %s, held %s, allocated %s.\n", st->n_ctx,
        bytes(b1, sizeof b1, (double)st->bytes_full), bytes(b2, sizeof b2, (double)st->bytes_held),
        bytes(b3, sizeof b3, (double)st->bytes_alloc));
    put(o, "Target CR %.3f, achieved %.3f (1 - held/full).\n", (double)st->cr_target, (double)st->cr_achieved);
    if (st->valid & KVS_VALID_QUALITY)
        put(o, "Against the full cache on the same tokens: KL %.3f, top-1 agreement %.1f%%.\n", (double)st->kl, 100.0 * st->top1);
}

static void lesson5(struct out *o, int s, const struct kvs_lesson_state *ls)
{
    if (!ls->n_pts) { put(o, "Waiting for the first run to finish (each run ends with its quality record).\n"); return; }
    if (s == 0) {
        put(o, "One run per method and target CR on the same text, each measured against the full cache on the same tokens.\n");
        put(o, "  method        target  achieved  KL     top-1\n");
        for (int i = 0; i < ls->n_pts; i++) {
            const struct kvs_lesson_point *p = &ls->pts[i];
            put(o, "  %-12.12s  %6.2f  %8.3f  %5.3f  %5.1f%%\n", p->method, (double)p->cr_target, (double)p->cr_achieved,
                (double)p->kl, 100.0 * p->top1);
        }
        return;
    }
    put(o, "Per method, the run that saved the most memory:\n");
    for (int i = 0; i < ls->n_pts; i++) {
        bool best = true;
        for (int j = 0; j < ls->n_pts; j++) {
            if (strcmp(ls->pts[j].method, ls->pts[i].method)) continue;
            if (ls->pts[j].cr_achieved > ls->pts[i].cr_achieved || (j < i && ls->pts[j].cr_achieved == ls->pts[i].cr_achieved))
                best = false;
        }
        if (best)
            put(o, "  %-12.12s CR %.3f at KL %.3f\n", ls->pts[i].method, (double)ls->pts[i].cr_achieved, (double)ls->pts[i].kl);
    }
    int lo = -1;
    for (int i = 0; i < ls->n_pts; i++)
        if (ls->pts[i].cr_achieved >= 0.5f && (lo < 0 || ls->pts[i].kl < ls->pts[lo].kl)) lo = i;
    if (lo >= 0)
        put(o, "Lowest KL at CR >= 0.5: %s (target %.2f): KL %.3f at CR %.3f.\n", ls->pts[lo].method,
            (double)ls->pts[lo].cr_target, (double)ls->pts[lo].kl, (double)ls->pts[lo].cr_achieved);
    put(o, "%d runs seen so far.\n", ls->n_runs);
}

static void lesson6(struct out *o, int s, const struct kvs_history *h, const struct kvs_rec_run *run, const struct kvs_rec_step *st)
{
    if (!st || !(st->valid & KVS_VALID_BYTES) || !st->n_ctx) { put(o, "Waiting for a step with byte counts.\n"); return; }
    char b[5][32];
    if (s == 1) {
        put(o, "%s reached CR %.3f (target %.2f): it holds %s where the full cache holds %s.\n", run->method,
            (double)st->cr_achieved, (double)st->cr_target, bytes(b[0], 32, (double)st->bytes_held),
            bytes(b[1], 32, (double)st->bytes_full));
        const struct kvs_rec_quality *q = h->quality ? &h->quality->u.quality : NULL;
        if (q) put(o, "Quality over %u tokens: KL %.3f, top-1 agreement %.1f%%, perplexity %.2f.\n", q->n_tokens, (double)q->kl,
                   100.0 * q->top1, (double)q->ppl);
        else if (st->valid & KVS_VALID_QUALITY)
            put(o, "Quality so far: KL %.3f, top-1 agreement %.1f%%.\n", (double)st->kl, 100.0 * st->top1);
        else
            put(o, "Quality: n/a (the run was not compared with the full cache).\n");
        put(o, "Each stage multiplies: rank x merging x bits x kept tokens. Pushing one alone that far costs more quality.\n");
        return;
    }
    if (st->valid & KVS_VALID_SPLIT) {
        /* measured: the press counts what each stage saved (the Budgets panel's "CR = ..." line) */
        static const char *names[4] = {"rank", "merging", "quantization", "eviction"};
        const int64_t parts[4] = {st->saved_rank, st->saved_merge, st->saved_quant, st->saved_evict};
        double full = (double)st->bytes_full;
        put(o, "Where the saved bytes come from at %u tokens (full fp16 %s), as the press counted them:\n", st->n_ctx,
            bytes(b[0], 32, full));
        for (int i = 0; i < 4; i++)
            put(o, "  %-13s %+6.1f%%  %s%s\n", names[i], full > 0 ? 100.0 * (double)parts[i] / full : 0.0,
                parts[i] < 0 ? "-" : "", bytes(b[1], 32, fabs((double)parts[i])));
        put(o, "Sum: CR %.3f, held %s. The Budgets panel shows the same split under the plan.\n", (double)st->cr_achieved,
            bytes(b[2], 32, (double)st->bytes_held));
        return;
    }
    /* older traces: modelled stage by stage from the record fields; the measured total beside it */
    uint32_t L = st->n_layer < KVS_MAX_LAYERS ? st->n_layer : KVS_MAX_LAYERS, G = run->group_size ? run->group_size : 1;
    double n = st->n_ctx, full = (double)st->bytes_full, b_rank = 0, b_merge = 0, kept = 0;
    for (uint32_t g = 0; g * G < L && g < KVS_MAX_GROUPS; g++) {
        uint32_t in_g = L - g * G < G ? L - g * G : G;
        double r = st->group_rank[g] ? st->group_rank[g] : run->group_rank[g];
        double m = (st->valid & KVS_VALID_BUDGET) ? st->group_merged[g] : 0;
        b_rank += r * 2.0 * n * in_g;
        b_merge += r * 2.0 * n * (in_g * (1 - m) + m);
    }
    for (uint32_t l = 0; l < L; l++) kept += st->layer_kept[l];
    double kept_frac = L ? kept / (L * n) : 1;
    if (kept_frac > 1) kept_frac = 1;
    double bits = run->quant_bits ? run->quant_bits : 16;
    double b_quant = b_merge * bits / 16.0, b_evict = b_quant * kept_frac;
    put(o, "Where the saved bytes come from at %u tokens (full fp16 %s), stage by stage from the record fields:\n",
        st->n_ctx, bytes(b[0], 32, full));
    put(o, "  rank (latent %u of K+V %u)  %+6.1f%%\n", st->group_rank[0], 2 * run->n_head_kv * run->head_dim,
        100 * (full - b_rank) / full);
    put(o, "  merging                   %+6.1f%%\n", 100 * (b_rank - b_merge) / full);
    put(o, "  quantization (%2.0f bits)     %+6.1f%%\n", bits, 100 * (b_merge - b_quant) / full);
    put(o, "  eviction (%.0f%% kept)       %+6.1f%%\n", 100 * kept_frac, 100 * (b_quant - b_evict) / full);
    put(o, "Model: %s (CR %.3f). Measured held: %s (CR %.3f); the difference is bookkeeping: positions, scales, the fp16 recent window.\n",
        bytes(b[1], 32, b_evict), 1 - b_evict / full, bytes(b[2], 32, (double)st->bytes_held), (double)st->cr_achieved);
}

void kvs_lesson_text(const struct kvs_lesson_state *ls, const struct kvs_view_ctx *v, char *buf, size_t n)
{
    struct out o = {buf, n, 0};
    if (n) buf[0] = 0;
    int steps = kvs_lesson_steps(ls->lesson);
    if (!steps) { put(&o, "No lesson %d.\n", ls->lesson); return; }
    if (ls->step >= steps) {
        put(&o, "End of lesson %d: %s.\n", ls->lesson, lessons[ls->lesson - 1].title);
        if (ls->lesson < KVS_LESSON_COUNT)
            put(&o, "Next: kvscope lesson %d (%s). Left goes back; q quits.\n", ls->lesson + 1, lessons[ls->lesson].title);
        else
            put(&o, "That was the last lesson. Left goes back; q quits.\n");
        return;
    }
    const struct kvs_rec_run *run = kvs_view_run(v);
    if (!run) { put(&o, "Waiting for the run to start.\n"); return; }
    const struct kvs_rec_step *st = kvs_view_step(v);
    switch (ls->lesson) {
    case 1: lesson1(&o, ls->step, run, st); break;
    case 2: lesson2(&o, ls->step, v->h); break;
    case 3: lesson3(&o, ls->step, v->h, run); break;
    case 4: lesson4(&o, ls->step, run, st); break;
    case 5: lesson5(&o, ls->step, ls); break;
    default: lesson6(&o, ls->step, v->h, run, st); break;
    }
}

/* ---- drawing ---- */

/* Draws TEXT word-wrapped into R from row Y; lines starting with two spaces are kept as they are
 * (tables). Returns the next free row. */
static int wrap(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, int y, const char *text)
{
    const char *p = text;
    while (*p && y < r.y + r.h) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (nl ? 1 : 0);
        if (line[0] == ' ' && line[1] == ' ') {
            kvs_w_text(w, t, y++, r.x, r.w, KVS_C_TEXT, line);
            continue;
        }
        /* greedy word wrap by display cells */
        char *q = line;
        while (*q && y < r.y + r.h) {
            char row[512];
            size_t rl = 0;
            int cells = 0;
            char *last_sp = NULL;
            size_t last_rl = 0;
            while (q[rl] && rl + 1 < sizeof row) {
                row[rl] = q[rl];
                row[rl + 1] = 0;
                if ((q[rl] & 0xC0) != 0x80) cells++;
                if (cells > r.w) break;
                if (q[rl] == ' ') { last_sp = q + rl; last_rl = rl; }
                rl++;
            }
            if (q[rl] && cells > r.w && last_sp) rl = last_rl;
            row[rl] = 0;
            kvs_w_text(w, t, y++, r.x, r.w, KVS_C_TEXT, row);
            q += rl;
            while (*q == ' ') q++;
        }
        y++; /* a blank line between paragraphs */
    }
    return y;
}

/* KL against achieved CR, one letter per method, in R. */
static void plot(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, const struct kvs_lesson_state *ls)
{
    if (r.h < 5 || r.w < 20 || !ls->n_pts) return;
    double kmax = 0;
    for (int i = 0; i < ls->n_pts; i++)
        if (isfinite(ls->pts[i].kl) && ls->pts[i].kl > kmax) kmax = ls->pts[i].kl;
    if (kmax <= 0) kmax = 1;
    int ph = r.h - 2, pw = r.w - 8;
    kvs_w_printf(w, t, r.y, r.x, 8, KVS_C_DIM, "KL%5.2f", kmax);
    kvs_w_text(w, t, r.y + ph - 1, r.x, 8, KVS_C_DIM, "KL 0");
    for (int y = 0; y < ph; y++) kvs_w_text(w, t, r.y + y, r.x + 7, 1, KVS_C_DIM, "|");
    for (int x = 0; x < pw; x++) kvs_w_text(w, t, r.y + ph, r.x + 8 + x, 1, KVS_C_DIM, "-");
    kvs_w_text(w, t, r.y + ph + 1, r.x + 8, pw, KVS_C_DIM, "CR 0");
    kvs_w_text(w, t, r.y + ph + 1, r.x + 8 + pw - 4, 4, KVS_C_DIM, "1.0");
    for (int i = 0; i < ls->n_pts; i++) {
        const struct kvs_lesson_point *p = &ls->pts[i];
        if (!isfinite(p->kl) || !isfinite(p->cr_achieved)) continue;
        double cx = p->cr_achieved < 0 ? 0 : p->cr_achieved > 1 ? 1 : p->cr_achieved;
        int x = r.x + 8 + (int)lround(cx * (pw - 1));
        int y = r.y + ph - 1 - (int)lround(p->kl / kmax * (ph - 1));
        char c[2] = {p->method[0] ? p->method[0] : '?', 0};
        /* the method's letter, coloured per method by its first occurrence */
        int k = 0;
        for (int j = 0; j < i; j++)
            if (strcmp(ls->pts[j].method, p->method)) k++;
        kvs_w_text(w, t, y, x, 1, k % 2 ? KVS_C_GROUP_B : KVS_C_GROUP_A, c);
    }
}

void kvs_lesson_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const struct kvs_lesson_state *ls)
{
    const struct kvs_theme *t = v->t;
    if (kvs_rect_empty(r)) return;
    kvs_w_fill(w, t, r, KVS_C_TEXT);
    int steps = kvs_lesson_steps(ls->lesson);
    char title[160];
    if (ls->step < steps)
        snprintf(title, sizeof title, "Lesson %d - step %d/%d", ls->lesson, ls->step + 1, steps);
    else
        snprintf(title, sizeof title, "Lesson %d - end", ls->lesson);
    bool border = r.w >= 12 && r.h >= 4;
    if (border) kvs_w_box(w, t, r, title, true);
    struct kvs_rect in = border ? kvs_rect_inset(r, 1) : r;
    if (!border) kvs_w_text(w, t, in.y, in.x, in.w, KVS_C_FOCUS, title), in.y++, in.h--;
    if (in.h <= 0 || in.w <= 0) return;
    int y = in.y;
    const char *lt = kvs_lesson_title(ls->lesson);
    kvs_w_text(w, t, y++, in.x, in.w, KVS_C_TITLE, lt ? lt : "");
    if (ls->step < steps) {
        int p = kvs_lesson_panel(ls->lesson, ls->step);
        if (p >= 0 && p < KVS_PANEL_COUNT)
            kvs_w_printf(w, t, y++, in.x, in.w, KVS_C_FOCUS, "%s panel %d: %s", KVS_G(t, "◀", "<"), p + 1, kvs_panels[p]->title);
    }
    y++;
    char text[4096];
    kvs_lesson_text(ls, v, text, sizeof text);
    struct kvs_rect tr = {in.x, y, in.w, in.y + in.h - y};
    y = wrap(w, t, tr, y, text);
    if (ls->lesson == 5 && ls->step < steps) {
        struct kvs_rect pr = {in.x, y, in.w, in.y + in.h - 1 - y};
        if (pr.h > 10) pr.h = 10;
        plot(w, t, pr, ls);
    }
    kvs_w_text(w, t, in.y + in.h - 1, in.x, in.w, KVS_C_KEY,
               ls->step < steps ? "Space/Enter/Right next  Left back  q quit" : "Left back  q quit");
}
