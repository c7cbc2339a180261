/* Similarity panel: layer x layer cosine-similarity heat map (hidden states, raw keys or CommonKV
 * latents, from KVS_REC_MATRIX records), the adjacent-layer strip from step.layer_sim, and group
 * boundaries from the run's group size. Draws only from the history; no engine internals. */
#include "view.h"

#include <math.h>
#include <stdio.h>

static const char *kind_name(int k)
{
    return k == KVS_MAT_SIM_HIDDEN ? "hidden" : k == KVS_MAT_SIM_KEYS ? "keys" : k == KVS_MAT_SIM_LATENT ? "latent" : "?";
}

static void sim_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 30;
    *min_h = 7;
}

/* NaN-aware mean of the block [r0, r1) x [c0, c1) of an n x n matrix. */
static float block_mean(const float *m, uint32_t n, int r0, int r1, int c0, int c1)
{
    double s = 0;
    int k = 0;
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++) {
            float x = m[(size_t)r * n + c];
            if (isfinite(x)) { s += x; k++; }
        }
    return k ? (float)(s / k) : NAN;
}

static float adj_mean(const struct kvs_rec_step *s, int l0, int l1)
{
    double sum = 0;
    int k = 0;
    for (int l = l0; l < l1; l++) {
        if (l + 1 >= (int)s->n_layer || l >= KVS_MAX_LAYERS) break;
        if (isfinite(s->layer_sim[l])) { sum += s->layer_sim[l]; k++; }
    }
    return k ? (float)(sum / k) : NAN;
}

static void sim_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_rec_run *run = kvs_view_run(v);
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y;
    /* source tabs */
    int x = r.x;
    for (int k = KVS_MAT_SIM_HIDDEN; k <= KVS_MAT_SIM_LATENT && x < r.x + r.w; k++) {
        char b[16];
        snprintf(b, sizeof b, k == v->sim_kind ? "[%s]" : " %s ", kind_name(k));
        x += kvs_w_text(w, t, y, x, r.x + r.w - x, k == v->sim_kind ? KVS_C_FOCUS : KVS_C_DIM, b);
    }
    bool adj_ok = s && (s->valid & KVS_VALID_LAYER_SIM) && s->n_layer > 1;
    if (x + 4 < r.x + r.w) {
        char b[32];
        kvs_fmt_f(b, sizeof b, adj_ok, "%.3f", adj_ok ? adj_mean(s, 0, (int)s->n_layer) : 0);
        x += kvs_w_text(w, t, y, x, r.x + r.w - x, KVS_C_DIM, " adj ");
        kvs_w_text(w, t, y, x, r.x + r.w - x, adj_ok ? KVS_C_TEXT : KVS_C_NA, b);
    }
    y++;
    if (y >= r.y + r.h) return;
    const struct kvs_record *mr = v->sim_kind >= 1 && v->sim_kind <= 3 ? v->h->mat[v->sim_kind] : NULL;
    const struct kvs_rec_matrix *m = mr ? &mr->u.matrix : NULL;
    uint32_t G = run && run->group_size ? run->group_size : 0;
    if (!m || m->rows != m->cols || m->rows == 0) {
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_NA, "%s similarity: n/a (no matrix yet)", kind_name(v->sim_kind));
        /* the adjacent strip still says something */
        if (y < r.y + r.h && s) {
            int n = s->n_layer > 1 ? (int)s->n_layer - 1 : 0;
            if (!adj_ok) { kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "adjacent layers: n/a"); return; }
            int lab = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "adj ");
            for (int i = 0; i < n && lab + i < r.w; i++) kvs_w_heat(w, t, y, r.x + lab + i, 1, s->layer_sim[i], 0, 1);
        }
        return;
    }
    uint32_t n = m->rows;
    int legend = r.h >= 6 ? 1 : 0;
    int avail_h = r.y + r.h - y - legend;
    int gutter = 4;                          /* "nn" + group bar + space */
    int strip = adj_ok ? (r.w >= 40 ? 8 : 3) : 0; /* " ██0.93" */
    int avail_w = r.w - gutter - strip;
    if (avail_h < 1 || avail_w < 2) {
        kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "(too small)");
        return;
    }
    int nrows = (int)n < avail_h ? (int)n : avail_h;
    int cw = avail_w >= 2 * (int)n ? 2 : 1;
    int ncols = (int)n * cw <= avail_w ? (int)n : avail_w;
    /* colour range from the data */
    float lo = 1, hi = -1;
    for (size_t i = 0; i < (size_t)n * n; i++)
        if (isfinite(m->v[i])) { if (m->v[i] < lo) lo = m->v[i]; if (m->v[i] > hi) hi = m->v[i]; }
    if (hi < lo) { lo = 0; hi = 1; }
    if (hi - lo < 1e-3f) lo = hi - 1e-3f;
    for (int i = 0; i < nrows; i++) {
        int r0 = (int)((long)i * n / nrows), r1 = (int)((long)(i + 1) * n / nrows);
        int yy = y + i;
        bool label = nrows == (int)n ? (r0 % 5 == 0) : true;
        if (label) kvs_w_printf(w, t, yy, r.x, 2, KVS_C_DIM, "%2d", r0 % 100);
        else kvs_w_text(w, t, yy, r.x, 2, KVS_C_DIM, "  ");
        if (G) {
            uint32_t g = (uint32_t)r0 / G;
            bool boundary = r0 % (int)G == 0;
            kvs_w_glyph(w, t, yy, r.x + 2, g & 1 ? KVS_C_GROUP_B : KVS_C_GROUP_A, boundary ? "┏" : "┃", boundary ? '+' : '|');
        }
        for (int j = 0; j < ncols; j++) {
            int c0 = (int)((long)j * n / ncols), c1 = (int)((long)(j + 1) * n / ncols);
            float val = block_mean(m->v, n, r0, r1, c0, c1);
            kvs_w_heat(w, t, yy, r.x + gutter + j * cw, cw, val, lo, hi);
        }
        if (strip) {
            int sx = r.x + gutter + ncols * cw + 1;
            float a = adj_mean(s, r0, r1);
            kvs_w_heat(w, t, yy, sx, 2, a, lo, hi);
            if (strip > 3) {
                char b[16];
                kvs_w_text(w, t, yy, sx + 2, 5, isfinite(a) ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(b, sizeof b, true, "%5.2f", a));
            }
        }
    }
    if (legend) {
        int yy = y + nrows;
        int lx = kvs_w_printf(w, t, yy, r.x, r.w, KVS_C_DIM, "%.2f ", lo);
        for (int l = 0; l < KVS_HEAT_LEVELS && lx < r.w - 1; l++, lx++)
            kvs_w_heat(w, t, yy, r.x + lx, 1, lo + (hi - lo) * (l + 0.5f) / KVS_HEAT_LEVELS, lo, hi);
        lx += kvs_w_printf(w, t, yy, r.x + lx, r.w - lx, KVS_C_DIM, " %.2f", hi);
        if (G) kvs_w_printf(w, t, yy, r.x + lx, r.w - lx, KVS_C_DIM, "  G=%u", G);
    }
    (void)st;
}

const struct kvs_panel kvs_panel_similarity = {
    .name = "similarity",
    .title = "Similarity",
    .layout = sim_layout,
    .draw = sim_draw,
    .key = NULL,
    .help = NULL,
};
