/* Record serialization (field by field, little-endian, explicit: never a struct memcpy, so files
 * are portable and stable), chunk headers, chunk payload packing with zlib (one stream per chunk)
 * and index entries. Depends on libc, zlib and engine/core/record.h. */
#include "trace_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

/* ---- growable buffer ---- */

void kvt_buf_free(struct kvt_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

uint8_t *kvt_buf_grow(struct kvt_buf *b, size_t n)
{
    if (b->oom) return NULL;
    if (n > SIZE_MAX / 2 - b->len) { b->oom = true; return NULL; }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return NULL; }
        b->p = p;
        b->cap = cap;
    }
    uint8_t *at = b->p + b->len;
    b->len += n;
    return at;
}

void kvt_buf_u8(struct kvt_buf *b, uint8_t v) { uint8_t *p = kvt_buf_grow(b, 1); if (p) *p = v; }
void kvt_buf_u16(struct kvt_buf *b, uint16_t v) { uint8_t *p = kvt_buf_grow(b, 2); if (p) kvt_put16(p, v); }
void kvt_buf_u32(struct kvt_buf *b, uint32_t v) { uint8_t *p = kvt_buf_grow(b, 4); if (p) kvt_put32(p, v); }
void kvt_buf_u64(struct kvt_buf *b, uint64_t v) { uint8_t *p = kvt_buf_grow(b, 8); if (p) kvt_put64(p, v); }
void kvt_buf_f32(struct kvt_buf *b, float v) { kvt_buf_u32(b, kvt_f2u(v)); }
void kvt_buf_bytes(struct kvt_buf *b, const void *src, size_t n)
{
    uint8_t *p = kvt_buf_grow(b, n);
    if (p && n) memcpy(p, src, n);
}

/* strings: u8 length (bytes before the NUL, at most CAP-1) then the bytes */
static void put_str(struct kvt_buf *b, const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n > cap - 1) n = cap - 1;
    if (n > 255) n = 255;
    kvt_buf_u8(b, (uint8_t)n);
    kvt_buf_bytes(b, s, n);
}

/* ---- encoding ---- */

static void enc_run(struct kvt_buf *b, const struct kvs_rec_run *r)
{
    kvt_buf_u32(b, r->run_id);
    put_str(b, r->model, sizeof r->model);
    put_str(b, r->arch, sizeof r->arch);
    put_str(b, r->backend, sizeof r->backend);
    put_str(b, r->device, sizeof r->device);
    put_str(b, r->method, sizeof r->method);
    kvt_buf_u32(b, r->n_layer);
    kvt_buf_u32(b, r->n_embd);
    kvt_buf_u32(b, r->n_head);
    kvt_buf_u32(b, r->n_head_kv);
    kvt_buf_u32(b, r->head_dim);
    kvt_buf_u32(b, r->n_ff);
    kvt_buf_u32(b, r->n_vocab);
    kvt_buf_u32(b, r->n_ctx_max);
    kvt_buf_u64(b, r->model_bytes);
    kvt_buf_f32(b, r->target_cr);
    kvt_buf_f32(b, r->rank_ratio);
    kvt_buf_u32(b, r->group_size);
    kvt_buf_u32(b, r->n_groups);
    kvt_buf_u32(b, r->sinks);
    kvt_buf_u32(b, r->recent);
    kvt_buf_u32(b, r->quant_bits);
    kvt_buf_u32(b, r->evict_capacity);
    uint32_t ng = KVS_MIN(r->n_groups, (uint32_t)KVS_MAX_GROUPS);
    for (uint32_t i = 0; i < ng; i++) kvt_buf_u32(b, r->group_rank[i]);
    kvt_buf_u32(b, r->n_threads);
    kvt_buf_u64(b, r->unix_ns);
    kvt_buf_u32(b, r->precise);
    kvt_buf_f32(b, r->plan_merge_share);
    kvt_buf_f32(b, r->plan_merge_floor);
    put_str(b, r->plan_note, sizeof r->plan_note);
    kvt_buf_u32(b, r->ckv_keys);
    put_str(b, r->weights, sizeof r->weights);
    kvt_buf_u64(b, r->weights_saturated);
    kvt_buf_u32(b, r->plan_profile);
    put_str(b, r->plan_why, sizeof r->plan_why);
}

static void enc_step(struct kvt_buf *b, const struct kvs_rec_step *s)
{
    kvt_buf_u64(b, s->step);
    kvt_buf_u32(b, s->kind);
    kvt_buf_u32(b, s->n_new);
    kvt_buf_u32(b, s->n_ctx);
    kvt_buf_u32(b, (uint32_t)s->token);
    put_str(b, s->piece, sizeof s->piece);
    kvt_buf_u64(b, s->t_start_ns);
    kvt_buf_u64(b, s->t_end_ns);
    kvt_buf_u32(b, s->valid);
    kvt_buf_u32(b, s->n_layer);
    kvt_buf_u32(b, s->n_groups);
    uint32_t nl = KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS);
    uint32_t ng = KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS);
    for (uint32_t i = 0; i < nl; i++) kvt_buf_f32(b, s->layer_sim[i]);
    for (uint32_t i = 0; i < nl; i++) kvt_buf_u32(b, s->layer_kept[i]);
    for (uint32_t i = 0; i < nl; i++) kvt_buf_u64(b, s->layer_bytes_held[i]);
    for (uint32_t i = 0; i < ng; i++) kvt_buf_f32(b, s->group_sim[i]);
    for (uint32_t i = 0; i < ng; i++) kvt_buf_u32(b, s->group_rank[i]);
    for (uint32_t i = 0; i < ng; i++) kvt_buf_f32(b, s->group_merged[i]);
    kvt_buf_u64(b, s->bytes_full);
    kvt_buf_u64(b, s->bytes_held);
    kvt_buf_u64(b, s->bytes_alloc);
    kvt_buf_f32(b, s->cr_target);
    kvt_buf_f32(b, s->cr_achieved);
    kvt_buf_f32(b, s->logprob);
    kvt_buf_f32(b, s->ppl);
    kvt_buf_f32(b, s->kl);
    kvt_buf_f32(b, s->top1);
    kvt_buf_u32(b, KVS_OP_COUNT);
    for (int i = 0; i < KVS_OP_COUNT; i++) {
        kvt_buf_u64(b, s->ops[i].ns);
        kvt_buf_u64(b, s->ops[i].bytes);
        kvt_buf_u64(b, s->ops[i].flops);
        kvt_buf_u32(b, s->ops[i].calls);
    }
    kvt_buf_u64(b, s->bytes_factors);
    kvt_buf_u64(b, (uint64_t)s->saved_rank);
    kvt_buf_u64(b, (uint64_t)s->saved_merge);
    kvt_buf_u64(b, (uint64_t)s->saved_quant);
    kvt_buf_u64(b, (uint64_t)s->saved_evict);
    kvt_buf_u64(b, s->dev_mem_used);
    kvt_buf_u64(b, s->dev_mem_total);
    kvt_buf_u64(b, s->dev_pool_bytes);
    kvt_buf_u64(b, s->acts_saturated);
    kvt_buf_u64(b, s->cache_saturated);
}

static void enc_matrix(struct kvt_buf *b, const struct kvs_rec_matrix *m, uint32_t n_floats)
{
    kvt_buf_u32(b, m->kind);
    kvt_buf_u32(b, m->group);
    kvt_buf_u32(b, m->rows);
    kvt_buf_u32(b, m->cols);
    kvt_buf_u32(b, n_floats);
    for (uint32_t i = 0; i < n_floats; i++) kvt_buf_f32(b, m->v[i]);
}

static void enc_quality(struct kvt_buf *b, const struct kvs_rec_quality *q)
{
    put_str(b, q->method, sizeof q->method);
    kvt_buf_f32(b, q->target_cr);
    kvt_buf_f32(b, q->achieved_cr);
    kvt_buf_f32(b, q->ppl);
    kvt_buf_f32(b, q->ppl_full);
    kvt_buf_f32(b, q->kl);
    kvt_buf_f32(b, q->top1);
    kvt_buf_f32(b, q->passkey_acc);
    kvt_buf_f32(b, q->decode_tps);
    kvt_buf_u32(b, q->n_tokens);
}

static void enc_kernel(struct kvt_buf *b, const struct kvs_rec_kernel *k)
{
    put_str(b, k->name, sizeof k->name);
    kvt_buf_u32(b, k->kind);
    kvt_buf_u32(b, k->stream);
    kvt_buf_u64(b, k->start_ns);
    kvt_buf_u64(b, k->end_ns);
    kvt_buf_u64(b, k->bytes);
}

static void enc_end(struct kvt_buf *b, const struct kvs_rec_end *e)
{
    kvt_buf_u64(b, e->n_steps);
    kvt_buf_u32(b, e->n_prompt);
    kvt_buf_u32(b, e->n_gen);
    kvt_buf_f32(b, e->prefill_tps);
    kvt_buf_f32(b, e->decode_tps);
    kvt_buf_u64(b, e->dropped_records);
}

static void enc_log(struct kvt_buf *b, const struct kvs_rec_log *l)
{
    kvt_buf_u32(b, l->level);
    put_str(b, l->text, sizeof l->text);
}

/* Floats a matrix record really holds: rows*cols, bounded by its allocation. */
static uint32_t matrix_floats(const struct kvs_record *r)
{
    size_t base = offsetof(struct kvs_record, u) + sizeof(struct kvs_rec_matrix);
    size_t have = r->bytes > base ? (r->bytes - base) / sizeof(float) : 0;
    uint64_t want = (uint64_t)r->u.matrix.rows * r->u.matrix.cols;
    return (uint32_t)KVS_MIN(want, (uint64_t)have);
}

bool kvt_record_encode(struct kvt_buf *b, const struct kvs_record *r)
{
    size_t at = b->len;
    if (r->type == KVS_REC_MATRIX && matrix_floats(r) != (uint64_t)r->u.matrix.rows * r->u.matrix.cols)
        return true; /* a matrix without room for rows*cols floats is malformed: not written */
    kvt_buf_u16(b, (uint16_t)r->type);
    kvt_buf_u16(b, 0);
    kvt_buf_u32(b, 0); /* body length, patched below */
    size_t body = b->len;
    kvt_buf_u64(b, r->seq);
    switch (r->type) {
    case KVS_REC_RUN: enc_run(b, &r->u.run); break;
    case KVS_REC_STEP: enc_step(b, &r->u.step); break;
    case KVS_REC_MATRIX: enc_matrix(b, &r->u.matrix, matrix_floats(r)); break;
    case KVS_REC_QUALITY: enc_quality(b, &r->u.quality); break;
    case KVS_REC_KERNEL: enc_kernel(b, &r->u.kernel); break;
    case KVS_REC_END: enc_end(b, &r->u.end); break;
    case KVS_REC_LOG: enc_log(b, &r->u.log); break;
    default: b->len = at; return true; /* not a record type this version knows: not written */
    }
    if (b->oom) return false;
    kvt_put32(b->p + at + 4, (uint32_t)(b->len - body));
    return true;
}

/* ---- decoding: a cursor that turns every read past the end into a sticky error ---- */

struct cur {
    const uint8_t *p;
    size_t len, pos;
    bool bad;
};

static const uint8_t *take(struct cur *c, size_t n)
{
    if (c->bad || n > c->len - c->pos) { c->bad = true; return NULL; }
    const uint8_t *at = c->p + c->pos;
    c->pos += n;
    return at;
}
static uint32_t g32(struct cur *c) { const uint8_t *p = take(c, 4); return p ? kvt_get32(p) : 0; }
static uint64_t g64(struct cur *c) { const uint8_t *p = take(c, 8); return p ? kvt_get64(p) : 0; }
static float gf32(struct cur *c) { return kvt_u2f(g32(c)); }
static void gstr(struct cur *c, char *dst, size_t cap)
{
    const uint8_t *lp = take(c, 1);
    size_t n = lp ? *lp : 0;
    const uint8_t *s = take(c, n);
    if (!s) n = 0;
    size_t keep = KVS_MIN(n, cap - 1); /* a longer string from a newer writer is cut */
    if (keep) memcpy(dst, s, keep);
    dst[keep] = 0;
}

static void dec_run(struct cur *c, struct kvs_rec_run *r)
{
    r->run_id = g32(c);
    gstr(c, r->model, sizeof r->model);
    gstr(c, r->arch, sizeof r->arch);
    gstr(c, r->backend, sizeof r->backend);
    gstr(c, r->device, sizeof r->device);
    gstr(c, r->method, sizeof r->method);
    r->n_layer = g32(c);
    r->n_embd = g32(c);
    r->n_head = g32(c);
    r->n_head_kv = g32(c);
    r->head_dim = g32(c);
    r->n_ff = g32(c);
    r->n_vocab = g32(c);
    r->n_ctx_max = g32(c);
    r->model_bytes = g64(c);
    r->target_cr = gf32(c);
    r->rank_ratio = gf32(c);
    r->group_size = g32(c);
    r->n_groups = g32(c);
    r->sinks = g32(c);
    r->recent = g32(c);
    r->quant_bits = g32(c);
    r->evict_capacity = g32(c);
    uint32_t ng = KVS_MIN(r->n_groups, (uint32_t)KVS_MAX_GROUPS);
    for (uint32_t i = 0; i < ng; i++) r->group_rank[i] = g32(c);
    r->n_threads = g32(c);
    r->unix_ns = g64(c);
    r->precise = c->pos < c->len ? g32(c) : 0; /* appended field: absent in older traces */
    /* appended plan fields: absent in older traces */
    r->plan_merge_share = r->plan_merge_floor = NAN;
    r->plan_note[0] = 0;
    if (c->pos < c->len) {
        r->plan_merge_share = gf32(c);
        r->plan_merge_floor = gf32(c);
        gstr(c, r->plan_note, sizeof r->plan_note);
    }
    r->ckv_keys = c->pos < c->len ? g32(c) : KVS_CKV_KEYS_AUTO; /* appended field: absent in older traces */
    /* appended weights fields: absent in older traces ("" = not recorded, 0 clamped) */
    r->weights[0] = 0;
    r->weights_saturated = 0;
    if (c->pos < c->len) {
        gstr(c, r->weights, sizeof r->weights);
        r->weights_saturated = g64(c);
    }
    /* appended plan origin: absent in older traces */
    r->plan_profile = 0;
    r->plan_why[0] = 0;
    if (c->pos < c->len) {
        r->plan_profile = g32(c);
        gstr(c, r->plan_why, sizeof r->plan_why);
    }
}

static void dec_step(struct cur *c, struct kvs_rec_step *s)
{
    s->step = g64(c);
    s->kind = g32(c);
    s->n_new = g32(c);
    s->n_ctx = g32(c);
    s->token = (int32_t)g32(c);
    gstr(c, s->piece, sizeof s->piece);
    s->t_start_ns = g64(c);
    s->t_end_ns = g64(c);
    s->valid = g32(c);
    s->n_layer = g32(c);
    s->n_groups = g32(c);
    uint32_t nl = KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS);
    uint32_t ng = KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS);
    for (uint32_t i = 0; i < nl; i++) s->layer_sim[i] = gf32(c);
    for (uint32_t i = 0; i < nl; i++) s->layer_kept[i] = g32(c);
    for (uint32_t i = 0; i < nl; i++) s->layer_bytes_held[i] = g64(c);
    for (uint32_t i = 0; i < ng; i++) s->group_sim[i] = gf32(c);
    for (uint32_t i = 0; i < ng; i++) s->group_rank[i] = g32(c);
    for (uint32_t i = 0; i < ng; i++) s->group_merged[i] = gf32(c);
    s->bytes_full = g64(c);
    s->bytes_held = g64(c);
    s->bytes_alloc = g64(c);
    s->cr_target = gf32(c);
    s->cr_achieved = gf32(c);
    s->logprob = gf32(c);
    s->ppl = gf32(c);
    s->kl = gf32(c);
    s->top1 = gf32(c);
    uint32_t n_ops = g32(c);
    for (uint32_t i = 0; i < n_ops && !c->bad; i++) {
        struct kvs_op_counter oc;
        oc.ns = g64(c);
        oc.bytes = g64(c);
        oc.flops = g64(c);
        oc.calls = g32(c);
        if (i < KVS_OP_COUNT) s->ops[i] = oc; /* ops a newer writer added are skipped */
    }
    s->bytes_factors = c->pos < c->len ? g64(c) : 0; /* appended field: absent in older traces */
    /* appended CR split: absent in older traces, whose KVS_VALID_SPLIT bit is clear as well */
    s->saved_rank = s->saved_merge = s->saved_quant = s->saved_evict = 0;
    if (c->pos < c->len) {
        s->saved_rank = (int64_t)g64(c);
        s->saved_merge = (int64_t)g64(c);
        s->saved_quant = (int64_t)g64(c);
        s->saved_evict = (int64_t)g64(c);
    } else {
        s->valid &= ~(uint32_t)KVS_VALID_SPLIT;
    }
    /* appended device fields: absent in older traces (0: not measured, nothing clamped) */
    s->dev_mem_used = s->dev_mem_total = s->dev_pool_bytes = s->acts_saturated = 0;
    if (c->pos < c->len) {
        s->dev_mem_used = g64(c);
        s->dev_mem_total = g64(c);
        s->dev_pool_bytes = g64(c);
        s->acts_saturated = g64(c);
    }
    /* appended cache overflow count: absent in older traces (nothing counted: read as 0) */
    s->cache_saturated = c->pos < c->len ? g64(c) : 0;
}

static void dec_quality(struct cur *c, struct kvs_rec_quality *q)
{
    gstr(c, q->method, sizeof q->method);
    q->target_cr = gf32(c);
    q->achieved_cr = gf32(c);
    q->ppl = gf32(c);
    q->ppl_full = gf32(c);
    q->kl = gf32(c);
    q->top1 = gf32(c);
    q->passkey_acc = gf32(c);
    q->decode_tps = gf32(c);
    q->n_tokens = g32(c);
}

static void dec_kernel(struct cur *c, struct kvs_rec_kernel *k)
{
    gstr(c, k->name, sizeof k->name);
    k->kind = g32(c);
    k->stream = g32(c);
    k->start_ns = g64(c);
    k->end_ns = g64(c);
    k->bytes = g64(c);
}

static void dec_end(struct cur *c, struct kvs_rec_end *e)
{
    e->n_steps = g64(c);
    e->n_prompt = g32(c);
    e->n_gen = g32(c);
    e->prefill_tps = gf32(c);
    e->decode_tps = gf32(c);
    e->dropped_records = g64(c);
}

static void dec_log(struct cur *c, struct kvs_rec_log *l)
{
    l->level = g32(c);
    gstr(c, l->text, sizeof l->text);
}

enum kvs_status kvt_record_decode(const uint8_t *p, size_t avail, size_t *used, struct kvs_record **out,
                                  char *err, size_t errlen)
{
    *out = NULL;
    if (avail < KVT_REC_HDR) {
        kvs_seterr(err, errlen, "record header cut (%zu of %u bytes left)", avail, KVT_REC_HDR);
        return KVS_ERR_FORMAT;
    }
    uint16_t type = kvt_get16(p);
    uint32_t blen = kvt_get32(p + 4);
    if (blen > avail - KVT_REC_HDR) {
        kvs_seterr(err, errlen, "record of type %u claims %u body bytes, %zu left in the chunk", type, blen,
                   avail - KVT_REC_HDR);
        return KVS_ERR_FORMAT;
    }
    *used = KVT_REC_HDR + (size_t)blen;
    struct cur c = { p + KVT_REC_HDR, blen, 0, false };
    struct kvs_record *r = NULL;
    if (type == KVS_REC_MATRIX) {
        /* seq, kind, group, rows, cols, n floats, floats */
        if (blen < 28) {
            kvs_seterr(err, errlen, "matrix record body of %u bytes is shorter than its 28-byte head", blen);
            return KVS_ERR_FORMAT;
        }
        uint32_t rows = kvt_get32(c.p + 16), cols = kvt_get32(c.p + 20), n = kvt_get32(c.p + 24);
        uint64_t rc = (uint64_t)rows * cols, need;
        if (n != rc || n > (1u << 24) || !kvs_mul_ok(n, 4, &need) || need > blen - 28) {
            kvs_seterr(err, errlen, "matrix record %ux%u with %u floats does not fit its %u-byte body", rows,
                       cols, n, blen);
            return KVS_ERR_FORMAT;
        }
        r = kvs_record_new(KVS_REC_MATRIX, n);
        if (!r) { kvs_seterr(err, errlen, "out of memory for a %u-float matrix", n); return KVS_ERR_NOMEM; }
        r->seq = g64(&c);
        r->u.matrix.kind = g32(&c);
        r->u.matrix.group = g32(&c);
        r->u.matrix.rows = g32(&c);
        r->u.matrix.cols = g32(&c);
        (void)g32(&c);
        for (uint32_t i = 0; i < n; i++) r->u.matrix.v[i] = gf32(&c);
    } else {
        switch (type) {
        case KVS_REC_RUN: case KVS_REC_STEP: case KVS_REC_QUALITY: case KVS_REC_KERNEL:
        case KVS_REC_END: case KVS_REC_LOG: break;
        default: return KVS_OK; /* unknown type: skipped by its length */
        }
        r = kvs_record_new(type, 0);
        if (!r) { kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
        r->seq = g64(&c);
        switch (type) {
        case KVS_REC_RUN: dec_run(&c, &r->u.run); break;
        case KVS_REC_STEP: dec_step(&c, &r->u.step); break;
        case KVS_REC_QUALITY: dec_quality(&c, &r->u.quality); break;
        case KVS_REC_KERNEL: dec_kernel(&c, &r->u.kernel); break;
        case KVS_REC_END: dec_end(&c, &r->u.end); break;
        case KVS_REC_LOG: dec_log(&c, &r->u.log); break;
        }
    }
    if (c.bad) {
        kvs_seterr(err, errlen, "record of type %u ends early: its %u-byte body is too short", type, blen);
        kvs_record_unref(r);
        return KVS_ERR_FORMAT;
    }
    /* bytes past the fields we know are fields a newer minor version appended: ignored */
    *out = r;
    return KVS_OK;
}

/* ---- chunk headers ---- */

void kvt_chunk_hdr_encode(uint8_t o[KVT_CHUNK_HDR], struct kvt_chunk_hdr *h)
{
    kvt_put32(o + 0, KVT_SYNC);
    o[4] = h->type;
    o[5] = h->codec;
    kvt_put16(o + 6, h->flags);
    kvt_put32(o + 8, h->comp_len);
    kvt_put32(o + 12, h->raw_len);
    kvt_put64(o + 16, h->seq);
    kvt_put64(o + 24, h->first_ts);
    kvt_put64(o + 32, h->last_ts);
    kvt_put64(o + 40, h->first_step);
    kvt_put32(o + 48, h->n_steps);
    kvt_put32(o + 52, h->n_records);
    kvt_put32(o + 56, h->tok_lo);
    kvt_put32(o + 60, h->tok_hi);
    kvt_put32(o + 64, h->payload_crc);
    h->sync = KVT_SYNC;
    h->header_crc = kvs_crc32c(0, o, 68);
    kvt_put32(o + 68, h->header_crc);
}

bool kvt_chunk_hdr_decode(const uint8_t in[KVT_CHUNK_HDR], struct kvt_chunk_hdr *h, char *err, size_t errlen)
{
    h->sync = kvt_get32(in);
    if (h->sync != KVT_SYNC) {
        kvs_seterr(err, errlen, "no chunk sync word (found %02x %02x %02x %02x)", in[0], in[1], in[2], in[3]);
        return false;
    }
    h->header_crc = kvt_get32(in + 68);
    uint32_t crc = kvs_crc32c(0, in, 68);
    if (crc != h->header_crc) {
        kvs_seterr(err, errlen, "chunk header CRC mismatch (stored %08x, computed %08x)", h->header_crc, crc);
        return false;
    }
    h->type = in[4];
    h->codec = in[5];
    h->flags = kvt_get16(in + 6);
    h->comp_len = kvt_get32(in + 8);
    h->raw_len = kvt_get32(in + 12);
    h->seq = kvt_get64(in + 16);
    h->first_ts = kvt_get64(in + 24);
    h->last_ts = kvt_get64(in + 32);
    h->first_step = kvt_get64(in + 40);
    h->n_steps = kvt_get32(in + 48);
    h->n_records = kvt_get32(in + 52);
    h->tok_lo = kvt_get32(in + 56);
    h->tok_hi = kvt_get32(in + 60);
    h->payload_crc = kvt_get32(in + 64);
    if (h->raw_len > KVT_RAW_MAX) {
        kvs_seterr(err, errlen, "chunk claims %u uncompressed bytes (limit %u)", h->raw_len, KVT_RAW_MAX);
        return false;
    }
    if (h->codec == KVT_CODEC_NONE && h->comp_len != h->raw_len) {
        kvs_seterr(err, errlen, "stored chunk with %u bytes on disk but %u uncompressed", h->comp_len, h->raw_len);
        return false;
    }
    if (h->codec == KVT_CODEC_ZLIB && (uint64_t)h->raw_len > (uint64_t)h->comp_len * KVT_ZLIB_RATIO + 64) {
        kvs_seterr(err, errlen, "chunk claims %u uncompressed bytes from %u compressed (beyond zlib's ratio)",
                   h->raw_len, h->comp_len);
        return false;
    }
    if (h->codec != KVT_CODEC_NONE && h->codec != KVT_CODEC_ZLIB) {
        kvs_seterr(err, errlen, "unknown chunk codec %u", h->codec);
        return false;
    }
    return true;
}

enum kvs_status kvt_chunk_pack(const uint8_t *raw, size_t len, int level, struct kvt_chunk_hdr *h, uint8_t **out)
{
    *out = NULL;
    if (len > KVT_RAW_MAX) return KVS_ERR_LIMIT;
    uLongf cap = compressBound((uLong)len);
    uint8_t *z = malloc(cap ? cap : 1);
    if (!z) return KVS_ERR_NOMEM;
    uLongf zlen = cap;
    if (len > 0 && compress2(z, &zlen, raw, (uLong)len, level) == Z_OK && zlen < len) {
        h->codec = KVT_CODEC_ZLIB;
    } else {
        if (len) memcpy(z, raw, len);
        zlen = len;
        h->codec = KVT_CODEC_NONE;
    }
    h->comp_len = (uint32_t)zlen;
    h->raw_len = (uint32_t)len;
    h->payload_crc = kvs_crc32c(0, z, zlen);
    *out = z;
    return KVS_OK;
}

enum kvs_status kvt_chunk_unpack(const struct kvt_chunk_hdr *h, const uint8_t *payload, uint8_t **out,
                                 char *err, size_t errlen)
{
    *out = NULL;
    uint32_t crc = kvs_crc32c(0, payload, h->comp_len);
    if (crc != h->payload_crc) {
        kvs_seterr(err, errlen, "chunk payload CRC mismatch (stored %08x, computed %08x)", h->payload_crc, crc);
        return KVS_ERR_FORMAT;
    }
    if (h->raw_len == 0) {
        if (h->codec == KVT_CODEC_NONE) return KVS_OK;
    }
    uint8_t *raw = malloc(h->raw_len ? h->raw_len : 1);
    if (!raw) { kvs_seterr(err, errlen, "out of memory for a %u-byte chunk", h->raw_len); return KVS_ERR_NOMEM; }
    if (h->codec == KVT_CODEC_NONE) {
        memcpy(raw, payload, h->raw_len);
        *out = raw;
        return KVS_OK;
    }
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) {
        free(raw);
        kvs_seterr(err, errlen, "zlib inflateInit failed");
        return KVS_ERR_NOMEM;
    }
    zs.next_in = (Bytef *)payload;
    zs.avail_in = h->comp_len;
    zs.next_out = raw;
    zs.avail_out = h->raw_len;
    int zr = inflate(&zs, Z_FINISH);
    uLong got = zs.total_out;
    uInt left_in = zs.avail_in, left_out = zs.avail_out;
    const char *zmsg = zs.msg;
    inflateEnd(&zs);
    if (zr != Z_STREAM_END || got != h->raw_len || left_in != 0) {
        if (zr == Z_STREAM_END && got != h->raw_len)
            kvs_seterr(err, errlen, "chunk inflates to %lu bytes, header says %u", got, h->raw_len);
        else if (zr == Z_STREAM_END)
            kvs_seterr(err, errlen, "%u bytes after the end of the chunk's zlib stream", left_in);
        else if (zr == Z_BUF_ERROR && left_out == 0)
            kvs_seterr(err, errlen, "chunk inflates to more than the %u bytes its header says", h->raw_len);
        else
            kvs_seterr(err, errlen, "chunk does not inflate (zlib: %s)", zmsg ? zmsg : zError(zr));
        free(raw);
        return KVS_ERR_FORMAT;
    }
    *out = raw;
    return KVS_OK;
}

/* ---- index entries ---- */

void kvt_index_entry_put(struct kvt_buf *b, const struct kvt_index_entry *e)
{
    kvt_buf_u64(b, e->offset);
    kvt_buf_u64(b, e->step);
    kvt_buf_u64(b, e->n_steps);
    kvt_buf_u64(b, e->ts);
    kvt_buf_u32(b, e->tok_lo);
    kvt_buf_u32(b, e->tok_hi);
}

void kvt_index_entry_get(const uint8_t *p, struct kvt_index_entry *e)
{
    e->offset = kvt_get64(p);
    e->step = kvt_get64(p + 8);
    e->n_steps = kvt_get64(p + 16);
    e->ts = kvt_get64(p + 24);
    e->tok_lo = kvt_get32(p + 32);
    e->tok_hi = kvt_get32(p + 36);
}

void kvt_footer_put(struct kvt_buf *b, const struct kvt_footer_vals *v, const struct kvt_index_entry *e, size_t n)
{
    kvt_buf_u64(b, v->n_steps);
    kvt_buf_u64(b, v->n_records);
    kvt_buf_u64(b, v->dropped);
    kvt_buf_u64(b, v->n_chunks);
    kvt_buf_u64(b, v->raw_bytes);
    kvt_buf_u64(b, v->comp_bytes);
    kvt_buf_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) kvt_index_entry_put(b, &e[i]);
}

void kvt_trailer_put(uint8_t out[KVT_TRAILER], uint64_t footer_off)
{
    kvt_put64(out, footer_off);
    memcpy(out + 8, KVT_TRAILER_MAGIC, 8);
}
