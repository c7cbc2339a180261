/* Budgets panel: per group its rank against the group's maximum and its merged fraction next to
 * what a uniform allocation of the same total would give, its similarity score beside the merged
 * share, the share of spectral energy its rank keeps, and the tokens each layer keeps; a zero
 * budget or zero kept tokens is drawn in red; for latent presses, the achieved CR split into what
 * rank, merging, quantization and eviction saved. A second mode (key d) draws each group's singular
 * values and cumulative energy with the chosen rank marked. Draws only from run, step and
 * spectrum records. */
#include "view.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Share of group G's energy (sum of squared singular values) in its first RANK values; false when
 * no spectrum record for G is held. */
static bool energy_kept(const struct kvs_history *h, uint32_t g, uint32_t rank, double *frac)
{
    if (g >= KVS_MAX_GROUPS || !h->spectrum[g]) return false;
    const struct kvs_rec_matrix *m = &h->spectrum[g]->u.matrix;
    uint64_t n = (uint64_t)m->rows * m->cols;
    double all = 0, kept = 0;
    for (uint64_t i = 0; i < n; i++) {
        double s = m->v[i];
        if (!isfinite(s)) return false;
        all += s * s;
        if (i < rank) kept += s * s;
    }
    if (all <= 0) return false;
    *frac = kept / all;
    return true;
}

/* The largest rank group G can have: the number of singular values its spectrum record holds, else
 * min(rows, cols) of its stacked weights (2 * layers * d_kv x n_embd); 0 when unknown. */
static uint32_t rank_max(const struct kvs_history *h, const struct kvs_rec_run *run, uint32_t g, uint32_t nl)
{
    if (g < KVS_MAX_GROUPS && h->spectrum[g]) {
        const struct kvs_rec_matrix *m = &h->spectrum[g]->u.matrix;
        return m->rows * m->cols;
    }
    if (!run || !run->group_size || !run->n_embd) return 0;
    uint32_t l0 = g * run->group_size;
    if (l0 >= nl) return 0;
    uint32_t layers = nl - l0 < run->group_size ? nl - l0 : run->group_size;
    uint64_t rows = 2ull * layers * run->n_head_kv * run->head_dim;
    return rows && rows < run->n_embd ? (uint32_t)rows : rows ? run->n_embd : 0;
}

/* Spectrum mode: two lines per group, its singular values (log scale, resampled to the width) and
 * the cumulative energy they keep, the chosen rank marked on both. */
static void spectrum_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st,
                          const struct kvs_rec_step *s, int y)
{
    const struct kvs_theme *t = v->t;
    int ye = r.y + r.h;
    uint32_t ng = 0;
    for (uint32_t g = 0; g < KVS_MAX_GROUPS; g++)
        if (v->h->spectrum[g]) ng = g + 1;
    if (!ng) {
        kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "spectrum: n/a (no SVD spectrum records in this run)");
        return;
    }
    kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "spectrum per group: %s log singular values, cum energy; %s chosen rank",
                 KVS_G(t, "▁▃▅▇", "_-=#"), KVS_G(t, "┃", "|"));
    int rows = (ye - y) / 2;
    if (rows < 1) return;
    if (st->scroll > (int)ng - rows) st->scroll = (int)ng - rows;
    if (st->scroll < 0) st->scroll = 0;
    const int lab = 18;
    int W = r.w - lab;
    if (W < 4) return;
    float *buf = malloc(sizeof(float) * (size_t)W);
    if (!buf) return;
    for (int i = 0; i < rows && y + 1 < ye; i++) {
        uint32_t g = (uint32_t)(i + st->scroll);
        if (g >= ng) break;
        const struct kvs_record *rec = v->h->spectrum[g];
        if (!rec) {
            kvs_w_printf(w, t, y, r.x, r.w, KVS_C_NA, "g%-2u spectrum n/a", g);
            y += 2;
            continue;
        }
        const struct kvs_rec_matrix *m = &rec->u.matrix;
        uint32_t n = m->rows * m->cols;
        bool rank_ok = s && (s->valid & KVS_VALID_BUDGET) && g < s->n_groups;
        uint32_t rank = rank_ok ? s->group_rank[g] : 0;
        double all = 0, kept = 0, smax = 0, smin = INFINITY;
        for (uint32_t k = 0; k < n; k++) {
            double x = isfinite(m->v[k]) ? m->v[k] : 0;
            all += x * x;
            if (k < rank) kept += x * x;
            if (x > smax) smax = x;
            if (x > 0 && x < smin) smin = x;
        }
        char e[16];
        kvs_w_printf(w, t, y, r.x, lab, KVS_C_TEXT, "g%-2u r ", g);
        kvs_w_printf(w, t, y, r.x + 6, lab - 6, rank_ok && rank == 0 ? KVS_C_BAD : KVS_C_TEXT, "%s/%u",
                     rank_ok ? (snprintf(e, sizeof e, "%u", rank), e) : "n/a", n);
        kvs_w_printf(w, t, y + 1, r.x, lab, KVS_C_DIM, "    energy %s",
                     kvs_fmt_f(e, sizeof e, rank_ok && all > 0, "%5.1f%%", all > 0 ? 100.0 * kept / all : 0));
        /* singular values on a log scale from the smallest positive to the largest */
        float lo = smin < INFINITY ? (float)log10(smin) : 0, hi = smax > 0 ? (float)log10(smax) : 1;
        double cum = 0;
        uint32_t k = 0;
        float *cbuf = malloc(sizeof(float) * (size_t)W);
        for (int j = 0; j < W; j++) {
            uint32_t k0 = (uint32_t)((uint64_t)j * n / (uint32_t)W), k1 = (uint32_t)((uint64_t)(j + 1) * n / (uint32_t)W);
            if (k1 <= k0) k1 = k0 + 1;
            if (k1 > n) k1 = n;
            float x = k0 < n && isfinite(m->v[k0]) && m->v[k0] > 0 ? (float)log10(m->v[k0]) : NAN;
            buf[j] = k0 < n ? x : NAN;
            for (; k < k1; k++) { double q = isfinite(m->v[k]) ? m->v[k] : 0; cum += q * q; }
            if (cbuf) cbuf[j] = k0 < n && all > 0 ? (float)(cum / all) : NAN;
        }
        kvs_w_spark(w, t, y, r.x + lab, buf, W, lo, hi, KVS_C_BAR_HELD);
        if (cbuf) kvs_w_spark(w, t, y + 1, r.x + lab, cbuf, W, 0, 1, KVS_C_BAR_ALLOC);
        free(cbuf);
        if (rank_ok && n) {
            kvs_w_mark(w, t, y, r.x + lab, W, (double)rank / n, KVS_C_BAR_REF);
            kvs_w_mark(w, t, y + 1, r.x + lab, W, (double)rank / n, KVS_C_BAR_REF);
        }
        y += 2;
    }
    free(buf);
}

/* The achieved CR split by stage: each part is the bytes that stage saved over the full fp16 cache,
 * as a share of it, so the parts add up to the achieved CR. A stage that costs bytes (latents
 * larger than K+V) shows negative, in the warning colour. */
static void split_draw(WINDOW *w, const struct kvs_theme *t, struct kvs_rect r, int y, const struct kvs_rec_step *s)
{
    static const char *names[4] = {"rank", "merge", "quant", "evict"};
    const int64_t parts[4] = {s->saved_rank, s->saved_merge, s->saved_quant, s->saved_evict};
    double full = (double)s->bytes_full;
    bool narrow = r.w < 60; /* "CR 0.92 = rank -0.11 + merge 0.32 + quant 0.06 + evict 0.64" is 59 */
    int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, narrow ? "CR %.2f=" : "CR %.2f =", 1.0 - (double)s->bytes_held / full);
    for (int i = 0; i < 4 && x < r.w; i++) {
        double f = (double)parts[i] / full;
        if (narrow) x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "%s%.1s", i ? "+" : "", names[i]);
        else x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "%s %s ", i ? " +" : "", names[i]);
        x += kvs_w_printf(w, t, y, r.x + x, r.w - x, parts[i] < 0 ? KVS_C_WARN : KVS_C_TEXT, "%.2f", f);
    }
}

static void bud_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 32;
    *min_h = 7;
}

static void bud_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_rec_run *run = kvs_view_run(v);
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y, ye = r.y + r.h;
    if (!run) { kvs_view_empty(w, r, v, "waiting for a run"); return; }
    {
        char cr[16];
        int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_TEXT, "%s", run->method);
        if (run->group_size) x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "  G=%u", run->group_size);
        if (run->rank_ratio > 0) x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, " r=%.2f", run->rank_ratio);
        kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "  target CR %s",
                     kvs_fmt_f(cr, sizeof cr, run->target_cr >= 0, "%.2f", run->target_cr));
        y++;
    }
    /* the plan the press chose: merged share, similarity floor, and why */
    if (y < ye && isfinite(run->plan_merge_share)) {
        char fl[16];
        int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "plan (%s): merge share %.2f  floor %s",
                             run->plan_profile ? "paper" : "tuned", run->plan_merge_share,
                             kvs_fmt_f(fl, sizeof fl, isfinite(run->plan_merge_floor), "%.2f", run->plan_merge_floor));
        if (run->plan_note[0]) kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_WARN, "  %s", run->plan_note);
        y++;
        /* why this plan: the candidates measured and their KL (the chosen one starred) */
        if (y < ye && run->plan_why[0]) kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "why: %s", run->plan_why);
    }
    if (y >= ye) return;
    if (!s) { kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "no steps yet"); return; }
    if (y < ye && (s->valid & KVS_VALID_SPLIT) && (s->valid & KVS_VALID_BYTES) && s->bytes_full) {
        split_draw(w, t, r, y, s);
        y++;
    }
    if (y >= ye) return;
    if (st->mode == 1) { spectrum_draw(w, r, v, st, s, y); return; }
    bool budget_ok = (s->valid & KVS_VALID_BUDGET) && s->n_groups > 0;
    bool kept_ok = (s->valid & (KVS_VALID_BUDGET | KVS_VALID_BYTES)) && s->n_layer > 0;
    uint32_t ng = s->n_groups < KVS_MAX_GROUPS ? s->n_groups : KVS_MAX_GROUPS;
    uint32_t nl = s->n_layer < KVS_MAX_LAYERS ? s->n_layer : KVS_MAX_LAYERS;
    int kept_rows = kept_ok ? 2 : 1;
    if (!budget_ok) {
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_NA, "group budgets: n/a (%s has none)", run->method);
    } else {
        /* uniform allocation: the same total rank and merged tokens spread evenly */
        double sum_rank = 0, sum_merged = 0, max_rank = 0;
        for (uint32_t g = 0; g < ng; g++) {
            sum_rank += s->group_rank[g];
            sum_merged += s->group_merged[g];
            if (s->group_rank[g] > max_rank) max_rank = s->group_rank[g];
        }
        double uni_rank = sum_rank / ng, uni_merged = sum_merged / ng;
        double scale = max_rank > uni_rank ? max_rank : uni_rank;
        if (scale <= 0) scale = 1;
        int rows = ye - y - kept_rows - 1;
        if (rows < 1) rows = ye - y - 1;
        /* the energy column where a spectrum is held and the panel is wide enough */
        double e;
        bool energy = r.w >= 40 && energy_kept(v->h, 0, s->group_rank[0], &e);
        int ecol = r.w >= 56 ? 7 : 5; /* "99.1% " or, narrower, whole percents rounded down "99% " */
        if (rows >= 1) {
            const char *mk = t->utf8 ? "┃" : "|";
            if (energy && ecol == 5) /* narrow: the uniform marks as "|=value" */
                kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "grp layers rank/max %s=%.0f energy sim merged %s=%.0f%%", mk,
                             uni_rank, mk, uni_merged * 100);
            else
                kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "grp layers  rank/max (%s uniform %.0f)%s  sim  merged (%s %.0f%%)",
                             mk, uni_rank, energy ? "  energy" : "", mk, uni_merged * 100);
            y++;
        }
        if (st->scroll > (int)ng - rows) st->scroll = (int)ng - rows;
        if (st->scroll < 0) st->scroll = 0;
        bool sim_ok = (s->valid & KVS_VALID_GROUP_SIM) != 0;
        int bw = (r.w - 40 - (energy ? ecol : 0)) / 2;
        if (bw < 3) bw = 0;
        for (int i = 0; i < rows && y < ye; i++) {
            uint32_t g = (uint32_t)(i + st->scroll);
            if (g >= ng) break;
            uint32_t G = run->group_size ? run->group_size : 1;
            uint32_t l0 = g * G, l1 = l0 + G - 1;
            if (l1 >= nl && nl) l1 = nl - 1;
            int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_TEXT, "g%-2u %2u-%-2u ", g, l0, l1);
            bool zero = s->group_rank[g] == 0;
            x += kvs_w_printf(w, t, y, r.x + x, r.w - x, zero ? KVS_C_BAD : KVS_C_TEXT, "%4u", s->group_rank[g]);
            /* the rank against the most this group's SVD can keep; the bar is drawn to that scale */
            uint32_t rmax = rank_max(v->h, run, g, nl);
            {
                char mb[16];
                snprintf(mb, sizeof mb, rmax ? "/%-4u " : "/?    ", rmax);
                x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_DIM, mb);
            }
            if (bw) {
                double sc = rmax ? rmax : scale;
                kvs_w_bar(w, t, y, r.x + x, bw, s->group_rank[g] / sc, zero ? KVS_C_BAD : KVS_C_BAR_HELD);
                kvs_w_mark(w, t, y, r.x + x, bw, uni_rank / sc, KVS_C_BAR_REF);
                x += bw + 1;
            }
            char b[16];
            if (energy) {
                double eg;
                bool ok = energy_kept(v->h, g, s->group_rank[g], &eg);
                if (ok && ecol == 7) snprintf(b, sizeof b, "%5.1f%% ", eg * 100.0);
                else if (ok) snprintf(b, sizeof b, "%3.0f%% ", floor(eg * 100.0));
                x += kvs_w_text(w, t, y, r.x + x, r.w - x, ok ? KVS_C_TEXT : KVS_C_NA,
                                ok ? b : ecol == 7 ? "   n/a " : " n/a ");
            }
            /* the group's similarity score beside its merged share: the budget follows it */
            x += kvs_w_text(w, t, y, r.x + x, r.w - x, sim_ok && isfinite(s->group_sim[g]) ? KVS_C_TEXT : KVS_C_NA,
                            sim_ok && isfinite(s->group_sim[g]) ? kvs_fmt_f(b, sizeof b, true, "%4.2f ", s->group_sim[g])
                                                                : " n/a ");
            float mf = s->group_merged[g];
            x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, kvs_fmt_f(b, sizeof b, true, "%3.0f%% ", mf * 100.0));
            if (bw && x + bw <= r.w) {
                kvs_w_bar(w, t, y, r.x + x, bw, mf, KVS_C_BAR_ALLOC);
                kvs_w_mark(w, t, y, r.x + x, bw, uni_merged, KVS_C_BAR_REF);
            }
            y++;
        }
    }
    if (y >= ye) return;
    if (!kept_ok) { kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "kept tokens per layer: n/a"); return; }
    uint32_t kmin = UINT32_MAX, kmax = 0, zeros = 0;
    for (uint32_t l = 0; l < nl; l++) {
        uint32_t k = s->layer_kept[l];
        if (k < kmin) kmin = k;
        if (k > kmax) kmax = k;
        if (k == 0) zeros++;
    }
    int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "kept/layer %u..%u of %u", kmin, kmax, s->n_ctx);
    if (zeros) kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_BAD, "  %u layer%s keep 0", zeros, zeros > 1 ? "s" : "");
    y++;
    if (y >= ye) return;
    /* one cell per layer: height = kept / context; zero in red */
    float top = kmax > s->n_ctx ? (float)kmax : (float)s->n_ctx;
    if (top <= 0) top = 1;
    for (uint32_t l = 0; l < nl && (int)l < r.w; l++) {
        uint32_t k = s->layer_kept[l];
        if (k == 0) {
            kvs_w_glyph(w, t, y, r.x + (int)l, KVS_C_BAD, "0", '0');
        } else {
            float val = (float)k;
            kvs_w_spark(w, t, y, r.x + (int)l, &val, 1, 0, top, KVS_C_BAR_HELD);
        }
    }
}

static bool bud_key(struct kvs_panel_state *st, int key)
{
    if (key == 'd') { st->mode = !st->mode; st->scroll = 0; return true; }
    return kvs_view_scroll_key(st, key);
}

const struct kvs_panel kvs_panel_budgets = {
    .name = "budgets",
    .title = "Budgets",
    .layout = bud_layout,
    .draw = bud_draw,
    .key = bud_key,
    .help = "Up/Down\tscroll groups\n"
            "d\tgroups / singular-value spectrum\n"
            "\tenergy: spectrum share the rank keeps\n"
            "\tsim: group similarity score; rank/max: of the SVD\n",
};
