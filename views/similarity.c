/* Similarity panel: layer x layer cosine-similarity heat map (hidden states, raw keys or CommonKV
 * latents, from KVS_REC_MATRIX records) on one fixed 0..1 colour scale, the adjacent-layer strip of
 * the same source (the matrix's superdiagonal), a cell cursor with its value, and group boundaries
 * from the run's group size. Draws only from the history; no engine internals. */
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

/* Mean of the adjacent-layer similarities m[l][l+1] for l in [l0, l1) (the superdiagonal of the
 * selected source's matrix, so the strip always tells the same story as the map beside it). */
static float adj_mean(const struct kvs_rec_matrix *m, int l0, int l1)
{
    double sum = 0;
    int k = 0;
    for (int l = l0; l < l1 && l + 1 < (int)m->rows; l++) {
        float x = m->v[(size_t)l * m->cols + (size_t)l + 1];
        if (isfinite(x)) { sum += x; k++; }
    }
    return k ? (float)(sum / k) : NAN;
}

/* The fixed colour scale shared by every source: cosine 0 (or below) .. 1. */
#define SIM_LO 0.0f
#define SIM_HI 1.0f

/* Row (or column) I of N bins over L layers covers [b0, b1). */
static void bin(int i, int nbins, int l, int *b0, int *b1)
{
    *b0 = (int)((long)i * l / nbins);
    *b1 = (int)((long)(i + 1) * l / nbins);
}

static void sim_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_rec_run *run = kvs_view_run(v);
    int y = r.y;
    const struct kvs_record *mr = v->sim_kind >= 1 && v->sim_kind <= 3 ? v->h->mat[v->sim_kind] : NULL;
    const struct kvs_rec_matrix *m = mr ? &mr->u.matrix : NULL;
    if (m && (m->rows != m->cols || m->rows == 0)) m = NULL;
    /* source tabs, then the adjacent-layer mean of the same source */
    int x = r.x;
    bool all_tabs = r.w >= 50; /* narrow: only the selected source's tab, so the number fits */
    for (int k = KVS_MAT_SIM_HIDDEN; k <= KVS_MAT_SIM_LATENT && x < r.x + r.w; k++) {
        if (!all_tabs && k != v->sim_kind) continue;
        char b[16];
        snprintf(b, sizeof b, k == v->sim_kind ? "[%s]" : " %s ", kind_name(k));
        x += kvs_w_text(w, t, y, x, r.x + r.w - x, k == v->sim_kind ? KVS_C_FOCUS : KVS_C_DIM, b);
    }
    float adj_all = m ? adj_mean(m, 0, (int)m->rows) : NAN;
    if (x + 4 < r.x + r.w) {
        char b[32];
        x += kvs_w_printf(w, t, y, x, r.x + r.w - x, KVS_C_DIM, " adj %s ", kind_name(v->sim_kind));
        kvs_w_text(w, t, y, x, r.x + r.w - x, isfinite(adj_all) ? KVS_C_TEXT : KVS_C_NA,
                   kvs_fmt_f(b, sizeof b, true, "%.3f", adj_all));
    }
    y++;
    if (y >= r.y + r.h) return;
    uint32_t G = run && run->group_size ? run->group_size : 0;
    if (!m) {
        kvs_w_printf(w, t, y, r.x, r.w, KVS_C_NA, "%s similarity: n/a (no matrix yet)", kind_name(v->sim_kind));
        return;
    }
    int n = (int)m->rows;
    int legend = r.h >= 5 ? 1 : 0;
    int readout = r.h >= 7 ? 1 : 0;
    int avail_h = r.y + r.h - y - legend - readout;
    int nrows = n < avail_h ? n : avail_h;
    /* rows label the layers they cover: "12" for one layer, "12-15" for a bin */
    int gutter = (nrows < n ? 5 : 2) + (G ? 1 : 0) + 1;
    int strip = r.w >= 40 ? 8 : 3; /* " ██0.93" */
    int avail_w = r.w - gutter - strip;
    if (avail_h < 1 || avail_w < 2) {
        kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "(too small)");
        return;
    }
    /* zoom: cells grow to fill the width they get (up to 4 columns per layer) */
    int cw = avail_w / n;
    if (cw > 4) cw = 4;
    if (cw < 1) cw = 1;
    int ncols = n * cw <= avail_w ? n : avail_w;
    /* the cell cursor, in layers */
    if (st->cur_r >= n) st->cur_r = n - 1;
    if (st->cur_c >= n) st->cur_c = n - 1;
    if (st->cur_r < 0) st->cur_r = 0;
    if (st->cur_c < 0) st->cur_c = 0;
    for (int i = 0; i < nrows; i++) {
        int r0, r1;
        bin(i, nrows, n, &r0, &r1);
        int yy = y + i;
        bool last = i == nrows - 1;
        if (nrows < n) {
            char b[16];
            if (r1 - r0 > 1) snprintf(b, sizeof b, "%2d-%-2d", r0 % 100, (r1 - 1) % 100);
            else snprintf(b, sizeof b, "%2d   ", r0 % 100);
            kvs_w_text(w, t, yy, r.x, 5, KVS_C_DIM, b);
        } else if (r0 % 5 == 0 || last) {
            kvs_w_printf(w, t, yy, r.x, 2, KVS_C_DIM, "%2d", r0 % 100);
        }
        if (G) {
            int gx = r.x + gutter - 2;
            uint32_t g = (uint32_t)r0 / G;
            bool boundary = r0 % (int)G == 0;
            kvs_w_glyph(w, t, yy, gx, g & 1 ? KVS_C_GROUP_B : KVS_C_GROUP_A, boundary ? "┏" : "┃", boundary ? '+' : '|');
        }
        bool cur_row = st->focused && st->cur_r >= r0 && st->cur_r < r1;
        for (int j = 0; j < ncols; j++) {
            int c0, c1;
            bin(j, ncols, n, &c0, &c1);
            float val = block_mean(m->v, (uint32_t)n, r0, r1, c0, c1);
            int cx = r.x + gutter + j * cw;
            kvs_w_heat(w, t, yy, cx, cw, val, SIM_LO, SIM_HI);
            if (cur_row && st->cur_c >= c0 && st->cur_c < c1)
                mvwchgat(w, yy, cx, cw, A_REVERSE | kvs_attr(t, KVS_C_FOCUS), t->pair[KVS_C_FOCUS], NULL);
        }
        int sx = r.x + gutter + ncols * cw + 1;
        float a = adj_mean(m, r0, r1);
        kvs_w_heat(w, t, yy, sx, 2, a, SIM_LO, SIM_HI);
        if (strip > 3) {
            char b[16];
            kvs_w_text(w, t, yy, sx + 2, 5, isfinite(a) ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(b, sizeof b, true, "%5.2f", a));
        }
    }
    y += nrows;
    if (legend) {
        /* the fixed scale, stated: every source is drawn against the same 0..1 */
        int lx = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "cos %s0 ", KVS_G(t, "≤", "<="));
        for (int l = 0; l < KVS_HEAT_LEVELS && lx < r.w - 1; l++, lx++)
            kvs_w_heat(w, t, y, r.x + lx, 1, SIM_LO + (SIM_HI - SIM_LO) * (l + 0.5f) / KVS_HEAT_LEVELS, SIM_LO, SIM_HI);
        lx += kvs_w_printf(w, t, y, r.x + lx, r.w - lx, KVS_C_DIM, " 1 fixed");
        if (G) lx += kvs_w_printf(w, t, y, r.x + lx, r.w - lx, KVS_C_DIM, "  G=%u", G);
        kvs_w_printf(w, t, y, r.x + lx, r.w - lx, KVS_C_DIM, "  %d layers", n);
        y++;
    }
    if (readout) {
        char b[16];
        float c = m->v[(size_t)st->cur_r * (size_t)n + (size_t)st->cur_c];
        int lx = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "cell L%d%sL%d %s ", st->cur_r, KVS_G(t, "×", "x"),
                              st->cur_c, kind_name(v->sim_kind));
        lx += kvs_w_text(w, t, y, r.x + lx, r.w - lx, isfinite(c) ? KVS_C_TEXT : KVS_C_NA,
                         kvs_fmt_f(b, sizeof b, true, "%.3f", c));
        if (!st->focused) kvs_w_text(w, t, y, r.x + lx, r.w - lx, KVS_C_DIM, "  (focus 1, arrows move)");
    }
}

/* Up/Down move the cell cursor between rows, PgUp/PgDn between columns (Left/Right stay the
 * step keys everywhere); Home puts it on the diagonal. */
static bool sim_key(struct kvs_panel_state *st, int key)
{
    switch (key) {
    case KEY_UP: st->cur_r--; return true;
    case KEY_DOWN: st->cur_r++; return true;
    case KEY_PPAGE: st->cur_c--; return true;
    case KEY_NPAGE: st->cur_c++; return true;
    default: return false;
    }
}

const struct kvs_panel kvs_panel_similarity = {
    .name = "similarity",
    .title = "Similarity",
    .layout = sim_layout,
    .draw = sim_draw,
    .key = sim_key,
    .help = "Up/Down\tcell cursor: previous / next row (layer)\n"
            "PgUp/PgDn\tcell cursor: previous / next column (layer)\n"
            "\tcolours: fixed cosine scale 0..1 for every source\n",
};
