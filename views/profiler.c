/* Profiler panel: per-op wall time, bytes and FLOPs from the internal counters of step records
 * (this step, or summed over the run), and GPU activity from CUPTI kernel records when present,
 * else the reason the engine gave (a LOG record starting "profiler:" or "cupti:").
 * Draws only from the history. */
#include "view.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void prof_layout(const struct kvs_view_ctx *v, int *min_w, int *min_h)
{
    *min_w = 34;
    *min_h = 6;
}

static const struct kvs_op_counter *sort_ops;
static int sort_by; /* 0 time, 1 bytes, 2 FLOPs, 3 name */
static const char *const sort_names[] = {"time", "bytes", "FLOPs", "name"};
static int cmp_op(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_by == 3) return strcmp(kvs_op_name((enum kvs_op)i), kvs_op_name((enum kvs_op)j));
    const struct kvs_op_counter *p = &sort_ops[i], *q = &sort_ops[j];
    uint64_t x = sort_by == 1 ? p->bytes : sort_by == 2 ? p->flops : p->ns;
    uint64_t y = sort_by == 1 ? q->bytes : sort_by == 2 ? q->flops : q->ns;
    return x < y ? 1 : x > y ? -1 : i - j;
}

static const struct kvs_hist_kernel *sort_k;
static int cmp_k(const void *a, const void *b)
{
    uint64_t x = sort_k[*(const int *)a].ns, y = sort_k[*(const int *)b].ns;
    return x < y ? 1 : x > y ? -1 : *(const int *)a - *(const int *)b;
}

/* The newest log line explaining the GPU profiler state, or NULL. */
static const char *gpu_reason(const struct kvs_history *h)
{
    for (uint64_t i = 0;; i++) {
        const struct kvs_rec_log *l = kvs_history_log(h, i);
        if (!l) return NULL;
        if (strncasecmp(l->text, "profiler:", 9) == 0 || strncasecmp(l->text, "cupti:", 6) == 0) return l->text;
    }
}

static void prof_draw(WINDOW *w, struct kvs_rect r, const struct kvs_view_ctx *v, struct kvs_panel_state *st)
{
    const struct kvs_theme *t = v->t;
    const struct kvs_history *h = v->h;
    const struct kvs_rec_step *s = kvs_view_step(v);
    int y = r.y, ye = r.y + r.h;
    if (!h->run) { kvs_view_empty(w, r, v, "waiting for a run"); return; }
    bool total = st->mode != 0;
    /* GPU line(s) go at the bottom */
    int gpu_rows = h->n_kern_names ? (ye - y >= 8 ? 3 : 1) : 1;
    const struct kvs_op_counter *ops = NULL;
    if (total) ops = h->ops_total;
    else if (s && (s->valid & KVS_VALID_OPS)) ops = s->ops;
    char a[24], b[24], c[24];
    if (s) {
        kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "%s  (a: %s)  by %s (F6)",
                     total ? "run total" : s->kind == KVS_STEP_PREFILL ? "this step: prefill" : "this step: decode",
                     total ? "this step" : "run total", sort_names[st->sort % 4]);
    }
    if (y >= ye) return;
    if (!ops) {
        kvs_w_text(w, t, y++, r.x, r.w, KVS_C_NA, "op counters: n/a");
    } else {
        int idx[KVS_OP_COUNT], n = 0;
        uint64_t sum = 0;
        for (int o = 0; o < KVS_OP_COUNT; o++) {
            sum += ops[o].ns;
            if (ops[o].ns || ops[o].calls) idx[n++] = o;
        }
        sort_ops = ops;
        sort_by = st->sort % 4;
        qsort(idx, (size_t)n, sizeof *idx, cmp_op);
        bool wide = r.w >= 58;
        if (y < ye - gpu_rows)
            kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, wide ? "%-9s %9s %4s %9s %9s %10s" : "%-9s %9s %4s %9s", "op", "time", "%",
                         "bytes", "FLOPs", "GFLOP/s");
        for (int i = 0; i < n && y < ye - gpu_rows; i++, y++) {
            const struct kvs_op_counter *oc = &ops[idx[i]];
            double pct = sum ? 100.0 * (double)oc->ns / (double)sum : 0;
            int x = kvs_w_printf(w, t, y, r.x, r.w, KVS_C_TEXT, "%-9s %9s %4.0f %9s", kvs_op_name((enum kvs_op)idx[i]),
                                 kvs_fmt_ns(a, sizeof a, oc->ns), pct, kvs_fmt_bytes(b, sizeof b, oc->bytes));
            if (wide) {
                char d[24];
                x += kvs_w_printf(w, t, y, r.x + x, r.w - x, KVS_C_TEXT, " %9s %10s", kvs_fmt_si(c, sizeof c, (double)oc->flops, ""),
                                  oc->ns ? kvs_fmt_f(d, sizeof d, true, "%.2f", (double)oc->flops / (double)oc->ns) : "n/a");
            }
            if (r.w - x - 1 >= 4) kvs_w_bar(w, t, y, r.x + x + 1, r.w - x - 1, pct / 100, KVS_C_BAR_ALLOC);
        }
    }
    /* GPU activity */
    y = ye - gpu_rows > y ? ye - gpu_rows : y;
    if (y >= ye) return;
    if (h->n_kern_names == 0) {
        const char *why = gpu_reason(h);
        if (why) kvs_w_printf(w, t, y, r.x, r.w, KVS_C_WARN, "GPU: %s", why);
        else kvs_w_printf(w, t, y, r.x, r.w, KVS_C_NA, "GPU kernels: n/a (%s backend, no CUPTI report)", h->run->u.run.backend);
        return;
    }
    int idx[KVS_HIST_KERNEL_NAMES];
    for (uint32_t i = 0; i < h->n_kern_names; i++) idx[i] = (int)i;
    sort_k = h->kern;
    qsort(idx, h->n_kern_names, sizeof *idx, cmp_k);
    kvs_w_printf(w, t, y++, r.x, r.w, KVS_C_DIM, "GPU: %llu activities, %u names", (unsigned long long)h->n_kern, h->n_kern_names);
    for (uint32_t i = 0; i < h->n_kern_names && y < ye; i++, y++) {
        const struct kvs_hist_kernel *k = &h->kern[idx[i]];
        kvs_w_printf(w, t, y, r.x, r.w, KVS_C_TEXT, "%9s x%-5llu %s", kvs_fmt_ns(a, sizeof a, k->ns), (unsigned long long)k->count, k->name);
    }
}

static bool prof_key(struct kvs_panel_state *st, int key)
{
    if (key == 'a') { st->mode = !st->mode; return true; }
    if (key == KEY_F(6)) { st->sort = (st->sort + 1) % 4; return true; }
    return false;
}

const struct kvs_panel kvs_panel_profiler = {
    .name = "profiler",
    .title = "Profiler",
    .layout = prof_layout,
    .draw = prof_draw,
    .key = prof_key,
    .help = "a\tthis step / run total\n"
            "F6\tsort ops: by time / bytes / FLOPs / name\n",
};
