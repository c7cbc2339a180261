/* Memory panel: full fp16 vs held vs allocated KV bytes, absolute and as CR (target, achieved from
 * held bytes, and from allocated bytes), whose memory they are (the GPU's or the host's), the
 * factors a low-rank method keeps (its own line), per layer, and growth with the context over the
 * steps in the history. Draws only from step and run records. */
#include "view.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void mem_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 32;
    *min_h = 7;
}

static void mem_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_rec_run *run = kvs_view_run(v);
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y, ye = r.y + r.h;
    if (!s) { kvs_view_empty(w, r, v, run ? "no steps yet" : "waiting for a run"); return; }
    char a[24], b[24];
    bool ok = (s->valid & KVS_VALID_BYTES) && s->bytes_full > 0;
    float cr_alloc = ok ? 1.0f - (float)s->bytes_alloc / (float)s->bytes_full : 0;
    {
        int x = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "CR target ");
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, kvs_fmt_f(a, sizeof a, s->cr_target >= 0, "%.2f", s->cr_target));
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "  achieved ");
        bool short_of = ok && s->cr_target >= 0 && s->cr_achieved + 0.02f < s->cr_target;
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, !ok ? KVS_C_NA : short_of ? KVS_C_WARN : KVS_C_GOOD,
                        kvs_fmt_f(a, sizeof a, ok, "%.3f", s->cr_achieved));
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "  alloc ");
        /* allocated beyond a full cache is not a negative compression: say how far over it is */
        if (ok && cr_alloc < 0)
            kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_WARN, kvs_fmt_f(a, sizeof a, true, "%.0f%% over full", -cr_alloc * 100));
        else
            kvs_w_text(w, t, y, r.x + x, r.w - x, ok ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(a, sizeof a, ok, "%.3f", cr_alloc));
        y++;
    }
    if (!ok) {
        if (y < ye) kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "KV bytes: n/a");
        return;
    }
    /* whose memory the bytes below are: the GPU's on a CUDA run (what a longer context or a larger
     * batch could use), the host's on the CPU; pools a CUDA run left in host memory are said so */
    if (run && y < ye) {
        bool host = !strcmp(run->backend, "cpu");
        int x = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "KV bytes in ");
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, host ? "host memory" : "device memory");
        if (!host && s->dev_mem_total && s->dev_pool_bytes < s->bytes_alloc)
            x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_WARN, " (%s in host memory)",
                              kvs_fmt_bytes(a, sizeof a, s->bytes_alloc - s->dev_pool_bytes));
        if (!host && s->dev_mem_total)
            kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, ", GPU %s of %s used",
                         kvs_fmt_bytes(a, sizeof a, s->dev_mem_used), kvs_fmt_bytes(b, sizeof b, s->dev_mem_total));
        y++;
    }
    uint64_t top = s->bytes_full > s->bytes_alloc ? s->bytes_full : s->bytes_alloc;
    if (s->bytes_held > top) top = s->bytes_held;
    int bw = r.w - 17;
    if (s->bytes_factors > top) top = s->bytes_factors;
    /* the factors a low-rank method keeps are memory it costs beside the cache: their own line */
    struct { const char *name; uint64_t v; enum kvs_role role; } rows[4] = {
        {"full ", s->bytes_full, KVS_C_BAR_FULL}, {"held ", s->bytes_held, KVS_C_BAR_HELD}, {"alloc", s->bytes_alloc, KVS_C_BAR_ALLOC},
        {"factr", s->bytes_factors, KVS_C_BAR_ALLOC}};
    int n_rows = s->bytes_factors ? 4 : 3;
    for (int i = 0; i < n_rows && y < ye; i++, y++) {
        int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "%s ", rows[i].name);
        if (bw >= 4) {
            kvs_w_bar(w, t, y, r.x + x, bw, (double)rows[i].v / (double)top, rows[i].role);
            x += bw + 1;
        }
        kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, "%9s", kvs_fmt_bytes(a, sizeof a, rows[i].v));
    }
    if (y >= ye) return;
    /* growth: held and full bytes over the steps up to the cursor, sampled to the width */
    int sw = r.w - 6;
    uint64_t first = kvs_history_first(v->h);
    uint64_t last = v->cursor < v->h->n_steps ? v->cursor : v->h->n_steps - 1;
    if (sw >= 4 && ye - y >= 3 && last > first) {
        const struct kvs_rec_step *s0 = kvs_history_step(v->h, first);
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "growth, ctx %u %s %u (%s held)", s0 ? s0->n_ctx : 0, KVS_G(t, "→", "->"), s->n_ctx,
                     kvs_fmt_bytes(b, sizeof b, s->bytes_held));
        float full[512], held[512];
        if (sw > 512) sw = 512;
        uint64_t span = last - first + 1;
        int n = span < (uint64_t)sw ? (int)span : sw;
        float mx = 1;
        for (int i = 0; i < n; i++) {
            uint64_t k = first + (span - 1) * (uint64_t)i / (uint64_t)(n > 1 ? n - 1 : 1);
            const struct kvs_rec_step *q = kvs_history_step(v->h, k);
            bool qok = q && (q->valid & KVS_VALID_BYTES);
            full[i] = qok ? (float)q->bytes_full : NAN;
            held[i] = qok ? (float)q->bytes_held : NAN;
            if (qok && full[i] > mx) mx = full[i];
            if (qok && held[i] > mx) mx = held[i];
        }
        kvs_w_text(w, t, y, r.x, 6, KVS_C_DIM, "full ");
        kvs_w_spark(w, t, y++, r.x + 6, full, n, 0, mx, KVS_C_BAR_FULL);
        kvs_w_text(w, t, y, r.x, 6, KVS_C_DIM, "held ");
        kvs_w_spark(w, t, y++, r.x + 6, held, n, 0, mx, KVS_C_BAR_HELD);
    }
    if (y >= ye) return;
    /* per layer: held bytes against the layer's share of the full cache */
    uint32_t nl = s->n_layer < KVS_MAX_LAYERS ? s->n_layer : KVS_MAX_LAYERS;
    if (nl == 0) return;
    double layer_full = run && run->n_head_kv && run->head_dim
                            ? (double)s->n_ctx * 2.0 * run->n_head_kv * run->head_dim * 2.0
                            : (double)s->bytes_full / nl;
    int rows_left = ye - y;
    if (rows_left >= 2) {
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "per layer (of %s full each), by %s (F6)",
                     kvs_fmt_bytes(a, sizeof a, (uint64_t)layer_full), st->sort == 1 ? "bytes held" : "layer");
        rows_left--;
    }
    if (st->scroll > (int)nl - rows_left) st->scroll = (int)nl - rows_left;
    if (st->scroll < 0) st->scroll = 0;
    int lbw = r.w - 22;
    /* row order: by layer, or by bytes held (most first), stable by layer */
    uint32_t order[KVS_MAX_LAYERS];
    for (uint32_t l = 0; l < nl; l++) order[l] = l;
    if (st->sort == 1)
        for (uint32_t i = 1; i < nl; i++)
            for (uint32_t k = i; k > 0 && s->layer_bytes_held[order[k]] > s->layer_bytes_held[order[k - 1]]; k--) {
                uint32_t tmp = order[k]; order[k] = order[k - 1]; order[k - 1] = tmp;
            }
    for (int i = 0; i < rows_left; i++) {
        if ((uint32_t)(i + st->scroll) >= nl) break;
        uint32_t l = order[i + st->scroll];
        uint64_t hb = s->layer_bytes_held[l];
        double f = layer_full > 0 ? hb / layer_full : 0;
        int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "L%02u ", l);
        if (lbw >= 3) {
            kvs_w_bar(w, t, y, r.x + x, lbw, f, hb == 0 ? KVS_C_BAD : KVS_C_BAR_HELD);
            x += lbw + 1;
        }
        kvs_w_printf(w, t, y, r.x + x, r.w - x, hb == 0 ? KVS_C_BAD : KVS_C_TEXT, "%9s %3.0f%%", kvs_fmt_bytes(a, sizeof a, hb), f * 100);
        y++;
    }
}

static bool mem_key(struct kvs_panel_state *st, int key)
{
    if (key == KEY_F(6)) { st->sort = (st->sort + 1) % 2; st->scroll = 0; return true; }
    return kvs_view_scroll_key(st, key);
}

const struct kvs_panel kvs_panel_memory = {
    .name = "memory",
    .title = "Memory",
    .layout = mem_layout,
    .draw = mem_draw,
    .key = mem_key,
    .help = "Up/Down\tscroll layers\n"
            "F6\tsort layers: by layer / by bytes held\n",
};
