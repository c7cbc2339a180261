/* Frame drawing (see frame.h) and the panel registry. Small panels lose their border before they
 * lose content; nothing is drawn outside a layout rectangle. Depends on curses and views/. */
#include "frame.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const struct kvs_panel *const kvs_panels[KVS_PANEL_COUNT] = {
    &kvs_panel_similarity, &kvs_panel_budgets, &kvs_panel_memory,
    &kvs_panel_tokens,     &kvs_panel_profiler, &kvs_panel_quality,
};

const struct kvs_rec_step *kvs_view_step(const struct kvs_view_ctx *v)
{
    if (!v->h->n_steps) return NULL;
    uint64_t c = v->live || v->cursor >= v->h->n_steps ? v->h->n_steps - 1 : v->cursor;
    const struct kvs_rec_step *s = kvs_history_step(v->h, c);
    if (!s) s = kvs_history_step(v->h, kvs_history_first(v->h));
    return s;
}

void kvs_view_empty(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const char *why)
{
    kvs_w_text(w, v->t, r.y, r.x, r.w, KVS_C_DIM, why);
}

bool kvs_view_scroll_key(struct kvs_panel_state *st, int key)
{
    switch (key) {
    case KEY_DOWN: st->scroll++; return true;
    case KEY_UP: if (st->scroll > 0) st->scroll--; return true;
    case KEY_NPAGE: st->scroll += 10; return true;
    case KEY_PPAGE: st->scroll = st->scroll > 10 ? st->scroll - 10 : 0; return true;
    default: return false;
    }
}

void kvs_frame_layout_req(const struct kvs_view_ctx *v, int w, int h, bool scrubber, int focus, int zoom,
                          struct kvs_layout_req *rq)
{
    memset(rq, 0, sizeof *rq);
    rq->w = w;
    rq->h = h;
    rq->scrubber = scrubber;
    rq->focus = focus;
    rq->zoom = zoom;
    for (int p = 0; p < KVS_PANEL_COUNT; p++)
        if (kvs_panels[p]->layout) kvs_panels[p]->layout(v, &rq->min_w[p], &rq->min_h[p]);
}

int kvs_frame_hit_panel(const struct kvs_layout *lay, int x, int y)
{
    for (int p = 0; p < KVS_PANEL_COUNT; p++)
        if (kvs_rect_contains(lay->panel[p], x, y)) return p;
    return -1;
}

/* The scrubber track spans the middle of its row: [x0, x1). */
static void scrub_track(const struct kvs_layout *lay, int *x0, int *x1)
{
    *x0 = lay->scrub.x + (lay->scrub.w >= 40 ? 9 : 2);
    *x1 = lay->scrub.x + lay->scrub.w - (lay->scrub.w >= 40 ? 26 : 2);
}

double kvs_frame_hit_scrub(const struct kvs_layout *lay, int x, int y)
{
    if (!kvs_rect_contains(lay->scrub, x, y)) return -1;
    int x0, x1;
    scrub_track(lay, &x0, &x1);
    if (x1 <= x0 + 1) return -1;
    if (x < x0) return 0;
    if (x >= x1) return 1;
    return (double)(x - x0) / (double)(x1 - 1 - x0);
}

static void draw_status(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const struct kvs_frame_info *fi)
{
    const struct kvs_theme *t = v->t;
    kvs_w_fill(w, t, r, KVS_C_STATUS);
    const struct kvs_rec_run *run = kvs_view_run(v);
    const struct kvs_rec_step *s = kvs_view_step(v);
    char buf[256];
    int x = 0;
    if (r.w >= 40) x += kvs_w_text(w, t, r.y, r.x, r.w, KVS_C_STATUS, " kvscope ");
    x += kvs_w_printf(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, "%s%s ", fi->mode ? fi->mode : "", fi->pinned ? " A/B" : "");
    if (fi->settings) {
        snprintf(buf, sizeof buf, "%s%s ", fi->settings, fi->pending ? "*" : "");
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, buf);
    }
    if (s) {
        char cr[16];
        bool ok = s->valid & KVS_VALID_BYTES;
        snprintf(buf, sizeof buf, "| CR %s | step %llu/%llu ctx %u ", kvs_fmt_f(cr, sizeof cr, ok, "%.3f", s->cr_achieved),
                 (unsigned long long)s->step, (unsigned long long)(v->h->n_steps ? v->h->n_steps - 1 : 0), s->n_ctx);
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, buf);
    }
    /* the card's used/total memory (CUDA runs only; the CPU has none to show), whole or not at all */
    if (s && s->dev_mem_total) {
        int n = snprintf(buf, sizeof buf, "| GPU %.1f/%.1f GiB ", (double)s->dev_mem_used / 1073741824.0,
                         (double)s->dev_mem_total / 1073741824.0);
        if (n > 0 && n <= r.w - x) x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, buf);
    }
    if (run && r.w - x > 20) {
        snprintf(buf, sizeof buf, "| %s %s ", run->model, run->backend);
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, buf);
    }
    if (fi->gpu_note && r.w - x > 12) {
        snprintf(buf, sizeof buf, "| GPU: %s", fi->gpu_note);
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_STATUS, buf);
    }
    (void)x;
}

static void draw_keys(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, const struct kvs_frame_info *fi)
{
    const struct kvs_theme *t = v->t;
    kvs_w_fill(w, t, r, KVS_C_TEXT);
    int x = 0;
    if (fi->busy || fi->progress) {
        static const char *spin_u[] = {"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"};
        static const char spin_a[] = "|/-\\";
        if (fi->busy) {
            kvs_w_glyph(w, t, r.y, r.x, KVS_C_WARN, spin_u[fi->spin % 10], spin_a[fi->spin % 4]);
            x = 2;
        }
        if (fi->progress) x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_WARN, fi->progress);
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_DIM, "  ");
    }
    if (fi->message) {
        kvs_w_text(w, t, r.y, r.x + x, r.w - x, fi->message_role, fi->message);
        return;
    }
    /* key bar: "KEY desc  KEY desc", keys highlighted; tokens separated by two spaces */
    const char *p = fi->keys_line ? fi->keys_line : "";
    while (*p && x < r.w) {
        const char *sp = strchr(p, ' ');
        size_t kl = sp ? (size_t)(sp - p) : strlen(p);
        char key[32];
        if (kl >= sizeof key) kl = sizeof key - 1;
        memcpy(key, p, kl);
        key[kl] = 0;
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_KEY, key);
        p += kl;
        const char *end = strstr(p, "  ");
        size_t dl = end ? (size_t)(end - p) : strlen(p);
        char desc[64];
        if (dl >= sizeof desc) dl = sizeof desc - 1;
        memcpy(desc, p, dl);
        desc[dl] = 0;
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_DIM, desc);
        p += dl;
        while (*p == ' ') p++;
        x += kvs_w_text(w, t, r.y, r.x + x, r.w - x, KVS_C_DIM, "  ");
    }
}

/* Seconds as a short label: "0s", "2.5s", "90s", "12m". */
static void fmt_secs(char *b, size_t n, double s)
{
    if (s >= 600) snprintf(b, n, "%.0fm", s / 60);
    else if (s >= 10 || s == floor(s)) snprintf(b, n, "%.0fs", s);
    else if (s * 10 == floor(s * 10)) snprintf(b, n, "%.1fs", s);
    else snprintf(b, n, "%.2fs", s);
}

/* The time axis on the track [X0, X1): a label at each multiple of a round interval of
 * run-relative seconds (every run starts again at 0 s), as many as fit without touching. */
static void draw_time_axis(WINDOW *w, const struct kvs_theme *t, int y, int x0, int x1, const struct kvs_frame_info *fi)
{
    uint64_t n = fi->scrub_len < fi->n_scrub_t ? fi->scrub_len : fi->n_scrub_t;
    int W = x1 - x0;
    if (n < 2 || W < 8) return;
    /* the time the track spans: each run's last step end, summed */
    double total = 0;
    for (size_t k = 0; k < fi->n_scrub_runs || k == 0; k++) {
        uint64_t end = k + 1 < fi->n_scrub_runs ? fi->scrub_runs[k + 1] : n;
        if (end > n) end = n;
        if (end >= 1) total += (double)fi->scrub_t[end - 1] / 1e9;
        if (!fi->n_scrub_runs) break;
    }
    static const double ticks[] = {0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600};
    double tick = ticks[KVS_ARRAY_LEN(ticks) - 1];
    for (size_t i = 0; i < KVS_ARRAY_LEN(ticks); i++)
        if (total / ticks[i] <= W / 7.0) { tick = ticks[i]; break; }
    int free_x = 0;
    int64_t prev_b = -1;
    size_t run = 0;
    for (int j = 0; j < W; j++) {
        uint64_t s = (uint64_t)((double)j * (double)(n - 1) / (double)(W - 1) + 0.5);
        size_t r = run;
        while (r + 1 < fi->n_scrub_runs && fi->scrub_runs[r + 1] <= s) r++;
        int64_t b = (int64_t)floor((double)fi->scrub_t[s] / 1e9 / tick);
        bool label = j == 0 || r != run || b > prev_b;
        if (r != run) b = 0; /* a new run starts its clock again */
        run = r;
        prev_b = b;
        if (!label || j < free_x) continue;
        char lb[16];
        fmt_secs(lb, sizeof lb, (double)b * tick);
        int lx = j + 1; /* right of the tick's cell, where the position or a run mark may be */
        int len = (int)strlen(lb);
        if (lx + len > W) continue;
        /* a label stops short of the next run's mark, so every run's "0s" has its room */
        if (run + 1 < fi->n_scrub_runs) {
            int next = (int)((double)fi->scrub_runs[run + 1] * (double)(W - 1) / (double)(n - 1) + 0.5);
            if (lx + len >= next) continue;
        }
        kvs_w_text(w, t, y, x0 + lx, len, KVS_C_KEY, lb);
        free_x = lx + len + 1;
    }
}

static void draw_scrub(WINDOW *w, const struct kvs_layout *lay, const struct kvs_view_ctx *v, const struct kvs_frame_info *fi)
{
    const struct kvs_theme *t = v->t;
    struct kvs_rect r = lay->scrub;
    kvs_w_fill(w, t, r, KVS_C_TEXT);
    int x0, x1;
    scrub_track(lay, &x0, &x1);
    if (r.w >= 40) kvs_w_printf(w, t, r.y, r.x, 9, KVS_C_KEY, "%s %5.2gx", fi->playing ? KVS_G(t, "▶", ">") : KVS_G(t, "⏸", "="), fi->speed);
    double f = fi->scrub_len > 1 ? (double)fi->scrub_pos / (double)(fi->scrub_len - 1) : 0;
    if (x1 > x0) {
        kvs_w_bar(w, t, r.y, x0, x1 - x0, f, KVS_C_BAR_HELD);
        if (fi->scrub_t) draw_time_axis(w, t, r.y, x0, x1, fi);
        /* the marked loop range */
        const uint64_t ends[2] = {fi->loop_in, fi->loop_out};
        const bool has[2] = {fi->has_in, fi->has_out};
        for (int e = 0; e < 2 && fi->scrub_len > 1; e++) {
            if (!has[e]) continue;
            double fe = (double)ends[e] / (double)(fi->scrub_len - 1);
            if (fe > 1) fe = 1;
            kvs_w_glyph(w, t, r.y, x0 + (int)(fe * (x1 - 1 - x0) + 0.5), fi->loop ? KVS_C_GOOD : KVS_C_WARN,
                        e ? "]" : "[", e ? ']' : '[');
        }
        /* run boundaries: where each run after the first starts */
        for (size_t k = 1; k < fi->n_scrub_runs && fi->scrub_len > 1; k++) {
            double fk = (double)fi->scrub_runs[k] / (double)(fi->scrub_len - 1);
            if (fk > 1) continue;
            kvs_w_glyph(w, t, r.y, x0 + (int)(fk * (x1 - 1 - x0) + 0.5), KVS_C_BAR_REF, "┃", '|');
        }
        int px = x0 + (int)(f * (x1 - 1 - x0) + 0.5);
        kvs_w_glyph(w, t, r.y, px, KVS_C_FOCUS, "●", 'O');
    }
    if (r.w >= 40)
        kvs_w_printf(w, t, r.y, x1 + 1, r.x + r.w - x1 - 1, KVS_C_TEXT, "%llu/%llu %s", (unsigned long long)fi->scrub_pos,
                     (unsigned long long)(fi->scrub_len ? fi->scrub_len - 1 : 0), fi->scrub_extra ? fi->scrub_extra : "");
}

/* One row of the help overlay: a key column and a piece of its description. */
struct help_row {
    const char *key;
    const char *what;
    int len;            /* bytes of WHAT on this row */
    bool head;          /* a section heading */
};

#define HELP_ROWS 256

/* Appends KEY/WHAT wrapped at spaces to WIDTH bytes per row (the texts are ASCII). */
static int help_wrap(struct help_row *rows, int n, const char *key, const char *what, int width, bool head)
{
    if (width < 8) width = 8;
    const char *p = what;
    bool first = true;
    do {
        int len = (int)strlen(p);
        if (len > width) {
            int cut = width;
            while (cut > 0 && p[cut] != ' ') cut--;
            len = cut > 0 ? cut : width;
        }
        if (n < HELP_ROWS) rows[n++] = (struct help_row){first ? key : "", p, len, head};
        p += len;
        while (*p == ' ') p++;
        first = false;
    } while (*p);
    return n;
}

/* The help overlay: the caller's keys (live or replay), then every panel's own keys under its
 * name, each description wrapped to the overlay's width; when it does not fit, the last row says
 * which rows are shown and how to scroll. */
static void draw_help(WINDOW *w, int sw, int sh, const struct kvs_view_ctx *v, const struct kvs_frame_info *fi, int focus)
{
    const struct kvs_theme *t = v->t;
    int bw = sw >= 96 ? 96 : sw;
    bool border = bw >= 10 && sh >= 4;
    int inw = border ? bw - 2 : bw;
    int kw = inw >= 50 ? 19 : inw / 3;
    int tw = inw - kw;
    static struct help_row rows[HELP_ROWS];
    static char heads[KVS_PANEL_COUNT][48];
    static char store[KVS_PANEL_COUNT][16][96];
    int n = 0;
    for (int k = 0; k < fi->n_help; k++) n = help_wrap(rows, n, fi->help_lines[k].key, fi->help_lines[k].what, tw, false);
    for (int p = 0; p < KVS_PANEL_COUNT; p++) {
        const char *ph = kvs_panels[p]->help;
        if (!ph) continue;
        snprintf(heads[p], sizeof heads[p], "%d %s panel%s:", p + 1, kvs_panels[p]->title, p == focus ? " (focused)" : "");
        n = help_wrap(rows, n, "", heads[p], tw, true);
        for (int i = 0; *ph && i < 16; i++) {
            const char *nl = strchr(ph, '\n');
            size_t len = nl ? (size_t)(nl - ph) : strlen(ph);
            if (len >= sizeof store[p][i]) len = sizeof store[p][i] - 1;
            memcpy(store[p][i], ph, len);
            store[p][i][len] = 0;
            char *tab = strchr(store[p][i], '\t');
            if (tab) {
                *tab = 0;
                n = help_wrap(rows, n, store[p][i], tab + 1, tw, false);
            }
            ph = nl ? nl + 1 : ph + len;
        }
    }
    int bh = n + 2 < sh ? n + 2 : sh;
    if (!border) bh = n < sh ? n : sh;
    struct kvs_rect box = {(sw - bw) / 2, (sh - bh) / 2, bw, bh};
    kvs_w_fill(w, t, box, KVS_C_TEXT);
    if (border) kvs_w_box(w, t, box, "Help: keys (? or Esc closes)", true);
    struct kvs_rect in = border ? kvs_rect_inset(box, 1) : box;
    bool more = n > in.h;
    int body = more ? in.h - 1 : in.h;
    if (body < 0) body = 0;
    int maxs = n - body > 0 ? n - body : 0;
    if (fi->help_scroll_max) *fi->help_scroll_max = maxs;
    int first = fi->help_scroll < maxs ? fi->help_scroll : maxs;
    if (first < 0) first = 0;
    for (int i = 0; i < body && first + i < n; i++) {
        const struct help_row *hr = &rows[first + i];
        char b[128];
        int len = hr->len < (int)sizeof b - 1 ? hr->len : (int)sizeof b - 1;
        memcpy(b, hr->what, (size_t)len);
        b[len] = 0;
        kvs_w_text(w, t, in.y + i, in.x, kw, KVS_C_KEY, hr->key);
        kvs_w_text(w, t, in.y + i, in.x + kw, in.w - kw, hr->head ? KVS_C_TITLE : KVS_C_TEXT, b);
    }
    if (more && in.h >= 1) {
        int last = first + body < n ? first + body : n;
        kvs_w_printf(w, t, in.y + in.h - 1, in.x, in.w, KVS_C_FOCUS, "%s rows %d-%d of %d: Up/Down PgUp/PgDn scroll",
                     first > 0 && last < n ? KVS_G(t, "↕", "<>") : first > 0 ? KVS_G(t, "↑", "^") : KVS_G(t, "↓", "v"),
                     first + 1, last, n);
    }
}

void kvs_frame_draw(WINDOW *w, const struct kvs_layout *lay, const struct kvs_view_ctx *v,
                    struct kvs_panel_state st[KVS_PANEL_COUNT], const struct kvs_frame_info *fi)
{
    const struct kvs_theme *t = v->t;
    int sw = getmaxx(w), sh = getmaxy(w);
    wbkgdset(w, ' ' | kvs_attr(t, KVS_C_TEXT));
    werase(w);
    if (!kvs_rect_empty(lay->status)) draw_status(w, lay->status, v, fi);
    for (int p = 0; p < KVS_PANEL_COUNT; p++) {
        struct kvs_rect r = lay->panel[p];
        if (kvs_rect_empty(r)) continue;
        st[p].focused = p == fi->focus;
        struct kvs_rect in;
        if (r.w >= 12 && r.h >= 4) {
            char title[80];
            if (lay->n_visible == 1) snprintf(title, sizeof title, "%d %s  (Tab: next)", p + 1, kvs_panels[p]->title);
            else snprintf(title, sizeof title, "%d %s", p + 1, kvs_panels[p]->title);
            kvs_w_box(w, t, r, title, st[p].focused && lay->n_visible > 1);
            in = kvs_rect_inset(r, 1);
        } else {
            /* too small for a border: a title row, then content */
            kvs_w_printf(w, t, r.y, r.x, r.w, KVS_C_FOCUS, "%d %s", p + 1, kvs_panels[p]->title);
            in = (struct kvs_rect){r.x, r.y + 1, r.w, r.h - 1};
        }
        if (!kvs_rect_empty(in)) kvs_panels[p]->draw(w, in, v, &st[p]);
    }
    if (fi->stale) {
        /* the previous run stays readable but dimmed, and says what it is */
        for (int p = 0; p < KVS_PANEL_COUNT; p++) {
            struct kvs_rect r = lay->panel[p];
            for (int yy = r.y; yy < r.y + r.h; yy++)
                for (int xx = r.x; xx < r.x + r.w; xx++) {
                    cchar_t cc;
                    if (mvwin_wch(w, yy, xx, &cc) == ERR) continue;
                    wchar_t wc[CCHARW_MAX + 1];
                    attr_t a;
                    short pair;
                    if (getcchar(&cc, wc, &a, &pair, NULL) == ERR) continue;
                    a = (a & ~A_BOLD) | A_DIM;
                    if (setcchar(&cc, wc, a, pair, NULL) == OK) mvwadd_wch(w, yy, xx, &cc);
                }
        }
        if (!kvs_rect_empty(lay->status)) {
            int sx = lay->status.w > 60 ? lay->status.w / 3 : 0;
            kvs_w_text(w, t, lay->status.y, sx, lay->status.w - sx, KVS_C_WARN, fi->stale);
        }
    }
    if (!kvs_rect_empty(lay->scrub)) draw_scrub(w, lay, v, fi);
    if (!kvs_rect_empty(lay->keys)) draw_keys(w, lay->keys, v, fi);
    else if (fi->message && !kvs_rect_empty(lay->status)) {
        /* no key bar on small screens: messages take the status line */
        kvs_w_fill(w, t, lay->status, KVS_C_STATUS);
        kvs_w_text(w, t, lay->status.y, 0, lay->status.w, KVS_C_STATUS, fi->message);
    }
    if (fi->help) draw_help(w, sw, sh, v, fi, fi->focus);
}
