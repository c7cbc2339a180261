/* Panels drawn into an off-screen curses screen (newterm on /dev/null, TERM=xterm-256color) from
 * synthetic records: real numbers where valid, n/a (never 0) where a validity bit is clear, red for
 * zero budgets and zero kept tokens, A/B divergence, every frame size down to 20x6. Also the record
 * history ring. Modes: --bench (median full-frame time at 200x60), --tiny-model PATH (writes the
 * deterministic tiny GGUF model the TUI tests run on). */
#include "crt.h"
#include "frame.h"
#include "harness.h"
#include "history.h"
#include "tinymodel.h"
#include "view.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NL 30
#define G 4
#define NG ((NL + G - 1) / G)

/* ---- a synthetic record producer (test only) ---- */
static struct kvs_record *mk_run(const char *method)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_RUN, 0);
    struct kvs_rec_run *u = &r->u.run;
    snprintf(u->model, sizeof u->model, "synthetic");
    snprintf(u->backend, sizeof u->backend, "cpu");
    snprintf(u->method, sizeof u->method, "%s", method);
    u->n_layer = NL; u->n_embd = 576; u->n_head = 9; u->n_head_kv = 3; u->head_dim = 64;
    u->target_cr = 0.5f; u->rank_ratio = 0.5f; u->group_size = G; u->n_groups = NG;
    u->sinks = 4; u->recent = 128;
    return r;
}

static struct kvs_record *mk_matrix(uint32_t kind)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, NL * NL);
    r->u.matrix.kind = kind;
    r->u.matrix.rows = r->u.matrix.cols = NL;
    for (int i = 0; i < NL; i++)
        for (int j = 0; j < NL; j++) {
            float v = expf(-fabsf((float)(i - j)) / (kind == KVS_MAT_SIM_KEYS ? 2.0f : 6.0f));
            if (kind == KVS_MAT_SIM_LATENT && i / G != j / G) v = NAN;
            r->u.matrix.v[i * NL + j] = v;
        }
    return r;
}

/* Step I: prefill for i == 0, else a decode step producing token i; FLAGS its validity bits. */
static struct kvs_record *mk_step(uint64_t i, uint32_t valid, int token_base)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
    struct kvs_rec_step *s = &r->u.step;
    s->step = i;
    s->kind = i == 0 ? KVS_STEP_PREFILL : KVS_STEP_DECODE;
    s->n_new = i == 0 ? 100 : 1;
    s->n_ctx = 100 + (uint32_t)i;
    s->token = token_base + (int)i;
    snprintf(s->piece, sizeof s->piece, " w%d", token_base + (int)i);
    s->t_start_ns = 1000000ull * (10 + i * 20);
    s->t_end_ns = s->t_start_ns + 15000000ull + (i % 3) * 1000000ull;
    s->valid = valid;
    s->n_layer = NL;
    s->n_groups = NG;
    for (int l = 0; l < NL - 1; l++) s->layer_sim[l] = 0.9f - 0.01f * l;
    for (int g = 0; g < NG; g++) {
        s->group_sim[g] = 0.8f;
        s->group_rank[g] = g == 2 ? 0 : 100 + 20 * g;  /* group 2: zero budget */
        s->group_merged[g] = 0.1f * g;
    }
    uint64_t per = (uint64_t)s->n_ctx * 2 * 3 * 64 * 2;
    for (int l = 0; l < NL; l++) {
        s->layer_kept[l] = l == 5 ? 0 : s->n_ctx;      /* layer 5 keeps nothing */
        s->layer_bytes_held[l] = per / 2;
    }
    s->bytes_full = per * NL;
    s->bytes_held = per * NL / 2;
    s->bytes_alloc = per * NL;
    s->cr_target = 0.5f;
    s->cr_achieved = 0.5f;
    s->logprob = -1.0f;
    s->ppl = 3.25f; s->kl = 0.0125f; s->top1 = 0.96f;
    for (int o = 0; o < KVS_OP_COUNT; o++) {
        s->ops[o].ns = 1000000ull * (KVS_OP_COUNT - o);
        s->ops[o].bytes = 1u << 20;
        s->ops[o].flops = 1000000000ull;
        s->ops[o].calls = 30;
    }
    return r;
}

static struct kvs_record *mk_log(uint32_t level, const char *text)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_LOG, 0);
    r->u.log.level = level;
    snprintf(r->u.log.text, sizeof r->u.log.text, "%s", text);
    return r;
}

/* Group G's spectrum: singular values 1/(1+i), i < 200 */
static struct kvs_record *mk_spectrum(uint32_t g)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, 200);
    r->u.matrix.kind = KVS_MAT_SPECTRUM;
    r->u.matrix.group = g;
    r->u.matrix.rows = 1;
    r->u.matrix.cols = 200;
    for (int i = 0; i < 200; i++) r->u.matrix.v[i] = 1.0f / (1.0f + (float)i);
    return r;
}

static void feed(struct kvs_history *h, const char *method, int n_steps, uint32_t valid, int token_base)
{
    kvs_history_push(h, mk_run(method));
    kvs_history_push(h, mk_log(0, "profiler: no NVIDIA driver"));
    for (uint32_t k = 1; k <= 3; k++) kvs_history_push(h, mk_matrix(k));
    for (int i = 0; i < n_steps; i++) kvs_history_push(h, mk_step((uint64_t)i, valid, token_base));
}

#define ALL_VALID (KVS_VALID_LAYER_SIM | KVS_VALID_GROUP_SIM | KVS_VALID_BUDGET | KVS_VALID_BYTES | KVS_VALID_QUALITY | \
                   KVS_VALID_LOGPROB | KVS_VALID_OPS)

/* ---- reading the screen back ---- */
static int W = 200, H = 60;

/* Row Y of the screen, cells [x0, x0+w), as UTF-8 into buf. */
static char *row_text(int y, int x0, int w, char *buf, size_t n)
{
    size_t o = 0;
    for (int x = x0; x < x0 + w && o + 8 < n; x++) {
        cchar_t cc;
        wchar_t wc[CCHARW_MAX + 1];
        attr_t a;
        short pair;
        if (mvwin_wch(stdscr, y, x, &cc) == ERR) break;
        getcchar(&cc, wc, &a, &pair, NULL);
        if (wc[0] == 0) continue;
        char mb[8];
        int k = wctomb(mb, wc[0]);
        if (k <= 0) { mb[0] = '?'; k = 1; }
        memcpy(buf + o, mb, (size_t)k);
        o += (size_t)k;
    }
    buf[o] = 0;
    return buf;
}

/* True when TEXT appears anywhere in rectangle R. */
static bool screen_has(struct kvs_rect r, const char *text)
{
    char buf[2048];
    for (int y = r.y; y < r.y + r.h; y++)
        if (strstr(row_text(y, r.x, r.w, buf, sizeof buf), text)) return true;
    return false;
}

/* Screen position of the first occurrence of TEXT in R (cell x of its first byte), false if none. */
static bool screen_find(struct kvs_rect r, const char *text, int *fx, int *fy)
{
    for (int y = r.y; y < r.y + r.h; y++)
        for (int x = r.x; x < r.x + r.w; x++) {
            char buf[256];
            row_text(y, x, (int)strlen(text), buf, sizeof buf);
            if (strcmp(buf, text) == 0) { *fx = x; *fy = y; return true; }
        }
    return false;
}

static short cell_pair(int y, int x, attr_t *attrs)
{
    cchar_t cc;
    wchar_t wc[CCHARW_MAX + 1];
    attr_t a;
    short pair = -1;
    if (mvwin_wch(stdscr, y, x, &cc) == ERR) return -1;
    getcchar(&cc, wc, &a, &pair, NULL);
    if (attrs) *attrs = a;
    return pair;
}

static int count_pair(struct kvs_rect r, short pair)
{
    int n = 0;
    for (int y = r.y; y < r.y + r.h; y++)
        for (int x = r.x; x < r.x + r.w; x++)
            if (cell_pair(y, x, NULL) == pair) n++;
    return n;
}

static int count_nonblank(struct kvs_rect r)
{
    char buf[2048];
    int n = 0;
    for (int y = r.y; y < r.y + r.h; y++) {
        row_text(y, r.x, r.w, buf, sizeof buf);
        for (char *p = buf; *p; p++) n += *p != ' ';
    }
    return n;
}

static struct kvs_theme theme;

static void draw_panel(int p, const struct kvs_view_ctx *v, struct kvs_rect r)
{
    struct kvs_panel_state st = {0};
    werase(stdscr);
    kvs_panels[p]->draw(stdscr, r, v, &st);
}

static void test_history(void)
{
    struct kvs_history h;
    CHECK(kvs_history_init(&h, 8) == KVS_OK);
    feed(&h, "commonkv", 20, ALL_VALID, 0);
    CHECK(h.n_steps == 20);
    CHECK(kvs_history_first(&h) == 12);
    CHECK(kvs_history_step(&h, 11) == NULL);
    CHECK(kvs_history_step(&h, 12) && kvs_history_step(&h, 12)->step == 12);
    CHECK(kvs_history_step(&h, 19) && kvs_history_step(&h, 20) == NULL);
    CHECK(h.tok.n == 19);                       /* every step but the prefill */
    CHECK(kvs_history_tokens_upto(&h, 0) == 0);
    CHECK(kvs_history_tokens_upto(&h, 5) == 5);
    CHECK(kvs_history_tokens_upto(&h, 100) == 19);
    CHECK(h.mat[KVS_MAT_SIM_LATENT] != NULL);
    CHECK(kvs_history_log(&h, 0) && strstr(kvs_history_log(&h, 0)->text, "NVIDIA"));
    CHECK(h.ops_total[KVS_OP_MATMUL].calls == 20 * 30);
    struct kvs_hist_pin pin = {0};
    kvs_history_pin(&h, 15, &pin);
    CHECK(pin.set && pin.tok.n == 15 && pin.step && pin.step->u.step.step == 15);
    /* a new run forgets the old one but the pin keeps it */
    feed(&h, "full", 3, ALL_VALID, 0);
    CHECK(h.n_steps == 3 && h.tok.n == 2 && h.n_runs == 2);
    CHECK(strcmp(pin.run->u.run.method, "commonkv") == 0);
    kvs_hist_pin_free(&pin);
    kvs_history_free(&h);
}

static void test_panels_valid(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 256);
    feed(&h, "commonkv", 12, ALL_VALID, 0);
    struct kvs_view_ctx v = {.h = &h, .cursor = 11, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_HIDDEN};
    struct kvs_rect r = {2, 2, 70, 40};

    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    CHECK(screen_has(r, "[hidden]"));
    int heat = 0;
    for (int l = 0; l < KVS_HEAT_LEVELS; l++) heat += count_pair(r, theme.pair[KVS_C_HEAT0 + l]);
    CHECKF(heat >= NL * NL, "heat cells %d", heat);
    v.sim_kind = KVS_MAT_SIM_LATENT;
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    CHECK(screen_has(r, "[latent]"));
    CHECK(count_pair(r, theme.pair[KVS_C_NA]) > 0);      /* NaN outside groups */

    draw_panel(KVS_PANEL_BUDGETS, &v, r);
    int x, y;
    CHECK(screen_has(r, "g2"));
    CHECK(screen_find(r, "   0/", &x, &y));
    /* group 2's rank of 0 is red */
    if (screen_find(r, "g2", &x, &y)) {
        int zx = -1;
        char buf[256];
        row_text(y, r.x, r.w, buf, sizeof buf);
        char *p = strstr(buf, "   0");
        if (p) zx = r.x + (int)(p - buf) + 3;
        CHECKF(zx >= 0 && cell_pair(y, zx, NULL) == theme.pair[KVS_C_BAD], "zero rank not red");
    }
    CHECK(screen_has(r, "1 layer keep 0"));
    CHECK(count_pair(r, theme.pair[KVS_C_BAD]) >= 3);    /* the rank, its bar track, the note, the zero layer */
    CHECK(!screen_has(r, "energy"));                     /* no spectrum records yet */
    /* with spectra: the share of energy each group's rank keeps (sum of 1/(1+i)^2 over i < rank,
     * of i < 200), n/a for a group without one */
    for (uint32_t g = 0; g < NG; g++)
        if (g != 1) kvs_history_push(&h, mk_spectrum(g));
    draw_panel(KVS_PANEL_BUDGETS, &v, r);
    CHECK(screen_has(r, "energy"));
    double all = 0, k0 = 0, k3 = 0;
    for (int i = 0; i < 200; i++) {
        double s2 = 1.0 / ((1.0 + i) * (1.0 + i));
        all += s2;
        if (i < 100) k0 += s2;
        if (i < 160) k3 += s2;
    }
    char want[64];
    snprintf(want, sizeof want, "g0   0-3   100/200 ");
    CHECK(screen_has(r, want));
    snprintf(want, sizeof want, "%5.1f%%", 100.0 * k0 / all);
    CHECKF(screen_find(r, want, &x, &y), "group 0 energy %s", want);
    snprintf(want, sizeof want, "%5.1f%%", 100.0 * k3 / all);
    CHECKF(screen_has(r, want), "group 3 energy %s", want);
    CHECK(screen_has(r, "  0.0%"));                      /* group 2: rank 0 keeps nothing */
    CHECK(screen_has(r, "n/a"));                         /* group 1: no spectrum */
    struct kvs_rect nr = {2, 2, 42, 40};                 /* narrower: whole percents, rounded down */
    draw_panel(KVS_PANEL_BUDGETS, &v, nr);
    snprintf(want, sizeof want, "%3.0f%%", floor(100.0 * k0 / all));
    CHECKF(screen_has(nr, "energy") && screen_has(nr, want), "narrow budgets: group 0 energy %s", want);

    draw_panel(KVS_PANEL_MEMORY, &v, r);
    CHECK(screen_has(r, "achieved 0.500"));
    CHECK(screen_has(r, "KiB"));
    CHECK(screen_has(r, "L05"));

    draw_panel(KVS_PANEL_TOKENS, &v, r);
    CHECK(screen_has(r, "w1 w2 w3"));
    CHECK(screen_has(r, "TTFT 46.0 ms"));
    CHECK(screen_has(r, "tok/s"));

    draw_panel(KVS_PANEL_PROFILER, &v, r);
    CHECK(screen_has(r, "matmul"));
    CHECK(screen_has(r, "profiler: no NVIDIA driver"));

    draw_panel(KVS_PANEL_QUALITY, &v, r);
    CHECK(screen_has(r, "KL 0.0125"));
    CHECK(screen_has(r, "top-1 96.0%"));
    kvs_history_free(&h);
}

static struct kvs_record *mk_quality(uint32_t n_tokens, float kl, float ppl, float ppl_full)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_QUALITY, 0);
    snprintf(r->u.quality.method, sizeof r->u.quality.method, "commonkv");
    r->u.quality.target_cr = 0.5f;
    r->u.quality.achieved_cr = 0.5f;
    r->u.quality.kl = kl;
    r->u.quality.top1 = n_tokens ? 0.75f : 0.0f;
    r->u.quality.ppl = ppl;
    r->u.quality.ppl_full = ppl_full;
    r->u.quality.passkey_acc = NAN;
    r->u.quality.decode_tps = NAN;
    r->u.quality.n_tokens = n_tokens;
    return r;
}

/* Live quality: both perplexities on the same tokens, setup apart from TTFT, no permanent passkey
 * n/a, a QUALITY record without scored tokens shows n/a (never its KL or 0% top-1), and an
 * allocation beyond a full cache is not shown as a negative CR. */
static void test_quality_live(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 256);
    feed(&h, "commonkv", 12, ALL_VALID, 0);
    struct kvs_view_ctx v = {.h = &h, .cursor = 11, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_HIDDEN};
    struct kvs_rect r = {2, 2, 70, 40};
    kvs_history_push(&h, mk_quality(24, 0.25f, 18.5f, 2.25f));
    draw_panel(KVS_PANEL_QUALITY, &v, r);
    CHECK(screen_has(r, "ppl full"));
    CHECK(screen_has(r, "2.250"));
    CHECK(screen_has(r, "18.500"));
    CHECK(!screen_has(r, "passkey"));
    /* the SVD op of the steps: (KVS_OP_COUNT - KVS_OP_SVD) ms each in mk_step, 12 steps */
    CHECK(screen_has(r, "setup s"));
    char setup[32];
    snprintf(setup, sizeof setup, "%.2f", 12 * (KVS_OP_COUNT - KVS_OP_SVD) / 1000.0);
    CHECKF(screen_has(r, setup), "setup %s s", setup);
    kvs_history_push(&h, mk_quality(0, 2.99f, 1.0f, 1.0f));
    struct kvs_history h2;
    kvs_history_init(&h2, 256);
    feed(&h2, "commonkv", 3, ALL_VALID & ~KVS_VALID_QUALITY, 0);
    kvs_history_push(&h2, mk_quality(0, 2.99f, 1.0f, 1.0f));
    struct kvs_view_ctx v2 = {.h = &h2, .cursor = 2, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_HIDDEN};
    draw_panel(KVS_PANEL_QUALITY, &v2, r);
    CHECK(!screen_has(r, "2.99"));
    CHECK(!screen_has(r, "0.0%"));
    CHECK(screen_has(r, "n/a"));
    /* allocated 1.5x the full cache */
    struct kvs_record *st = mk_step(3, ALL_VALID, 0);
    st->u.step.bytes_alloc = st->u.step.bytes_full + st->u.step.bytes_full / 2;
    kvs_history_push(&h2, st);
    v2.cursor = 3;
    draw_panel(KVS_PANEL_MEMORY, &v2, r);
    CHECK(screen_has(r, "50% over full"));
    CHECK(!screen_has(r, "alloc -"));
    kvs_history_free(&h);
    kvs_history_free(&h2);
}

/* A run the model ended at once (END with no token generated) says so instead of waiting. */
static void test_tokens_ended(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 256);
    kvs_history_push(&h, mk_run("full"));
    kvs_history_push(&h, mk_step(0, ALL_VALID, 0));
    struct kvs_view_ctx v = {.h = &h, .cursor = 0, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_HIDDEN};
    struct kvs_rect r = {0, 0, 70, 12};
    draw_panel(KVS_PANEL_TOKENS, &v, r);
    CHECK(screen_has(r, "(no tokens yet)"));
    struct kvs_record *e = kvs_record_new(KVS_REC_END, 0);
    e->u.end.n_steps = 1;
    e->u.end.n_prompt = 100;
    kvs_history_push(&h, e);
    draw_panel(KVS_PANEL_TOKENS, &v, r);
    CHECK(screen_has(r, "the model ended the text right after the prompt"));
    kvs_history_free(&h);
}

static void test_panels_invalid(void)
{
    /* every validity bit clear: n/a everywhere, never a fabricated 0 */
    struct kvs_history h;
    kvs_history_init(&h, 256);
    kvs_history_push(&h, mk_run("full"));
    for (int i = 0; i < 5; i++) kvs_history_push(&h, mk_step((uint64_t)i, 0, 0));
    struct kvs_view_ctx v = {.h = &h, .cursor = 4, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_HIDDEN};
    struct kvs_rect r = {0, 0, 70, 30};
    for (int p = 0; p < KVS_PANEL_COUNT; p++) {
        if (p == KVS_PANEL_TOKENS) continue; /* tokens and their times carry no validity bits */
        draw_panel(p, &v, r);
        CHECKF(screen_has(r, "n/a"), "panel %s shows no n/a", kvs_panels[p]->name);
    }
    draw_panel(KVS_PANEL_MEMORY, &v, r);
    CHECK(!screen_has(r, "achieved 0.000"));
    CHECK(screen_has(r, "achieved n/a"));
    draw_panel(KVS_PANEL_QUALITY, &v, r);
    CHECK(!screen_has(r, "0.0000"));
    CHECK(screen_has(r, "vs full: n/a"));
    draw_panel(KVS_PANEL_BUDGETS, &v, r);
    CHECK(screen_has(r, "group budgets: n/a"));
    CHECK(count_pair(r, theme.pair[KVS_C_BAD]) == 0);   /* unknown is not zero: no red */
    draw_panel(KVS_PANEL_PROFILER, &v, r);
    CHECK(screen_has(r, "op counters: n/a"));
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    CHECK(screen_has(r, "adj hidden n/a"));
    kvs_history_free(&h);
}

static void test_ab(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 256);
    feed(&h, "full", 10, ALL_VALID, 0);
    struct kvs_hist_pin pin = {0};
    kvs_history_pin(&h, 9, &pin);
    /* run B: same first tokens, then different from token 4 */
    kvs_history_push(&h, mk_run("commonkv"));
    for (int i = 0; i < 10; i++) kvs_history_push(&h, mk_step((uint64_t)i, ALL_VALID, i < 5 ? 0 : 1000));
    struct kvs_view_ctx v = {.h = &h, .pin = &pin, .cursor = 9, .live = true, .t = &theme, .sim_kind = 1};
    struct kvs_rect r = {0, 0, 80, 30};
    draw_panel(KVS_PANEL_TOKENS, &v, r);
    CHECK(screen_has(r, "diverges from A full at token 4"));
    CHECK(screen_has(r, "A: full"));
    draw_panel(KVS_PANEL_QUALITY, &v, r);
    CHECK(screen_has(r, "A full"));
    CHECK(screen_has(r, "B commonkv"));
    kvs_hist_pin_free(&pin);
    kvs_history_free(&h);
}

static void draw_frame(struct kvs_history *h, int w, int hh, bool scrub, int zoom, struct kvs_layout *lay)
{
    struct kvs_view_ctx v = {.h = h, .cursor = h->n_steps ? h->n_steps - 1 : 0, .live = true, .t = &theme, .sim_kind = 1};
    struct kvs_panel_state st[KVS_PANEL_COUNT];
    memset(st, 0, sizeof st);
    struct kvs_layout_req rq;
    kvs_frame_layout_req(&v, w, hh, scrub, 0, zoom, &rq);
    kvs_layout_compute(&rq, lay);
    static const struct kvs_help_line help[] = {{"q", "quit"}, {"?", "help"}};
    struct kvs_frame_info fi = {.mode = "LIVE", .settings = "commonkv CR 0.50", .keys_line = "q quit  ? help",
                                .help_lines = help, .n_help = 2, .speed = 1, .scrub_len = 100, .scrub_pos = 40};
    kvs_frame_draw(stdscr, lay, &v, st, &fi);
}

static void test_frames(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 256);
    feed(&h, "commonkv", 30, ALL_VALID, 0);
    static const int sizes[][2] = {{20, 6}, {24, 8}, {40, 12}, {80, 24}, {120, 40}, {200, 60}, {300, 100}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int w = sizes[i][0], hh = sizes[i][1];
        resize_term(hh, w);
        for (int scrub = 0; scrub < 2; scrub++) {
            struct kvs_layout lay;
            draw_frame(&h, w, hh, scrub, -1, &lay);
            int vis = 0;
            for (int p = 0; p < KVS_PANEL_COUNT; p++) {
                if (kvs_rect_empty(lay.panel[p])) continue;
                vis++;
                CHECKF(count_nonblank(lay.panel[p]) > 5, "%dx%d: panel %d nearly empty", w, hh, p);
            }
            CHECKF(vis >= 1, "%dx%d: nothing visible", w, hh);
            if (scrub) CHECKF(!kvs_rect_empty(lay.scrub) && count_nonblank(lay.scrub) > 0, "%dx%d: no scrubber", w, hh);
        }
    }
    resize_term(24, 80);
    struct kvs_layout lay;
    draw_frame(&h, 80, 24, false, -1, &lay);
    CHECK(screen_has((struct kvs_rect){0, 0, 80, 24}, "1 Similarity"));
    CHECK(screen_has((struct kvs_rect){0, 0, 80, 24}, "6 Quality"));
    /* a live run that cannot use the GPU says why on the status line, with the probe's detail */
    resize_term(40, 200);
    {
        struct kvs_view_ctx v = {.h = &h, .cursor = h.n_steps - 1, .live = true, .t = &theme, .sim_kind = 1};
        struct kvs_panel_state st[KVS_PANEL_COUNT];
        memset(st, 0, sizeof st);
        struct kvs_layout_req rq;
        kvs_frame_layout_req(&v, 200, 40, false, 0, -1, &rq);
        kvs_layout_compute(&rq, &lay);
        struct kvs_frame_info fi = {.mode = "LIVE", .settings = "full", .keys_line = "q quit",
                                    .gpu_note = "no NVIDIA driver (libcuda.so.1: cannot open shared object file)"};
        kvs_frame_draw(stdscr, &lay, &v, st, &fi);
        CHECK(screen_has((struct kvs_rect){0, 0, 200, 1}, "GPU: no NVIDIA driver (libcuda.so.1: cannot open"));
    }
    resize_term(H, W);
    kvs_history_free(&h);
}

/* The card on a CUDA run: the status line shows its used/total memory (whole, or not at all on a
 * narrow screen), the Memory panel says the bytes are device memory (and how much a run left in
 * host memory); a CPU run shows no GPU figure and says host memory. */
static void test_device_memory(void)
{
    for (int k = 0; k < 3; k++) { /* 0: CUDA, every pool on the device; 1: CUDA, packed rows on the host; 2: CPU */
        struct kvs_history h;
        kvs_history_init(&h, 64);
        struct kvs_record *run = mk_run("commonkv");
        snprintf(run->u.run.backend, sizeof run->u.run.backend, "%s", k == 2 ? "cpu" : "cuda");
        kvs_history_push(&h, run);
        for (int i = 0; i < 4; i++) {
            struct kvs_record *r = mk_step((uint64_t)i, ALL_VALID, 0);
            if (k < 2) {
                r->u.step.dev_mem_total = 80ull << 30;
                r->u.step.dev_mem_used = (uint64_t)(3.2 * 1073741824.0);
                r->u.step.dev_pool_bytes = k ? r->u.step.bytes_alloc - (1u << 20) : r->u.step.bytes_alloc;
            }
            kvs_history_push(&h, r);
        }
        struct kvs_layout lay;
        resize_term(40, 200);
        draw_frame(&h, 200, 40, false, -1, &lay);
        struct kvs_rect status = lay.status;
        bool gpu = screen_has(status, "| GPU 3.2/80.0 GiB ");
        CHECKF(k == 2 ? !screen_has(status, "GPU") : gpu, "case %d: status line %s the card's memory", k,
               gpu ? "shows" : "lacks");
        struct kvs_view_ctx v = {.h = &h, .cursor = h.n_steps - 1, .live = true, .t = &theme, .sim_kind = 1};
        struct kvs_rect r = {0, 0, 100, 20};
        draw_panel(2, &v, r);
        CHECKF(screen_has(r, k == 2 ? "KV bytes in host memory" : "KV bytes in device memory"),
               "case %d: the Memory panel does not say whose memory the bytes are", k);
        CHECKF(screen_has(r, "(1.00 MiB in host memory)") == (k == 1), "case %d: host share %s", k,
               k == 1 ? "missing" : "shown without cause");
        CHECKF(screen_has(r, "GPU ") == (k < 2), "case %d: the card's memory in the panel", k);
        /* 60 columns: the status line keeps whole fields, never a cut GPU figure */
        resize_term(24, 60);
        draw_frame(&h, 60, 24, false, -1, &lay);
        char row[512];
        row_text(lay.status.y, 0, 60, row, sizeof row);
        const char *g = strstr(row, "GPU");
        CHECKF(!g || strstr(row, "| GPU 3.2/80.0 GiB") != NULL, "60 columns: a cut GPU figure: \"%s\"", row);
        fprintf(stderr, "   case %d at 60 columns: \"%s\"\n", k, row);
        kvs_history_free(&h);
    }
    resize_term(H, W);
}

static void test_mono(void)
{
    struct kvs_theme mono;
    kvs_theme_setup(&mono, KVS_THEME_MONO, has_colors(), COLORS, true);
    CHECK(!mono.color);
    struct kvs_history h;
    kvs_history_init(&h, 64);
    feed(&h, "commonkv", 3, ALL_VALID, 0);
    struct kvs_view_ctx v = {.h = &h, .cursor = 2, .live = true, .t = &mono, .sim_kind = 1};
    struct kvs_rect r = {0, 0, 70, 30};
    draw_panel(KVS_PANEL_BUDGETS, &v, r);
    int x, y;
    CHECK(screen_find(r, "   0/", &x, &y));
    attr_t a = 0;
    cell_pair(y, x + 3, &a);
    CHECK((a & A_REVERSE) != 0); /* zero budget stands out without colour */
    /* ASCII fallback draws no wide glyphs */
    struct kvs_theme ascii;
    kvs_theme_setup(&ascii, KVS_THEME_MONO, false, 0, false);
    v.t = &ascii;
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    char buf[512];
    bool only_ascii = true;
    for (int yy = 0; yy < 30; yy++) {
        row_text(yy, 0, 70, buf, sizeof buf);
        for (char *p = buf; *p; p++) if ((unsigned char)*p >= 0x80) only_ascii = false;
    }
    CHECK(only_ascii);
    kvs_history_free(&h);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int bench(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 4096);
    feed(&h, "commonkv", 2000, ALL_VALID, 0);
    enum { N = 200 };
    double draw_ms[N], full_ms[N];
    struct kvs_layout lay;
    for (int i = 0; i < N; i++) {
        uint64_t t0 = kvs_now_ns();
        draw_frame(&h, 200, 60, false, -1, &lay);
        uint64_t t1 = kvs_now_ns();
        clearok(curscr, TRUE); /* force a full repaint: the worst case */
        wnoutrefresh(stdscr);
        doupdate();
        uint64_t t2 = kvs_now_ns();
        draw_ms[i] = (double)(t1 - t0) / 1e6;
        full_ms[i] = (double)(t2 - t0) / 1e6;
    }
    qsort(draw_ms, N, sizeof(double), cmp_d);
    qsort(full_ms, N, sizeof(double), cmp_d);
    kvs_crt_offscreen_end();
    printf("bench_views: 200x60 frame, 2000 steps of history, %d frames\n", N);
    printf("  draw (panels into curses)        median %.3f ms  p90 %.3f ms\n", draw_ms[N / 2], draw_ms[N * 9 / 10]);
    printf("  draw + full repaint to /dev/null median %.3f ms  p90 %.3f ms\n", full_ms[N / 2], full_ms[N * 9 / 10]);
    printf("  baseline: one frame at 20 fps = 50 ms; median full frame = %.1f%% of it\n", full_ms[N / 2] / 50.0 * 100);
    kvs_history_free(&h);
    return 0;
}

static int write_tiny(const char *path)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.name = "tiny-tui";
    o.n_layer = 8;
    o.n_embd = 64;
    o.n_head = 4;
    o.n_head_kv = 2;
    o.n_ff = 128;
    o.n_ctx = 2048;
    o.seed = 7;
    if (kvs_tiny_write(path, &o) != 0) {
        fprintf(stderr, "tiny model: %s\n", kvs_tiny_error());
        return 1;
    }
    return 0;
}


/* The similarity story: the strip and its header follow the selected source (the matrix's
 * superdiagonal, not the step's latent layer_sim), one fixed 0..1 colour scale for every source,
 * rows labelled with the layers they cover with the last layer always shown, a cell cursor that
 * reads out its value, and cells that grow when the panel is zoomed. */
static void test_story_similarity(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 64);
    feed(&h, "commonkv", 3, ALL_VALID, 0);
    struct kvs_view_ctx v = {.h = &h, .cursor = 2, .live = true, .t = &theme, .sim_kind = KVS_MAT_SIM_KEYS};
    struct kvs_rect r = {2, 2, 70, 40};
    char want[64];
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    snprintf(want, sizeof want, "adj keys %.3f", expf(-1.0f / 2.0f));
    CHECKF(screen_has(r, want), "keys header %s", want);
    v.sim_kind = KVS_MAT_SIM_HIDDEN;
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    snprintf(want, sizeof want, "adj hidden %.3f", expf(-1.0f / 6.0f));
    CHECKF(screen_has(r, want), "hidden header %s", want);
    /* the strip beside row 0 says the same as the header's source */
    snprintf(want, sizeof want, "%5.2f", expf(-1.0f / 6.0f));
    char buf[512];
    row_text(r.y + 1, r.x, r.w, buf, sizeof buf);
    CHECKF(strstr(buf, want) != NULL, "strip row 0 '%s' lacks %s", buf, want);
    CHECK(screen_has(r, "cos ≤0") && screen_has(r, " 1 fixed"));
    /* the fixed scale: latent's in-group cell (0,1) = exp(-1/6) = 0.846 is level 6 of 8 on 0..1 (a
     * scale fitted to the latent data, 0.61..1, would make it level 4) */
    v.sim_kind = KVS_MAT_SIM_LATENT;
    draw_panel(KVS_PANEL_SIMILARITY, &v, r);
    int gutter = 4; /* "nn" + group bar + space: one row per layer here */
    CHECKF(cell_pair(r.y + 1, r.x + gutter + 1, NULL) == theme.pair[KVS_C_HEAT0 + 6], "latent (0,1) pair %d",
           cell_pair(r.y + 1, r.x + gutter + 1, NULL));
    CHECK(cell_pair(r.y + 1, r.x + gutter, NULL) == theme.pair[KVS_C_HEAT0 + 7]); /* the diagonal, 1.0 */
    /* the last layer is labelled, one row per layer and binned */
    row_text(r.y + NL, r.x, 2, buf, sizeof buf);
    CHECKF(strcmp(buf, "29") == 0, "last row label '%s'", buf);
    struct kvs_rect small = {2, 2, 70, 12};
    draw_panel(KVS_PANEL_SIMILARITY, &v, small);
    CHECK(screen_has(small, "-29"));
    CHECK(screen_has(small, " 0-"));
    /* the cell cursor reads out its value */
    struct kvs_panel_state st = {.focused = true};
    CHECK(kvs_panel_similarity.key(&st, KEY_DOWN) && kvs_panel_similarity.key(&st, KEY_DOWN));
    for (int i = 0; i < 5; i++) kvs_panel_similarity.key(&st, KEY_NPAGE);
    v.sim_kind = KVS_MAT_SIM_HIDDEN;
    werase(stdscr);
    kvs_panel_similarity.draw(stdscr, r, &v, &st);
    snprintf(want, sizeof want, "cell L2×L5 hidden %.3f", expf(-3.0f / 6.0f));
    CHECKF(screen_has(r, want), "cursor readout %s", want);
    attr_t a = 0;
    cell_pair(r.y + 1 + 2, r.x + gutter + 5, &a);
    CHECK((a & A_REVERSE) != 0);
    /* zoom: a wide panel gets wider cells (up to 4 per layer) */
    struct kvs_rect wide = {0, 0, 160, 40};
    draw_panel(KVS_PANEL_SIMILARITY, &v, wide);
    int heat = 0;
    for (int l = 0; l < KVS_HEAT_LEVELS; l++) heat += count_pair(wide, theme.pair[KVS_C_HEAT0 + l]);
    CHECKF(heat >= 4 * NL * NL, "zoomed heat cells %d", heat);
    kvs_history_free(&h);
}

/* Budgets tell the story per group: similarity beside merged share, rank against its maximum, and
 * the spectrum mode with the chosen rank marked. */
static void test_story_budgets(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 64);
    feed(&h, "commonkv", 3, ALL_VALID, 0);
    struct kvs_view_ctx v = {.h = &h, .cursor = 2, .live = true, .t = &theme, .sim_kind = 1};
    struct kvs_rect r = {0, 0, 100, 30};
    struct kvs_panel_state st = {0};
    werase(stdscr);
    kvs_panel_budgets.draw(stdscr, r, &v, &st);
    /* no spectrum held: the max comes from the shapes, min(2*G*d_kv, n_embd) = min(1536, 576) */
    CHECK(screen_has(r, "g0   0-3   100/576 "));
    CHECK(screen_has(r, "g7  28-29  240/576 ")); /* last group: 2 layers, min(2*2*192, 576) */
    CHECK(screen_has(r, " sim "));
    CHECK(screen_has(r, "0.80  10% ")); /* group 1: similarity 0.80 beside 10% merged */
    CHECK(screen_has(r, "0.80  70% "));
    CHECK(kvs_panel_budgets.key(&st, 'd') && st.mode == 1);
    werase(stdscr);
    kvs_panel_budgets.draw(stdscr, r, &v, &st);
    CHECK(screen_has(r, "spectrum: n/a"));
    for (uint32_t g = 0; g < NG; g++) kvs_history_push(&h, mk_spectrum(g));
    werase(stdscr);
    kvs_panel_budgets.draw(stdscr, r, &v, &st);
    CHECK(screen_has(r, "spectrum per group"));
    CHECK(screen_has(r, "g0  r 100/200"));
    double all = 0, k0 = 0;
    for (int i = 0; i < 200; i++) {
        double s2 = 1.0 / ((1.0 + i) * (1.0 + i));
        all += s2;
        if (i < 100) k0 += s2;
    }
    char want[64];
    snprintf(want, sizeof want, "energy %5.1f%%", 100.0 * k0 / all);
    CHECKF(screen_has(r, want), "spectrum energy %s", want);
    /* the rank mark sits at rank/n of the sparkline (18 label cells, 82 wide): 100/200 -> 41 */
    int x, y;
    CHECK(screen_find(r, "g0  r", &x, &y));
    CHECK(cell_pair(y, 18 + 41, NULL) == theme.pair[KVS_C_BAR_REF]);
    CHECK(cell_pair(y + 1, 18 + 41, NULL) == theme.pair[KVS_C_BAR_REF]);
    CHECK(kvs_panel_budgets.key(&st, 'd') && st.mode == 0);
    kvs_history_free(&h);
}

/* WCAG 2 contrast of two xterm-256 colours. */
static void xterm_rgb(int i, double rgb[3])
{
    static const int base[16][3] = {{0, 0, 0},     {205, 0, 0},   {0, 205, 0},   {205, 205, 0},
                                    {0, 0, 238},   {205, 0, 205}, {0, 205, 205}, {229, 229, 229},
                                    {127, 127, 127}, {255, 0, 0}, {0, 255, 0},   {255, 255, 0},
                                    {92, 92, 255}, {255, 0, 255}, {0, 255, 255}, {255, 255, 255}};
    static const int lv[6] = {0, 95, 135, 175, 215, 255};
    int c[3];
    if (i < 16) { c[0] = base[i][0]; c[1] = base[i][1]; c[2] = base[i][2]; }
    else if (i < 232) { i -= 16; c[0] = lv[i / 36]; c[1] = lv[(i / 6) % 6]; c[2] = lv[i % 6]; }
    else { c[0] = c[1] = c[2] = 8 + 10 * (i - 232); }
    for (int k = 0; k < 3; k++) rgb[k] = c[k];
}

static double rel_lum(int i)
{
    double c[3];
    xterm_rgb(i, c);
    for (int k = 0; k < 3; k++) {
        double x = c[k] / 255.0;
        c[k] = x <= 0.03928 ? x / 12.92 : pow((x + 0.055) / 1.055, 2.4);
    }
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
}

static double contrast(int a, int b)
{
    double la = rel_lum(a), lb = rel_lum(b);
    return la > lb ? (la + 0.05) / (lb + 0.05) : (lb + 0.05) / (la + 0.05);
}

/* The projector theme: every colour pair it uses (text, bars, heat levels, status) keeps a WCAG
 * contrast ratio of at least 4.5:1 with 256 and with 16 colours, it draws on explicit black (no
 * terminal default), and its bars use whole cells. */
static void test_projector_contrast(void)
{
    CHECK(contrast(15, 0) > 20.9 && contrast(15, 0) < 21.1); /* the formula: white on black is 21:1 */
    int ns[2] = {256, 16};
    for (int k = 0; k < 2; k++)
        for (int r = 0; r < KVS_C_COUNT; r++) {
            short fg, bg;
            attr_t a;
            kvs_theme_spec(KVS_THEME_PROJECTOR, ns[k], (enum kvs_role)r, &fg, &bg, &a);
            CHECKF(fg >= 0 && bg >= 0, "projector role %d uses the terminal default (%d on %d)", r, fg, bg);
            if (fg < 0 || bg < 0) continue;
            double c = contrast(fg, bg);
            CHECKF(c >= 4.5, "projector role %d with %d colours: %d on %d is %.2f:1", r, ns[k], fg, bg, c);
        }
    /* the default heat ramp's lightness rises with the level (perceptual order) */
    double prev = -1;
    for (int l = 0; l < KVS_HEAT_LEVELS; l++) {
        short fg, bg;
        attr_t a;
        kvs_theme_spec(KVS_THEME_DEFAULT, 256, (enum kvs_role)(KVS_C_HEAT0 + l), &fg, &bg, &a);
        double lum = rel_lum(fg);
        CHECKF(lum > prev, "heat level %d is not lighter than level %d", l, l - 1);
        prev = lum;
    }
    struct kvs_theme proj;
    kvs_theme_setup(&proj, KVS_THEME_PROJECTOR, has_colors(), COLORS, true);
    werase(stdscr);
    kvs_w_bar(stdscr, &proj, 0, 0, 10, 0.33, KVS_C_BAR_HELD);
    char buf[128];
    row_text(0, 0, 10, buf, sizeof buf);
    CHECKF(strcmp(buf, "███░░░░░░░") == 0, "projector bar '%s'", buf);
    kvs_theme_setup(&theme, KVS_THEME_DEFAULT, has_colors(), COLORS, kvs_crt_utf8());
}

/* History keeps the session's runs as quality/CR points across RUN records (one point per run,
 * updated by its steps; QUALITY records keyed by method and target), and the Quality panel's
 * curve mode plots and lists them. */
static void test_story_quality(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 64);
    feed(&h, "commonkv", 3, ALL_VALID, 0);
    CHECK(h.n_points == 1);
    /* a second run with other numbers: the first run's point stays */
    struct kvs_record *qr = mk_run("quant");
    qr->u.run.run_id = 2;
    kvs_history_push(&h, qr);
    for (int i = 0; i < 3; i++) {
        struct kvs_record *r = mk_step((uint64_t)i, ALL_VALID, 0);
        r->u.step.cr_achieved = 0.75f;
        r->u.step.kl = 0.25f;
        kvs_history_push(&h, r);
    }
    CHECKF(h.n_points == 2, "points %u", h.n_points);
    CHECK(strcmp(h.points[0].method, "commonkv") == 0 && fabsf(h.points[0].kl - 0.0125f) < 1e-6f);
    CHECK(strcmp(h.points[1].method, "quant") == 0 && fabsf(h.points[1].cr - 0.75f) < 1e-6f);
    /* steps without quality add nothing */
    struct kvs_record *fr = mk_run("full");
    fr->u.run.run_id = 3;
    kvs_history_push(&h, fr);
    kvs_history_push(&h, mk_step(0, KVS_VALID_BYTES, 0));
    CHECK(h.n_points == 2);
    /* a QUALITY record (eval in a trace) adds a point; the same method and target again updates it */
    for (int k = 0; k < 2; k++) {
        struct kvs_record *q = kvs_record_new(KVS_REC_QUALITY, 0);
        snprintf(q->u.quality.method, sizeof q->u.quality.method, "lowrank");
        q->u.quality.target_cr = 0.5f;
        q->u.quality.achieved_cr = 0.5f;
        q->u.quality.kl = k ? 0.5f : 0.4f;
        kvs_history_push(&h, q);
    }
    CHECKF(h.n_points == 3 && fabsf(h.points[2].kl - 0.5f) < 1e-6f, "points %u", h.n_points);
    struct kvs_view_ctx v = {.h = &h, .cursor = 0, .live = true, .t = &theme, .sim_kind = 1};
    struct kvs_rect r = {0, 0, 70, 20};
    struct kvs_panel_state st = {0};
    CHECK(kvs_panel_quality.key(&st, 'k') && st.mode == 1);
    werase(stdscr);
    kvs_panel_quality.draw(stdscr, r, &v, &st);
    CHECK(screen_has(r, "KL vs full against achieved CR"));
    CHECK(screen_has(r, "c commonkv"));
    CHECK(screen_has(r, "CR 0.750  KL 0.2500"));
    CHECK(screen_has(r, "l lowrank"));
    /* the largest KL (0.5) tops the y axis; quant (0.25 at CR 0.75) sits half-way, 3/4 across */
    CHECK(screen_has(r, "    0.5"));
    int px = 8 + (int)lroundf(0.75f * (70 - 8 - 1));
    int ph = 20 - 1 - 1 - 3; /* 3 listed points */
    if (ph > 12) ph = 12;
    int py = 1 + ph - 1 - (int)lroundf(0.5f * (float)(ph - 1));
    char buf[16];
    row_text(py, px, 1, buf, sizeof buf);
    CHECKF(strcmp(buf, "q") == 0, "quant point at (%d,%d) is '%s'", px, py, buf);
    /* a replay seeking back starts the same run over (same id and start time): no new point */
    struct kvs_record *again = mk_run("quant");
    again->u.run.run_id = 2;
    kvs_history_push(&h, again);
    kvs_history_push(&h, mk_step(0, ALL_VALID, 0));
    CHECKF(h.n_points == 3, "a run started over added a point (%u)", h.n_points);

    kvs_history_free(&h);
}

/* F6 sorts the Profiler's ops (time, bytes, FLOPs, name) and the Memory panel's layers (layer,
 * bytes held); the header says which. */
static void test_sortable_rows(void)
{
    struct kvs_history h;
    kvs_history_init(&h, 64);
    feed(&h, "commonkv", 3, ALL_VALID, 0);
    /* layer 7 holds the most, layer 5 nothing */
    struct kvs_record *r7 = mk_step(3, ALL_VALID, 0);
    r7->u.step.layer_bytes_held[7] = r7->u.step.layer_bytes_held[0] * 3;
    kvs_history_push(&h, r7);
    struct kvs_view_ctx v = {.h = &h, .cursor = 3, .live = true, .t = &theme, .sim_kind = 1};
    struct kvs_rect r = {0, 0, 70, 40};
    struct kvs_panel_state st = {0};
    werase(stdscr);
    kvs_panel_memory.draw(stdscr, r, &v, &st);
    int x, y0, y1;
    CHECK(screen_has(r, "by layer (F6)"));
    CHECK(screen_find(r, "L00 ", &x, &y0) && screen_find(r, "L07 ", &x, &y1) && y0 < y1);
    CHECK(kvs_panel_memory.key(&st, KEY_F(6)) && st.sort == 1);
    werase(stdscr);
    kvs_panel_memory.draw(stdscr, r, &v, &st);
    CHECK(screen_has(r, "by bytes held (F6)"));
    CHECK(screen_find(r, "L07 ", &x, &y0) && screen_find(r, "L00 ", &x, &y1) && y0 < y1);
    /* profiler: by name, "attention" comes before "matmul" whatever their times */
    struct kvs_panel_state ps = {0};
    for (int i = 0; i < 3; i++) CHECK(kvs_panel_profiler.key(&ps, KEY_F(6)));
    werase(stdscr);
    kvs_panel_profiler.draw(stdscr, r, &v, &ps);
    CHECK(screen_has(r, "by name (F6)"));
    int ya = -1, ym = -1;
    CHECKF(screen_find(r, "attention", &x, &ya) && screen_find(r, "matmul", &x, &ym) && ya < ym, "attention row %d, matmul row %d", ya, ym);
    kvs_history_free(&h);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--tiny-model") == 0) return write_tiny(argv[2]);
    char err[256];
    setenv("TERM", "xterm-256color", 1);
    setenv("LC_ALL", "C.UTF-8", 1);
    if (!kvs_crt_offscreen_start(W, H, err, sizeof err)) {
        fprintf(stderr, "off-screen terminal: %s\n", err);
        CHECK(0);
        return kvs_test_summary();
    }
    kvs_theme_setup(&theme, KVS_THEME_DEFAULT, has_colors(), COLORS, kvs_crt_utf8());
    if (argc == 2 && strcmp(argv[1], "--bench") == 0) return bench();
    CHECK(has_colors() && kvs_crt_utf8());
    RUN(test_history);
    RUN(test_panels_valid);
    RUN(test_panels_invalid);
    RUN(test_tokens_ended);
    RUN(test_quality_live);
    RUN(test_ab);
    RUN(test_frames);
    RUN(test_device_memory);
    RUN(test_mono);
    RUN(test_story_similarity);
    RUN(test_story_budgets);
    RUN(test_projector_contrast);
    RUN(test_story_quality);
    RUN(test_sortable_rows);
    kvs_crt_offscreen_end();
    return kvs_test_summary();
}
