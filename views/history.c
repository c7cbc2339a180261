/* Record history for the views (see history.h). Holds references to immutable records; never
 * modifies them. Depends on engine/core/record.h and libc only. */
#include "history.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_history_init(struct kvs_history *h, uint32_t cap)
{
    memset(h, 0, sizeof *h);
    if (cap < 1) cap = 1;
    h->ring = calloc(cap, sizeof *h->ring);
    if (!h->ring) return KVS_ERR_NOMEM;
    h->cap = cap;
    return KVS_OK;
}

static void set_ref(struct kvs_record **slot, struct kvs_record *r)
{
    kvs_record_unref(*slot);
    *slot = r;
}

void kvs_hist_tokens_free(struct kvs_hist_tokens *t)
{
    free(t->id);
    free(t->step);
    free(t->off);
    free(t->text);
    memset(t, 0, sizeof *t);
}

bool kvs_hist_tokens_add(struct kvs_hist_tokens *t, int32_t id, uint64_t step, const char *piece)
{
    size_t len = strnlen(piece, KVS_REC_PIECE_MAX);
    if (t->n >= KVS_HIST_TOKENS_MAX) return false;
    if (t->n + 1 >= t->cap) {
        uint32_t nc = t->cap ? t->cap * 2 : 256;
        int32_t *id2 = realloc(t->id, nc * sizeof *id2);
        if (!id2) return false;
        t->id = id2;
        uint64_t *st2 = realloc(t->step, nc * sizeof *st2);
        if (!st2) return false;
        t->step = st2;
        uint32_t *off2 = realloc(t->off, (nc + 1) * sizeof *off2);
        if (!off2) return false;
        if (!t->off) off2[0] = 0;
        t->off = off2;
        t->cap = nc;
    }
    if (t->text_len + len + 1 > t->text_cap) {
        uint32_t nc = t->text_cap ? t->text_cap : 1024;
        while (t->text_len + len + 1 > nc) nc *= 2;
        char *tx = realloc(t->text, nc);
        if (!tx) return false;
        t->text = tx;
        t->text_cap = nc;
    }
    memcpy(t->text + t->text_len, piece, len);
    t->text_len += (uint32_t)len;
    t->text[t->text_len] = 0;
    t->id[t->n] = id;
    t->step[t->n] = step;
    t->n++;
    t->off[t->n] = t->text_len;
    return true;
}

static void clear_run(struct kvs_history *h)
{
    uint64_t first = kvs_history_first(h);
    for (uint64_t i = first; i < h->n_steps; i++) set_ref(&h->ring[i % h->cap], NULL);
    h->n_steps = h->n_decode = 0;
    set_ref(&h->run, NULL);
    set_ref(&h->end, NULL);
    set_ref(&h->quality, NULL);
    for (int k = 0; k < 4; k++) set_ref(&h->mat[k], NULL);
    for (int g = 0; g < KVS_MAX_GROUPS; g++) set_ref(&h->spectrum[g], NULL);
    for (int i = 0; i < KVS_HIST_LOGS; i++) set_ref(&h->logs[i], NULL);
    h->n_logs = 0;
    kvs_hist_tokens_free(&h->tok);
    memset(h->ops_total, 0, sizeof h->ops_total);
    memset(h->kern, 0, sizeof h->kern);
    h->n_kern_names = 0;
    h->n_kern = h->kern_other = 0;
    h->t_first_decode_ns = 0;
}

void kvs_history_free(struct kvs_history *h)
{
    if (!h->ring) return;
    clear_run(h);
    free(h->ring);
    memset(h, 0, sizeof *h);
}

static void push_step(struct kvs_history *h, struct kvs_record *r)
{
    struct kvs_rec_step *s = &r->u.step;
    set_ref(&h->ring[h->n_steps % h->cap], r);
    uint64_t idx = h->n_steps++;
    if (s->valid & KVS_VALID_OPS) {
        for (int o = 0; o < KVS_OP_COUNT; o++) {
            h->ops_total[o].ns += s->ops[o].ns;
            h->ops_total[o].bytes += s->ops[o].bytes;
            h->ops_total[o].flops += s->ops[o].flops;
            h->ops_total[o].calls += s->ops[o].calls;
        }
    }
    if (s->kind == KVS_STEP_DECODE) {
        char piece[KVS_REC_PIECE_MAX + 1];
        memcpy(piece, s->piece, KVS_REC_PIECE_MAX);
        piece[KVS_REC_PIECE_MAX] = 0;
        kvs_hist_tokens_add(&h->tok, s->token, idx, piece);
        if (h->n_decode++ == 0) h->t_first_decode_ns = s->t_end_ns ? s->t_end_ns : 1;
    }
}

static void push_kernel(struct kvs_history *h, const struct kvs_rec_kernel *k)
{
    h->n_kern++;
    char name[KVS_REC_NAME_MAX];
    memcpy(name, k->name, sizeof name);
    name[sizeof name - 1] = 0;
    uint64_t dur = k->end_ns > k->start_ns ? k->end_ns - k->start_ns : 0;
    for (uint32_t i = 0; i < h->n_kern_names; i++) {
        if (h->kern[i].kind == k->kind && strcmp(h->kern[i].name, name) == 0) {
            h->kern[i].count++;
            h->kern[i].ns += dur;
            h->kern[i].bytes += k->bytes;
            return;
        }
    }
    if (h->n_kern_names >= KVS_HIST_KERNEL_NAMES) { h->kern_other++; return; }
    struct kvs_hist_kernel *e = &h->kern[h->n_kern_names++];
    memcpy(e->name, name, sizeof name);
    e->kind = k->kind;
    e->count = 1;
    e->ns = dur;
    e->bytes = k->bytes;
}

/* The point for KEY, added (dropping the oldest when full) when it is not there yet. */
static struct kvs_hist_point *point_for(struct kvs_history *h, uint64_t key)
{
    for (uint32_t i = 0; i < h->n_points; i++)
        if (h->points[i].key == key) return &h->points[i];
    if (h->n_points == KVS_HIST_POINTS) {
        memmove(h->points, h->points + 1, sizeof h->points[0] * (KVS_HIST_POINTS - 1));
        h->n_points--;
    }
    struct kvs_hist_point *p = &h->points[h->n_points++];
    memset(p, 0, sizeof *p);
    p->key = key;
    return p;
}

void kvs_history_push(struct kvs_history *h, struct kvs_record *r)
{
    if (!r) return;
    h->n_records++;
    switch (r->type) {
    case KVS_REC_RUN:
        clear_run(h);
        h->run = r;
        h->n_runs++;
        return;
    case KVS_REC_STEP: {
        const struct kvs_rec_step *s = &r->u.step;
        uint32_t need = KVS_VALID_QUALITY | KVS_VALID_BYTES;
        if (h->run && (s->valid & need) == need && isfinite(s->kl) && isfinite(s->cr_achieved)) {
            struct kvs_hist_point *p = point_for(h, kvs_history_run_key(&h->run->u.run));
            snprintf(p->method, sizeof p->method, "%s", h->run->u.run.method);
            p->target_cr = h->run->u.run.target_cr;
            p->cr = s->cr_achieved;
            p->kl = s->kl;
        }
        push_step(h, r);
        return;
    }
    case KVS_REC_MATRIX: {
        uint32_t k = r->u.matrix.kind;
        if (k >= 1 && k <= 3) { set_ref(&h->mat[k], r); return; }
        if (k == KVS_MAT_SPECTRUM && r->u.matrix.group < KVS_MAX_GROUPS) {
            set_ref(&h->spectrum[r->u.matrix.group], r);
            return;
        }
        break;
    }
    case KVS_REC_QUALITY: {
        const struct kvs_rec_quality *q = &r->u.quality;
        if (isfinite(q->kl) && isfinite(q->achieved_cr)) {
            /* keyed by method and target, so a replayed or repeated record updates its point */
            uint64_t key = UINT64_MAX - ((uint64_t)(q->target_cr * 1000.0f + 1000.0f) & 0xffff);
            for (const char *c = q->method; *c; c++) key = key * 31u + (unsigned char)*c;
            key |= 1ull << 63;
            struct kvs_hist_point *p = point_for(h, key);
            snprintf(p->method, sizeof p->method, "%s", q->method);
            p->target_cr = q->target_cr;
            p->cr = q->achieved_cr;
            p->kl = q->kl;
        }
        set_ref(&h->quality, r);
        return;
    }
    case KVS_REC_KERNEL: push_kernel(h, &r->u.kernel); break;
    case KVS_REC_END: set_ref(&h->end, r); return;
    case KVS_REC_LOG:
        set_ref(&h->logs[h->n_logs % KVS_HIST_LOGS], r);
        h->n_logs++;
        return;
    default: break;
    }
    kvs_record_unref(r);
}

uint64_t kvs_history_first(const struct kvs_history *h)
{
    return h->n_steps > h->cap ? h->n_steps - h->cap : 0;
}

const struct kvs_rec_step *kvs_history_step(const struct kvs_history *h, uint64_t i)
{
    if (i >= h->n_steps || i < kvs_history_first(h)) return NULL;
    const struct kvs_record *r = h->ring[i % h->cap];
    return r ? &r->u.step : NULL;
}

const struct kvs_rec_log *kvs_history_log(const struct kvs_history *h, uint64_t i)
{
    if (i >= h->n_logs || i >= KVS_HIST_LOGS) return NULL;
    const struct kvs_record *r = h->logs[(h->n_logs - 1 - i) % KVS_HIST_LOGS];
    return r ? &r->u.log : NULL;
}

uint32_t kvs_history_tokens_upto(const struct kvs_history *h, uint64_t step)
{
    /* tokens are in step order: binary search the first token past STEP */
    uint32_t lo = 0, hi = h->tok.n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (h->tok.step[mid] <= step) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void kvs_hist_pin_free(struct kvs_hist_pin *pin)
{
    kvs_record_unref(pin->run);
    kvs_record_unref(pin->step);
    kvs_record_unref(pin->quality);
    kvs_record_unref(pin->end);
    kvs_hist_tokens_free(&pin->tok);
    memset(pin, 0, sizeof *pin);
}

void kvs_history_pin(const struct kvs_history *h, uint64_t cursor, struct kvs_hist_pin *pin)
{
    kvs_hist_pin_free(pin);
    if (!h->run) return;
    pin->set = true;
    pin->run = kvs_record_ref(h->run);
    bool at_end = h->n_steps == 0 || cursor + 1 >= h->n_steps;
    if (h->n_steps) {
        uint64_t c = cursor < h->n_steps ? cursor : h->n_steps - 1;
        if (kvs_history_step(h, c)) pin->step = kvs_record_ref(h->ring[c % h->cap]);
    }
    if (at_end) {
        pin->quality = kvs_record_ref(h->quality);
        pin->end = kvs_record_ref(h->end);
    }
    uint32_t n = h->n_steps ? kvs_history_tokens_upto(h, cursor) : 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len;
        const char *p = kvs_hist_tokens_piece(&h->tok, i, &len);
        char buf[KVS_REC_PIECE_MAX + 1];
        if (len > KVS_REC_PIECE_MAX) len = KVS_REC_PIECE_MAX;
        memcpy(buf, p, len);
        buf[len] = 0;
        if (!kvs_hist_tokens_add(&pin->tok, h->tok.id[i], h->tok.step[i], buf)) break;
    }
    pin->t_first_decode_ns = h->t_first_decode_ns;
    uint64_t first = kvs_history_first(h);
    for (uint64_t i = first; i < h->n_steps && i <= cursor; i++) {
        const struct kvs_rec_step *s = kvs_history_step(h, i);
        if (s && s->kind == KVS_STEP_DECODE) {
            pin->n_decode++;
            pin->decode_ns += s->t_end_ns > s->t_start_ns ? s->t_end_ns - s->t_start_ns : 0;
        }
    }
}
