/* Quality panel: perplexity of the method and of the full run on the same (the reference's)
 * tokens, KL divergence and top-1 agreement (step records with KVS_VALID_QUALITY, or a QUALITY
 * record), one-off setup time apart from time to first token, and an A/B table against a pinned
 * run; a second mode (key k) plots KL against achieved CR for every run of the session (and every
 * QUALITY record of a trace). Invalid metrics print n/a; passkey, never measured live, shows only
 * when a record has it. Draws only from the history. */
#include "view.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static void q_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 30;
    *min_h = 6;
}

/* The metrics of one side of the comparison. NaN = not available. */
struct qcol {
    const char *method;
    double cr_target, cr_achieved, held, ppl, ppl_full, kl, top1, passkey, tps, ttft_ms, setup_s;
};

static void fill_col(struct qcol *q, const struct kvs_record *run, const struct kvs_rec_step *s, const struct kvs_record *qr,
                     const struct kvs_record *end, uint64_t ttft_ns, uint64_t n_dec, uint64_t dec_ns)
{
    q->method = run ? run->u.run.method : "?";
    q->cr_target = q->cr_achieved = q->held = q->ppl = q->ppl_full = q->kl = q->top1 = q->passkey = q->tps = q->ttft_ms = NAN;
    q->setup_s = NAN;
    if (run && run->u.run.target_cr >= 0) q->cr_target = run->u.run.target_cr;
    if (s && (s->valid & KVS_VALID_BYTES)) {
        q->cr_achieved = s->cr_achieved;
        q->held = (double)s->bytes_held;
    }
    if (s && (s->valid & KVS_VALID_QUALITY)) {
        q->ppl = s->ppl;
        q->kl = s->kl;
        q->top1 = s->top1;
    }
    if (qr) {
        const struct kvs_rec_quality *k = &qr->u.quality;
        if (k->n_tokens) {
            q->ppl = k->ppl;
            q->ppl_full = k->ppl_full;
            q->kl = k->kl;
            q->top1 = k->top1;
        }
        q->passkey = k->passkey_acc;
        if (isfinite(k->achieved_cr) && !isfinite(q->cr_achieved)) q->cr_achieved = k->achieved_cr;
        if (k->decode_tps > 0) q->tps = k->decode_tps;
    }
    if (end && end->u.end.decode_tps > 0) q->tps = end->u.end.decode_tps;
    else if (!isfinite(q->tps) && n_dec > 0 && dec_ns > 0) q->tps = n_dec / (dec_ns / 1e9);
    if (ttft_ns) q->ttft_ms = ttft_ns / 1e6;
}

/* One-off setup (factorization, calibration): the session counts it as the SVD op of its first
 * step; NaN when no step in the history carries it. */
static double setup_secs(const struct kvs_history *h, uint64_t cursor)
{
    uint64_t ns = 0;
    bool any = false;
    for (uint64_t i = kvs_history_first(h); i <= cursor && i < h->n_steps; i++) {
        const struct kvs_rec_step *s = kvs_history_step(h, i);
        if (s && (s->valid & KVS_VALID_OPS) && s->ops[KVS_OP_SVD].calls) {
            ns += s->ops[KVS_OP_SVD].ns;
            any = true;
        }
    }
    return any ? ns / 1e9 : NAN;
}

/* Self-perplexity of the generated tokens from their log-probabilities (NaN when not valid). */
static double self_ppl(const struct kvs_history *h, uint64_t cursor)
{
    double sum = 0;
    uint64_t n = 0;
    for (uint64_t i = kvs_history_first(h); i <= cursor && i < h->n_steps; i++) {
        const struct kvs_rec_step *s = kvs_history_step(h, i);
        if (s && s->kind == KVS_STEP_DECODE && (s->valid & KVS_VALID_LOGPROB) && isfinite(s->logprob)) {
            sum += s->logprob;
            n++;
        }
    }
    return n ? exp(-sum / (double)n) : NAN;
}

/* KL against achieved CR, one letter per method (its first letter; the current run bold and
 * reversed), then the points as a list. The x axis is CR 0..1; the y axis 0..the largest KL. */
static void curve_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_history *h = v->h;
    int y = r.y, ye = r.y + r.h;
    kvs_w_text(w, t, y++, r.x, r.w, KVS_C_DIM, "KL vs full against achieved CR, runs of this session");
    if (!h->n_points) {
        if (y < ye) kvs_w_text(w, t, y, r.x, r.w, KVS_C_NA, "n/a: no run with quality yet (c: compare with full)");
        return;
    }
    float kl_max = 0;
    for (uint32_t i = 0; i < h->n_points; i++)
        if (h->points[i].kl > kl_max) kl_max = h->points[i].kl;
    if (kl_max <= 0) kl_max = 1e-3f;
    int list = (int)h->n_points < 4 ? (int)h->n_points : 4;
    int ph = ye - y - 1 - list; /* plot rows, then the x axis, then the list */
    if (ph > 12) ph = 12;
    int lab = 8, pw = r.w - lab;
    if (ph >= 3 && pw >= 10) {
        for (int i = 0; i < ph; i++) {
            float top = kl_max * (float)(ph - i) / (float)ph;
            if (i == 0 || i == ph - 1) kvs_w_printf(w, t, y + i, r.x, lab, KVS_C_DIM, "%7.3g", i == 0 ? top : 0.0f);
            kvs_w_glyph(w, t, y + i, r.x + lab - 1, KVS_C_BORDER, "│", '|');
        }
        for (uint32_t k = 0; k < h->n_points; k++) {
            const struct kvs_hist_point *p = &h->points[k];
            int px = (int)lroundf(p->cr * (float)(pw - 1));
            int py = ph - 1 - (int)lroundf(p->kl / kl_max * (float)(ph - 1));
            if (px < 0) px = 0;
            if (px >= pw) px = pw - 1;
            if (py < 0) py = 0;
            if (py >= ph) py = ph - 1;
            bool cur = h->run && p->key == kvs_history_run_key(&h->run->u.run);
            char g[2] = {p->method[0] ? p->method[0] : '?', 0};
            attr_t a = kvs_attr(t, cur ? KVS_C_FOCUS : KVS_C_TEXT) | (cur ? A_REVERSE : 0);
            mvwaddch(w, y + py, r.x + lab + px, (chtype)(unsigned char)g[0] | a);
        }
        y += ph;
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "%*s0%*s1 CR", lab, "", pw - 6 > 0 ? pw - 6 : 1, "");
    }
    /* newest points first */
    for (int i = 0; i < list && y < ye; i++) {
        const struct kvs_hist_point *p = &h->points[h->n_points - 1 - (uint32_t)i];
        char tb[16];
        bool cur = h->run && p->key == kvs_history_run_key(&h->run->u.run);
        kvs_w_printf(w, t, y++, r.x, r.w, cur ? KVS_C_FOCUS : KVS_C_TEXT, "%c %-18.18s target %s  CR %.3f  KL %.4f",
                     p->method[0] ? p->method[0] : '?', p->method,
                     kvs_fmt_f(tb, sizeof tb, p->target_cr >= 0, "%.2f", p->target_cr), p->cr, p->kl);
    }
    (void)st;
}

static void q_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_history *h = v->h;
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y, ye = r.y + r.h;
    if (st->mode == 1) { curve_draw(w, r, v, st); return; }
    if (!h->run) { kvs_view_empty(w, r, v, "waiting for a run"); return; }
    bool at_end = v->live || v->cursor + 1 >= h->n_steps;
    uint64_t n_dec = 0, dec_ns = 0;
    for (uint64_t i = kvs_history_first(h); i <= v->cursor && i < h->n_steps; i++) {
        const struct kvs_rec_step *q = kvs_history_step(h, i);
        if (q && q->kind == KVS_STEP_DECODE) { n_dec++; dec_ns += q->t_end_ns - q->t_start_ns; }
    }
    struct qcol b, a;
    fill_col(&b, h->run, s, at_end ? h->quality : NULL, at_end ? h->end : NULL, h->t_first_decode_ns, n_dec, dec_ns);
    b.setup_s = setup_secs(h, v->cursor);
    const struct kvs_hist_pin *pin = v->pin && v->pin->set ? v->pin : NULL;
    if (pin) fill_col(&a, pin->run, pin->step ? &pin->step->u.step : NULL, pin->quality, pin->end, pin->t_first_decode_ns,
                      pin->n_decode, pin->decode_ns);
    char x1[24], x2[24], x3[24];
    double sp = self_ppl(h, v->cursor);
    {
        int x = kvs_w_text(w, t, y, r.x, r.w, KVS_C_DIM, "vs full: ");
        bool any = isfinite(b.ppl) || isfinite(b.kl) || isfinite(b.top1);
        if (!any) {
            x += kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_NA, "n/a");
            kvs_w_text(w, t, y, r.x + x, r.w - x, KVS_C_DIM, " (compare-full off: press c)");
        } else {
            kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, "KL %s  top-1 %s", kvs_fmt_f(x1, sizeof x1, true, "%.4f", b.kl),
                         kvs_fmt_f(x2, sizeof x2, true, "%.1f%%", b.top1 * 100));
        }
        y++;
    }
    if (y >= ye) return;
    kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "self-ppl of output %s", kvs_fmt_f(x1, sizeof x1, true, "%.2f", sp));
    if (y >= ye) return;
    /* table: metric | B (now) | A (pinned) | delta */
    int cw = pin ? (r.w - 12) / 3 : r.w - 12;
    if (cw > 14) cw = 14;
    if (cw < 6) cw = 6;
    kvs_w_printf(w, t, y, r.x, r.w, KVS_C_DIM, "%-11s", "");
    kvs_w_printf(w, t, y, r.x + 12, cw, KVS_C_FOCUS, "B %s", b.method);
    if (pin && r.x + 12 + 2 * cw < r.x + r.w) {
        kvs_w_printf(w, t, y, r.x + 12 + cw + 1, cw, KVS_C_BAR_REF, "A %s", a.method);
        kvs_w_text(w, t, y, r.x + 12 + 2 * cw + 2, r.w - 14 - 2 * cw, KVS_C_DIM, "B-A");
    }
    y++;
    struct row { const char *name; double bv, av; const char *fmt; double mul; bool lower_better; } rows[] = {
        {"CR target", b.cr_target, a.cr_target, "%.2f", 1, false},
        {"CR achieved", b.cr_achieved, a.cr_achieved, "%.3f", 1, false},
        {"KV held MiB", b.held, a.held, "%.2f", 1.0 / 1048576, true},
        {"ppl", b.ppl, a.ppl, "%.3f", 1, true},
        {"ppl full", b.ppl_full, a.ppl_full, "%.3f", 1, true},
        {"KL", b.kl, a.kl, "%.4f", 1, true},
        {"top-1 %", b.top1, a.top1, "%.1f", 100, false},
        {"passkey %", b.passkey, a.passkey, "%.0f", 100, false},
        {"TTFT ms", b.ttft_ms, a.ttft_ms, "%.1f", 1, true},
        {"setup s", b.setup_s, a.setup_s, "%.2f", 1, true},
        {"tok/s", b.tps, a.tps, "%.1f", 1, false},
    };
    int nrows = (int)(sizeof rows / sizeof rows[0]);
    /* no passkey is run live: the row shows only when a record (eval, a pinned run) measured it */
    if (!isfinite(b.passkey) && !(pin && isfinite(a.passkey))) {
        for (int i = 0; i + 1 < nrows; i++)
            if (!strcmp(rows[i].name, "passkey %")) {
                memmove(&rows[i], &rows[i + 1], (size_t)(nrows - i - 1) * sizeof rows[0]);
                break;
            }
        nrows--;
    }
    int avail = ye - y;
    if (st->scroll > nrows - avail) st->scroll = nrows - avail;
    if (st->scroll < 0) st->scroll = 0;
    for (int i = st->scroll; i < nrows && y < ye; i++, y++) {
        struct row *rw = &rows[i];
        kvs_w_printf(w, t, y, r.x, 12, KVS_C_DIM, "%-11s", rw->name);
        bool bv = isfinite(rw->bv), av = pin && isfinite(rw->av);
        kvs_w_text(w, t, y, r.x + 12, cw, bv ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(x1, sizeof x1, bv, rw->fmt, rw->bv * rw->mul));
        if (!pin || r.x + 12 + 2 * cw >= r.x + r.w) continue;
        kvs_w_text(w, t, y, r.x + 12 + cw + 1, cw, av ? KVS_C_TEXT : KVS_C_NA, kvs_fmt_f(x2, sizeof x2, av, rw->fmt, rw->av * rw->mul));
        if (bv && av) {
            double d = (rw->bv - rw->av) * rw->mul;
            char f[16];
            snprintf(f, sizeof f, "%%+%s", rw->fmt + 1);
            bool worse = rw->lower_better ? d > 0 : d < 0;
            bool same = fabs(d) < 1e-9;
            kvs_w_text(w, t, y, r.x + 12 + 2 * cw + 2, r.w - 14 - 2 * cw, same ? KVS_C_DIM : worse ? KVS_C_WARN : KVS_C_GOOD,
                       kvs_fmt_f(x3, sizeof x3, true, f, d));
        } else {
            kvs_w_text(w, t, y, r.x + 12 + 2 * cw + 2, r.w - 14 - 2 * cw, KVS_C_NA, "n/a");
        }
    }
}

static bool q_key(struct kvs_panel_state *st, int key)
{
    if (key == 'k') { st->mode = !st->mode; return true; }
    return kvs_view_scroll_key(st, key);
}

const struct kvs_panel kvs_panel_quality = {
    .name = "quality",
    .title = "Quality",
    .layout = q_layout,
    .draw = q_draw,
    .key = q_key,
    .help = "Up/Down\tscroll the metrics\n"
            "k\tmetrics / KL-against-CR curve of the session's runs\n",
};
