/* Tokens panel: the decoded token stream with time to first token, tokens/s and a per-token
 * latency sparkline; with a pinned run (A/B, e.g. the full cache) its tokens beside this run's,
 * first divergence marked. Draws only from the history. */
#include "view.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tok_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 30;
    *min_h = 6;
}

/* Lays out N tokens of TK wrapped to W cells; draws lines [first, first + h) at (y, x) when DRAW.
 * Tokens from DIV on are marked (DIV itself reversed). Returns the number of lines. */
static int wrap_tokens(WINDOW *w, const struct kvs_theme *t, const struct kvs_hist_tokens *tk, uint32_t n, int x, int y,
                       int wd, int h, int first, bool draw, uint32_t div)
{
    int line = 0, col = 0;
    char one[8];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len;
        const char *p = kvs_hist_tokens_piece(tk, i, &len);
        enum kvs_role role = i >= div ? KVS_C_WARN : (i & 1) ? KVS_C_TEXT : KVS_C_TITLE;
        for (uint32_t k = 0; k < len;) {
            /* one UTF-8 character at a time */
            uint32_t cl = 1;
            unsigned char c = (unsigned char)p[k];
            if (c >= 0xF0) cl = 4; else if (c >= 0xE0) cl = 3; else if (c >= 0xC0) cl = 2;
            if (k + cl > len) cl = len - k;
            if (c == '\n') {
                line++;
                col = 0;
                k++;
                continue;
            }
            memcpy(one, p + k, cl);
            one[cl] = 0;
            k += cl;
            int cw = kvs_w_width(t, one);
            if (col + cw > wd) { line++; col = 0; }
            if (draw && line >= first && line < first + h) {
                kvs_w_text(w, t, y + line - first, x + col, wd - col, role, one);
                if (i == div) mvwchgat(w, y + line - first, x + col, cw, kvs_attr(t, KVS_C_WARN) | A_REVERSE,
                                       t->pair[KVS_C_WARN], NULL);
            }
            col += cw;
        }
    }
    return line + 1;
}

static void draw_stream(WINDOW *w, const struct kvs_theme *t, const struct kvs_hist_tokens *tk, uint32_t n, struct kvs_rect r,
                        int scroll, uint32_t div, bool ended)
{
    if (r.w <= 0 || r.h <= 0) return;
    if (n == 0) {
        kvs_w_text(w, t, r.y, r.x, r.w, KVS_C_DIM,
                   ended ? "(none: the model ended the text right after the prompt)" : "(no tokens yet)");
        return;
    }
    int lines = wrap_tokens(w, t, tk, n, r.x, r.y, r.w, r.h, 0, false, div);
    int first = lines - r.h - scroll;
    if (first < 0) first = 0;
    wrap_tokens(w, t, tk, n, r.x, r.y, r.w, r.h, first, true, div);
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void tok_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_history *h = v->h;
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y, ye = r.y + r.h;
    if (!h->run) { kvs_view_empty(w, r, v, "waiting for a run"); return; }
    uint32_t n = s ? kvs_history_tokens_upto(h, v->cursor) : 0;
    /* rates over the decode steps held up to the cursor */
    uint64_t first = kvs_history_first(h);
    uint64_t t0 = 0, t1 = 0;
    uint32_t n_dec = 0;
    float lat[256];
    int n_lat = 0;
    int spark_w = r.w - 9 < 256 ? r.w - 9 : 256;
    if (spark_w < 0) spark_w = 0;
    if (s) {
        for (uint64_t i = first; i <= v->cursor && i < h->n_steps; i++) {
            const struct kvs_rec_step *q = kvs_history_step(h, i);
            if (!q || q->kind != KVS_STEP_DECODE) continue;
            if (n_dec++ == 0) t0 = q->t_start_ns;
            t1 = q->t_end_ns;
        }
        /* the newest SPARK_W decode latencies */
        for (uint64_t i = v->cursor + 1; i-- > first && n_lat < spark_w;) {
            const struct kvs_rec_step *q = kvs_history_step(h, i);
            if (!q) break;
            if (q->kind != KVS_STEP_DECODE) continue;
            lat[n_lat++] = (float)(q->t_end_ns - q->t_start_ns) / 1e6f;
        }
    }
    char a[24], b[24];
    bool ttft_ok = h->t_first_decode_ns > 0 && n > 0;
    double tps = n_dec > 1 && t1 > t0 ? n_dec / ((double)(t1 - t0) / 1e9) : NAN;
    {
        int x = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "TTFT ");
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, ttft_ok ? KVS_C_TEXT : KVS_C_NA,
                        ttft_ok ? kvs_fmt_ns(a, sizeof a, h->t_first_decode_ns) : "n/a");
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_DIM, "  ");
        x += kvs_w_text(w, t, y, r.x + x, r.w - x, isfinite(tps) ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(a, sizeof a, true, "%.1f", tps));
        x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_DIM, " tok/s  %u tokens  ctx %u", n, s ? s->n_ctx : 0);
        y++;
    }
    if (y >= ye) return;
    if (n_lat > 0 && r.h >= 4) {
        /* oldest on the left */
        float ord[256], srt[256];
        float mx = 0;
        for (int i = 0; i < n_lat; i++) {
            ord[i] = lat[n_lat - 1 - i];
            srt[i] = lat[i];
            if (lat[i] > mx) mx = lat[i];
        }
        qsort(srt, (size_t)n_lat, sizeof *srt, cmp_f);
        int x = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "latency ");
        int sw = n_lat < r.w - x ? n_lat : r.w - x;
        kvs_w_spark(w, t, y, r.x + x, ord + (n_lat - sw), sw, 0, mx, KVS_C_BAR_HELD);
        y++;
        if (y < ye && r.h >= 6) {
            kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "p50 %s  max %s per token", kvs_fmt_ns(a, sizeof a, (uint64_t)(srt[n_lat / 2] * 1e6f)),
                         kvs_fmt_ns(b, sizeof b, (uint64_t)(mx * 1e6f)));
        }
    }
    if (y >= ye) return;
    const struct kvs_hist_pin *pin = v->pin && v->pin->set ? v->pin : NULL;
    /* a finished run with no token generated: the model's first token ended the text */
    bool ended = h->end && h->end->u.end.n_gen == 0, pin_ended = pin && pin->end && pin->end->u.end.n_gen == 0;
    struct kvs_rect body = {r.x, y, r.w, ye - y};
    if (st->scroll < 0) st->scroll = 0;
    if (!pin || r.w < 24) {
        draw_stream(w, t, &h->tok, n, body, st->scroll, UINT32_MAX, ended);
        return;
    }
    /* A/B: the pinned run's tokens beside this run's */
    uint32_t na = pin->tok.n, div = UINT32_MAX;
    for (uint32_t i = 0; i < n && i < na; i++)
        if (h->tok.id[i] != pin->tok.id[i]) { div = i; break; }
    int hw = (r.w - 1) / 2;
    const char *pm = pin->run ? pin->run->u.run.method : "?";
    const char *bm = h->run->u.run.method;
    if (div == UINT32_MAX) kvs_w_printf(w, t, body.y, r.x, r.w, KVS_C_GOOD, "B %s = A %s so far (%u tokens)", bm, pm, n < na ? n : na);
    else kvs_w_printf(w, t, body.y, r.x, r.w, KVS_C_WARN, "B %s diverges from A %s at token %u", bm, pm, div);
    body.y++;
    body.h--;
    struct kvs_rect left = {r.x, body.y, hw, body.h}, right = {r.x + hw + 1, body.y, r.w - hw - 1, body.h};
    if (body.h >= 2) {
        kvs_w_printf(w, t, left.y, left.x, left.w, KVS_C_FOCUS, "B: %s", bm);
        kvs_w_printf(w, t, right.y, right.x, right.w, KVS_C_BAR_REF, "A: %s", pm);
        left.y++; left.h--; right.y++; right.h--;
    }
    for (int yy = body.y; yy < ye; yy++) kvs_w_glyph(w, t, yy, r.x + hw, KVS_C_BORDER, "│", '|');
    draw_stream(w, t, &h->tok, n, left, st->scroll, div, ended);
    draw_stream(w, t, &pin->tok, na, right, st->scroll, div, pin_ended);
}

/* Up scrolls back to older lines (the stream is anchored at its newest line). */
static bool tok_key(struct kvs_panel_state *st, int key)
{
    switch (key) {
    case KEY_UP: st->scroll++; return true;
    case KEY_DOWN: if (st->scroll > 0) st->scroll--; return true;
    case KEY_PPAGE: st->scroll += 10; return true;
    case KEY_NPAGE: st->scroll = st->scroll > 10 ? st->scroll - 10 : 0; return true;
    default: return false;
    }
}

const struct kvs_panel kvs_panel_tokens = {
    .name = "tokens",
    .title = "Tokens",
    .layout = tok_layout,
    .draw = tok_draw,
    .key = tok_key,
    .help = "Up/Down PgUp/PgDn\tscroll the token stream\n",
};
