/* Tests of the .kvt trace library (traces/): CRC32C, bit-exact round trip of every record type,
 * truncation at every byte offset, single-bit flips, unknown chunk and record types, version and
 * feature refusal, queue overflow, seeking by step and token, recovery and exports. Files are also
 * taken apart here byte by byte from the layout in man/kvscope-trace.5, not with the library.
 * Extra modes for tests/t_traces.sh: --writer-child FILE, --write-sample FILE N, --recover IN OUT,
 * --info FILE, --export FILE FORMAT OUT; for tests/fuzz.sh: --write-seeds DIR; for
 * tests/bench_traces.sh: --bench [N]. */
#include "harness.h"
#include "trace.h"
#include "trace_int.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ---- deterministic records ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static uint64_t g_seq;

static struct kvs_record *mk_run(uint32_t id, uint32_t nl, uint32_t ng)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_RUN, 0);
    struct kvs_rec_run *u = &r->u.run;
    r->seq = g_seq++;
    u->run_id = id;
    snprintf(u->model, sizeof u->model, "SmolLM2-135M-Instruct \xe2\x9c\x93 \"quoted\"");
    snprintf(u->arch, sizeof u->arch, "llama");
    snprintf(u->backend, sizeof u->backend, "cpu");
    snprintf(u->device, sizeof u->device, "Test CPU @ 3 GHz");
    snprintf(u->method, sizeof u->method, "commonkv+quant");
    u->n_layer = nl; u->n_embd = 576; u->n_head = 9; u->n_head_kv = 3; u->head_dim = 64; u->n_ff = 1536;
    u->n_vocab = 49152; u->n_ctx_max = 4096; u->model_bytes = 123456789012ull;
    u->target_cr = 0.5f; u->rank_ratio = 0.7f; u->group_size = 4; u->n_groups = ng; u->sinks = 4; u->recent = 128;
    u->quant_bits = 4; u->evict_capacity = 0;
    for (uint32_t g = 0; g < ng; g++) u->group_rank[g] = 300 + g;
    u->n_threads = 2;
    u->unix_ns = 1732000000123456789ull;
    u->plan_merge_share = 0.8f;
    u->plan_merge_floor = 0.45f;
    snprintf(u->plan_note, sizeof u->plan_note, "similarity floor 0.45 stopped merging at 10 of 20 eligible slots");
    u->ckv_keys = KVS_CKV_KEYS_INT8;
    snprintf(u->weights, sizeof u->weights, "fp16");
    u->weights_saturated = 3;
    u->plan_profile = 1;
    snprintf(u->plan_why, sizeof u->plan_why, "KL@CR on topics.py (256+32 tok), share/floor/rank: 0.60/0.45/u 0.151@0.50*");
    return r;
}

static uint32_t g_ctx;

static struct kvs_record *mk_step(uint64_t step, uint32_t nl, uint32_t ng)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
    struct kvs_rec_step *s = &r->u.step;
    r->seq = g_seq++;
    s->step = step;
    s->kind = step == 0 ? KVS_STEP_PREFILL : KVS_STEP_DECODE;
    s->n_new = step == 0 ? 37 : 1;
    g_ctx += s->n_new;
    s->n_ctx = g_ctx;
    s->token = (int32_t)(rnd() % 49152) - (step == 3 ? 60000 : 0);
    static const char *pieces[] = { " the", "\"q\",", "\xc3\xa9t\xc3\xa9", "\n", "\xe2\x82", "abcdefghijklmnopqrstuvwxyz01234" };
    snprintf(s->piece, sizeof s->piece, "%s", pieces[step % 6]);
    s->t_start_ns = step * 1000000ull + 17;
    s->t_end_ns = s->t_start_ns + 800000 + rnd() % 1000;
    s->valid = (step % 5 == 4) ? KVS_VALID_BYTES : 0xff;
    s->n_layer = nl;
    s->n_groups = ng;
    for (uint32_t l = 0; l < nl; l++) {
        s->layer_sim[l] = rndf();
        s->layer_kept[l] = (uint32_t)(rnd() % 5000);
        s->layer_bytes_held[l] = rnd() >> 20;
    }
    if (nl > 2) { s->layer_sim[0] = bitsf(0x7fc12345u); s->layer_sim[1] = -0.0f; s->layer_sim[2] = bitsf(0xff800000u); }
    for (uint32_t g = 0; g < ng; g++) {
        s->group_sim[g] = rndf();
        s->group_rank[g] = (uint32_t)(rnd() % 576);
        s->group_merged[g] = rndf() * 0.5f + 0.5f;
    }
    s->bytes_full = rnd() >> 16;
    s->bytes_held = rnd() >> 18;
    s->bytes_alloc = rnd() >> 17;
    s->bytes_factors = rnd() >> 20;
    s->saved_rank = -(int64_t)(rnd() >> 22); /* negative: latents larger than K+V */
    s->saved_merge = (int64_t)(rnd() >> 21);
    s->saved_quant = (int64_t)(rnd() >> 23);
    s->saved_evict = (int64_t)(rnd() >> 24);
    if (step % 3) { /* a CUDA run's card (every third step: not measured, as on the CPU) */
        s->dev_mem_total = 80ull << 30;
        s->dev_mem_used = (3ull << 30) + (rnd() >> 40);
        s->dev_pool_bytes = rnd() >> 30;
    }
    s->acts_saturated = step > 5 ? step * 1000003ull : 0;
    s->cache_saturated = step > 3 ? step * 7000001ull : 0;
    s->cr_target = step % 7 ? 0.5f : -1.0f;
    s->cr_achieved = rndf();
    s->logprob = -rndf() * 3;
    s->ppl = 7.5f + rndf();
    s->kl = 0.01f * rndf();
    s->top1 = 0.9f;
    for (int i = 0; i < KVS_OP_COUNT; i++) {
        s->ops[i].ns = rnd() >> 40;
        s->ops[i].bytes = rnd() >> 30;
        s->ops[i].flops = rnd() >> 25;
        s->ops[i].calls = (uint32_t)(rnd() % 100);
    }
    return r;
}

static struct kvs_record *mk_matrix(uint32_t kind, uint32_t group, uint32_t rows, uint32_t cols)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, rows * cols);
    r->seq = g_seq++;
    r->u.matrix.kind = kind;
    r->u.matrix.group = group;
    r->u.matrix.rows = rows;
    r->u.matrix.cols = cols;
    for (uint32_t i = 0; i < rows * cols; i++) r->u.matrix.v[i] = rndf();
    if (rows * cols > 1) r->u.matrix.v[1] = bitsf(0x7fc00001u);
    return r;
}

static struct kvs_record *mk_quality(const char *method)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_QUALITY, 0);
    struct kvs_rec_quality *q = &r->u.quality;
    r->seq = g_seq++;
    snprintf(q->method, sizeof q->method, "%s", method);
    q->target_cr = 0.5f; q->achieved_cr = 0.48f; q->ppl = 9.1f; q->ppl_full = 8.7f; q->kl = 0.02f; q->top1 = 0.93f;
    q->passkey_acc = bitsf(0x7fc00000u); q->decode_tps = 55.5f; q->n_tokens = 512;
    return r;
}

static struct kvs_record *mk_kernel(uint64_t t)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_KERNEL, 0);
    struct kvs_rec_kernel *k = &r->u.kernel;
    r->seq = g_seq++;
    snprintf(k->name, sizeof k->name, "kvs_attn_latent<64,%u>", (unsigned)(t % 3));
    k->kind = 1 + (uint32_t)(t % 4);
    k->stream = (uint32_t)(t % 2) * 7;
    k->start_ns = t * 1000000ull + 100;
    k->end_ns = k->start_ns + 5000;
    k->bytes = t * 4096;
    return r;
}

static struct kvs_record *mk_end(uint64_t n)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_END, 0);
    r->seq = g_seq++;
    r->u.end.n_steps = n; r->u.end.n_prompt = 37; r->u.end.n_gen = (uint32_t)n - 1;
    r->u.end.prefill_tps = 1234.5f; r->u.end.decode_tps = 88.25f; r->u.end.dropped_records = 3;
    return r;
}

static struct kvs_record *mk_log(uint32_t level, const char *text)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_LOG, 0);
    r->seq = g_seq++;
    r->u.log.level = level;
    snprintf(r->u.log.text, sizeof r->u.log.text, "%s", text);
    return r;
}

/* ---- comparison, field by field (floats by their bits) ---- */

static bool feq(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }
static bool feqn(const float *a, const float *b, uint32_t n) { return n == 0 || memcmp(a, b, n * sizeof *a) == 0; }
#define SEQ(a, b) (strncmp(a, b, sizeof(a)) == 0)

static bool rec_equal(const struct kvs_record *a, const struct kvs_record *b)
{
    if (!a || !b || a->type != b->type || a->seq != b->seq) return false;
    switch (a->type) {
    case KVS_REC_RUN: {
        const struct kvs_rec_run *x = &a->u.run, *y = &b->u.run;
        bool ok = x->run_id == y->run_id && SEQ(x->model, y->model) && SEQ(x->arch, y->arch) &&
                  SEQ(x->backend, y->backend) && SEQ(x->device, y->device) && SEQ(x->method, y->method) &&
                  x->n_layer == y->n_layer && x->n_embd == y->n_embd && x->n_head == y->n_head &&
                  x->n_head_kv == y->n_head_kv && x->head_dim == y->head_dim && x->n_ff == y->n_ff &&
                  x->n_vocab == y->n_vocab && x->n_ctx_max == y->n_ctx_max && x->model_bytes == y->model_bytes &&
                  feq(x->target_cr, y->target_cr) && feq(x->rank_ratio, y->rank_ratio) &&
                  x->group_size == y->group_size && x->n_groups == y->n_groups && x->sinks == y->sinks &&
                  x->recent == y->recent && x->quant_bits == y->quant_bits && x->evict_capacity == y->evict_capacity &&
                  x->n_threads == y->n_threads && x->unix_ns == y->unix_ns &&
                  feq(x->plan_merge_share, y->plan_merge_share) && feq(x->plan_merge_floor, y->plan_merge_floor) &&
                  SEQ(x->plan_note, y->plan_note) && x->ckv_keys == y->ckv_keys && SEQ(x->weights, y->weights) &&
                  x->weights_saturated == y->weights_saturated && x->plan_profile == y->plan_profile &&
                  SEQ(x->plan_why, y->plan_why);
        for (uint32_t g = 0; ok && g < KVS_MIN(x->n_groups, (uint32_t)KVS_MAX_GROUPS); g++)
            ok = x->group_rank[g] == y->group_rank[g];
        return ok;
    }
    case KVS_REC_STEP: {
        const struct kvs_rec_step *x = &a->u.step, *y = &b->u.step;
        bool ok = x->step == y->step && x->kind == y->kind && x->n_new == y->n_new && x->n_ctx == y->n_ctx &&
                  x->token == y->token && SEQ(x->piece, y->piece) && x->t_start_ns == y->t_start_ns &&
                  x->t_end_ns == y->t_end_ns && x->valid == y->valid && x->n_layer == y->n_layer &&
                  x->n_groups == y->n_groups && x->bytes_full == y->bytes_full && x->bytes_held == y->bytes_held &&
                  x->bytes_alloc == y->bytes_alloc && x->bytes_factors == y->bytes_factors && feq(x->cr_target, y->cr_target) &&
                  feq(x->cr_achieved, y->cr_achieved) && feq(x->logprob, y->logprob) && feq(x->ppl, y->ppl) &&
                  feq(x->kl, y->kl) && feq(x->top1, y->top1) && x->saved_rank == y->saved_rank &&
                  x->saved_merge == y->saved_merge && x->saved_quant == y->saved_quant && x->saved_evict == y->saved_evict &&
                  x->dev_mem_used == y->dev_mem_used && x->dev_mem_total == y->dev_mem_total &&
                  x->dev_pool_bytes == y->dev_pool_bytes && x->acts_saturated == y->acts_saturated &&
                  x->cache_saturated == y->cache_saturated;
        uint32_t nl = KVS_MIN(x->n_layer, (uint32_t)KVS_MAX_LAYERS), ng = KVS_MIN(x->n_groups, (uint32_t)KVS_MAX_GROUPS);
        ok = ok && feqn(x->layer_sim, y->layer_sim, nl) && feqn(x->group_sim, y->group_sim, ng) &&
             feqn(x->group_merged, y->group_merged, ng);
        for (uint32_t l = 0; ok && l < nl; l++)
            ok = x->layer_kept[l] == y->layer_kept[l] && x->layer_bytes_held[l] == y->layer_bytes_held[l];
        for (uint32_t g = 0; ok && g < ng; g++) ok = x->group_rank[g] == y->group_rank[g];
        for (int i = 0; ok && i < KVS_OP_COUNT; i++)
            ok = x->ops[i].ns == y->ops[i].ns && x->ops[i].bytes == y->ops[i].bytes &&
                 x->ops[i].flops == y->ops[i].flops && x->ops[i].calls == y->ops[i].calls;
        return ok;
    }
    case KVS_REC_MATRIX: {
        const struct kvs_rec_matrix *x = &a->u.matrix, *y = &b->u.matrix;
        return x->kind == y->kind && x->group == y->group && x->rows == y->rows && x->cols == y->cols &&
               feqn(x->v, y->v, x->rows * x->cols);
    }
    case KVS_REC_QUALITY: {
        const struct kvs_rec_quality *x = &a->u.quality, *y = &b->u.quality;
        return SEQ(x->method, y->method) && feq(x->target_cr, y->target_cr) && feq(x->achieved_cr, y->achieved_cr) &&
               feq(x->ppl, y->ppl) && feq(x->ppl_full, y->ppl_full) && feq(x->kl, y->kl) && feq(x->top1, y->top1) &&
               feq(x->passkey_acc, y->passkey_acc) && feq(x->decode_tps, y->decode_tps) && x->n_tokens == y->n_tokens;
    }
    case KVS_REC_KERNEL: {
        const struct kvs_rec_kernel *x = &a->u.kernel, *y = &b->u.kernel;
        return SEQ(x->name, y->name) && x->kind == y->kind && x->stream == y->stream && x->start_ns == y->start_ns &&
               x->end_ns == y->end_ns && x->bytes == y->bytes;
    }
    case KVS_REC_END: {
        const struct kvs_rec_end *x = &a->u.end, *y = &b->u.end;
        return x->n_steps == y->n_steps && x->n_prompt == y->n_prompt && x->n_gen == y->n_gen &&
               feq(x->prefill_tps, y->prefill_tps) && feq(x->decode_tps, y->decode_tps) &&
               x->dropped_records == y->dropped_records;
    }
    case KVS_REC_LOG:
        return a->u.log.level == b->u.log.level && SEQ(a->u.log.text, b->u.log.text);
    }
    return false;
}

/* ---- a sample run: the records, in order ---- */

struct recs {
    struct kvs_record **r;
    size_t n, cap;
    size_t n_steps;
};

static void recs_add(struct recs *v, struct kvs_record *r)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 256;
        v->r = realloc(v->r, v->cap * sizeof *v->r);
    }
    v->r[v->n++] = r;
    if (r->type == KVS_REC_STEP) v->n_steps++;
}

static void recs_free(struct recs *v)
{
    for (size_t i = 0; i < v->n; i++) kvs_record_unref(v->r[i]);
    free(v->r);
    memset(v, 0, sizeof *v);
}

/* Two runs (the second one restarted with new settings), every record type. */
static void sample(struct recs *v, uint32_t n_steps, uint32_t nl, uint32_t ng)
{
    g_seq = 0;
    g_ctx = 0;
    recs_add(v, mk_run(1, nl, ng));
    recs_add(v, mk_log(0, "loading model \xe2\x80\x94 done"));
    recs_add(v, mk_matrix(KVS_MAT_SIM_HIDDEN, 0, nl, nl));
    for (uint32_t g = 0; g < ng && g < 3; g++) recs_add(v, mk_matrix(KVS_MAT_SPECTRUM, g, 1, 40));
    uint64_t step = 0;
    for (uint32_t i = 0; i < n_steps; i++) {
        if (i == n_steps * 2 / 3) {
            recs_add(v, mk_end(step));
            recs_add(v, mk_run(2, nl, ng));
            recs_add(v, mk_matrix(KVS_MAT_SIM_KEYS, 0, nl, nl));
            step = 0;
            g_ctx = 0;
        }
        recs_add(v, mk_step(step++, nl, ng));
        if (i % 3 == 1) recs_add(v, mk_kernel(i));
        if (i % 11 == 5) recs_add(v, mk_quality(i % 2 ? "commonkv" : "full"));
        if (i % 13 == 7) recs_add(v, mk_matrix(KVS_MAT_SIM_LATENT, 0, nl, nl));
        if (i == 9) recs_add(v, mk_log(1, "CUPTI: subscriber busy (another profiler?)"));
    }
    recs_add(v, mk_end(step));
}

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", kvs_test_tmpdir(), name);
    return buf[k];
}

static bool write_trace(const char *path, const struct recs *v, const struct kvs_trace_writer_opts *o)
{
    struct kvs_trace_writer *w;
    char err[512];
    struct kvs_trace_kv meta[] = { { "model", "tiny" }, { "method", "commonkv+quant" }, { "backend", "cpu" },
                                   { "shapes", "L=30 D=576 H=9 KV=3 d=64" } };
    if (kvs_trace_writer_open(&w, path, meta, KVS_ARRAY_LEN(meta), o, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "writer_open: %s\n", err);
        return false;
    }
    for (size_t i = 0; i < v->n; i++) {
        /* the writer may not drop here: the queue is sized for the sample */
        if (!kvs_trace_writer_push(w, kvs_record_ref(v->r[i]))) {
            while (!kvs_trace_writer_push(w, kvs_record_ref(v->r[i]))) usleep(1000);
        }
    }
    if (kvs_trace_writer_close(w, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "writer_close: %s\n", err);
        return false;
    }
    return true;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static bool spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* Reads every record; counts those equal to V's in order (stops at the first mismatch). Returns
 * the number of records read, or -1 on a reader error or a mismatch. */
static long read_all_match(struct kvs_trace *t, const struct recs *v, size_t *matched)
{
    struct kvs_record *r;
    size_t n = 0;
    bool bad = false;
    enum kvs_status st;
    while ((st = kvs_trace_next(t, &r, NULL)) == KVS_OK && r) {
        if (n >= v->n || !rec_equal(r, v->r[n])) bad = true;
        kvs_record_unref(r);
        if (!bad) n++;
        else break;
    }
    if (matched) *matched = n;
    if (st != KVS_OK) fprintf(stderr, "   reader error: %s\n", kvs_trace_error(t));
    return (st != KVS_OK || bad) ? -1 : (long)n;
}

/* ---- byte-level layout (from the man page), independent of the library ---- */

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)v); wr32(p + 4, (uint32_t)(v >> 32)); }

struct chunk_at {
    uint64_t off, end;
    uint8_t type;
    uint32_t n_records, n_steps;
};

/* Splits a file into its header length and chunks; returns the number of chunks. */
static size_t layout(const uint8_t *b, size_t len, uint32_t *hlen, struct chunk_at *out, size_t cap)
{
    *hlen = le32(b + 12);
    size_t n = 0;
    uint64_t off = *hlen;
    while (off + 72 <= len && le32(b + off) == 0xB743564Bu && n < cap) {
        uint32_t comp = le32(b + off + 8);
        out[n] = (struct chunk_at){ off, off + 72 + comp, b[off + 4], le32(b + off + 52), le32(b + off + 48) };
        off = out[n].end;
        n++;
        if (b[off - 72 - comp + 4] == 4) break; /* footer */
    }
    return n;
}

/* Records in the DATA chunks that end at or before LIMIT. */
static size_t records_before(const struct chunk_at *c, size_t n, uint64_t limit, size_t *steps)
{
    size_t r = 0, s = 0;
    for (size_t i = 0; i < n && c[i].end <= limit; i++)
        if (c[i].type == 1) { r += c[i].n_records; s += c[i].n_steps; }
    if (steps) *steps = s;
    return r;
}

/* Builds a chunk: 72-byte header + PAYLOAD stored (codec 0). */
static size_t make_chunk(uint8_t *out, uint8_t type, uint64_t seq, const uint8_t *payload, uint32_t len,
                         uint64_t first_step, uint32_t n_steps, uint32_t n_records)
{
    memset(out, 0, 72);
    wr32(out, 0xB743564Bu);
    out[4] = type;
    out[5] = 0;
    wr32(out + 8, len);
    wr32(out + 12, len);
    wr64(out + 16, seq);
    wr64(out + 40, first_step);
    wr32(out + 48, n_steps);
    wr32(out + 52, n_records);
    wr32(out + 64, kvs_crc32c(0, payload, len));
    wr32(out + 68, kvs_crc32c(0, out, 68));
    memcpy(out + 72, payload, len);
    return 72 + len;
}

/* ---- tests ---- */

static void test_crc32c(void)
{
    CHECK(kvs_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(kvs_crc32c(0, "", 0) == 0);
    uint8_t buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (uint8_t)(rnd() >> 7);
    uint32_t whole = kvs_crc32c(0, buf, sizeof buf);
    bool ok = true;
    for (size_t cut = 0; cut <= sizeof buf; cut += 37)
        ok &= kvs_crc32c(kvs_crc32c(0, buf, cut), buf + cut, sizeof buf - cut) == whole;
    CHECK(ok);
    /* bitwise reference */
    uint32_t c = ~0u;
    for (size_t i = 0; i < sizeof buf; i++) {
        c ^= buf[i];
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    CHECK(~c == whole);
    /* unaligned starts */
    for (int a = 1; a < 8; a++) CHECK(kvs_crc32c(0, buf + a, 100) == kvs_crc32c(0, memcpy(buf + 500, buf + a, 100), 100));
}

static struct kvs_trace_writer_opts small_opts(void)
{
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.replace = true; /* scratch names are reused when the tests run again in one directory */
    o.keyframe_every = 8;
    o.chunk_bytes = 3000;
    o.index_every = 3;
    o.queue_cap = 100000;
    return o;
}

static void test_round_trip(void)
{
    struct recs v = {0};
    sample(&v, 120, 30, 8);
    struct kvs_trace_writer_opts o = small_opts();
    const char *path = tmp_path("rt.kvt");
    CHECK(write_trace(path, &v, &o));
    struct stat sb;
    CHECKF(stat(path, &sb) == 0, "renamed file exists");
    char part[600];
    snprintf(part, sizeof part, "%s.part", path);
    CHECKF(stat(part, &sb) != 0, ".part is gone after close");

    struct kvs_trace *t;
    char err[512];
    CHECKF(kvs_trace_open(&t, path, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK, "%s", err);
    if (!t) { recs_free(&v); return; }
    const struct kvs_trace_info *in = kvs_trace_get_info(t);
    CHECK(in->footer && !in->recovered && kvs_trace_note(t) == NULL);
    CHECKF(in->n_steps == v.n_steps, "%llu steps, wrote %zu", (unsigned long long)in->n_steps, v.n_steps);
    CHECKF(in->n_records == v.n, "%llu records, wrote %zu", (unsigned long long)in->n_records, v.n);
    CHECK(in->dropped == 0);
    CHECK(in->major == KVS_TRACE_MAJOR && in->keyframe_every == 8);
    CHECKF(in->n_keyframes == (v.n_steps - 1) / 8, "%llu keyframes", (unsigned long long)in->n_keyframes);
    CHECK(in->n_index_chunks >= 2);
    CHECK(in->comp_bytes < in->raw_bytes);
    CHECK(kvs_trace_meta_get(t, "model") && !strcmp(kvs_trace_meta_get(t, "model"), "tiny"));
    CHECK(kvs_trace_meta_get(t, "kvscope_version") && !strcmp(kvs_trace_meta_get(t, "kvscope_version"), KVS_VERSION));
    CHECK(kvs_trace_meta_get(t, "shapes") != NULL && kvs_trace_meta_get(t, "nope") == NULL);
    size_t matched;
    long n = read_all_match(t, &v, &matched);
    CHECKF(n == (long)v.n, "read %ld records, %zu matched, wrote %zu", n, matched, v.n);
    /* a second pass after rewind gives the same */
    kvs_trace_rewind(t);
    CHECK(read_all_match(t, &v, NULL) == (long)v.n);
    kvs_trace_close(t);

    /* fast open (footer only) reads the same */
    CHECKF(kvs_trace_open(&t, path, KVS_TRACE_OPEN_FAST, err, sizeof err) == KVS_OK, "%s", err);
    if (t) {
        CHECK(kvs_trace_n_steps(t) == v.n_steps);
        CHECK(read_all_match(t, &v, NULL) == (long)v.n);
        kvs_trace_close(t);
    }

    /* on-disk layout matches the man page */
    size_t len;
    uint8_t *b = slurp(path, &len);
    CHECK(b && memcmp(b, "\x89KVT\r\n\x1a\n", 8) == 0 && b[8] == 1 && b[9] == 0);
    uint32_t hlen = le32(b + 12);
    CHECK(hlen <= len && le32(b + hlen - 4) == kvs_crc32c(0, b, hlen - 4));
    CHECK(memcmp(b + len - 8, "KVTEND\r\n", 8) == 0);
    uint64_t foot = le64(b + len - 16);
    CHECK(foot < len && b[foot + 4] == 4);
    struct chunk_at ch[512];
    size_t nch = layout(b, len, &hlen, ch, 512);
    CHECK(nch > 10 && ch[nch - 1].off == foot && ch[nch - 1].end == len - 16);
    size_t steps;
    CHECK(records_before(ch, nch, len, &steps) == v.n && steps == v.n_steps);
    bool hdr_crc_ok = true;
    for (size_t i = 0; i < nch; i++) hdr_crc_ok &= le32(b + ch[i].off + 68) == kvs_crc32c(0, b + ch[i].off, 68);
    CHECK(hdr_crc_ok);
    free(b);
    recs_free(&v);
}

/* Every prefix of a small trace: the header or nothing, else the records of the complete chunks. */
static void test_truncation(void)
{
    struct recs v = {0};
    sample(&v, 24, 6, 2);
    struct kvs_trace_writer_opts o = small_opts();
    o.chunk_bytes = 900;
    const char *path = tmp_path("trunc.kvt");
    CHECK(write_trace(path, &v, &o));
    size_t len;
    uint8_t *full = slurp(path, &len);
    uint32_t hlen;
    struct chunk_at ch[256];
    size_t nch = layout(full, len, &hlen, ch, 256);
    fprintf(stderr, "   %zu bytes, header %u, %zu chunks\n", len, hlen, nch);
    size_t bad_open = 0, bad_count = 0, bad_note = 0, bad_refuse = 0;
    for (size_t L = 0; L <= len; L++) {
        uint8_t *cut = malloc(L ? L : 1); /* a buffer of exactly L bytes, so ASan sees overreads */
        memcpy(cut, full, L);
        struct kvs_trace *t;
        char err[512];
        enum kvs_status st = kvs_trace_open_mem(&t, cut, L, "cut.kvt", L % 2 ? KVS_TRACE_OPEN_VERIFY : 0, err, sizeof err);
        if (L < hlen) {
            if (st == KVS_OK) { bad_refuse++; kvs_trace_close(t); }
            free(cut);
            continue;
        }
        if (st != KVS_OK) { bad_open++; fprintf(stderr, "   L=%zu: %s\n", L, err); free(cut); continue; }
        size_t want_steps, want = records_before(ch, nch, L, &want_steps);
        long got = read_all_match(t, &v, NULL);
        if (got != (long)want || kvs_trace_n_steps(t) != want_steps) {
            bad_count++;
            if (bad_count < 5) fprintf(stderr, "   L=%zu: read %ld records, expected %zu\n", L, got, want);
        }
        const char *note = kvs_trace_note(t);
        bool complete = L >= ch[nch - 1].end; /* the footer chunk is whole */
        if (!complete && (!note || strncmp(note, "recovered ", 10) || !strstr(note, "tail lost at offset"))) bad_note++;
        kvs_trace_close(t);
        free(cut);
    }
    CHECKF(bad_refuse == 0, "%zu prefixes shorter than the header were accepted", bad_refuse);
    CHECKF(bad_open == 0, "%zu prefixes with a whole header were refused", bad_open);
    CHECKF(bad_count == 0, "%zu prefixes gave the wrong records", bad_count);
    CHECKF(bad_note == 0, "%zu prefixes had no recovery note", bad_note);

    /* recovery at a spread of cut points gives clean files with the same records */
    size_t bad_recover = 0, n_recover = 0;
    for (size_t L = hlen; L <= len; L += len / 37 + 1) {
        const char *in = tmp_path("cut-r.kvt.part"), *out = tmp_path("cut-r.kvt");
        struct kvs_trace_recover_report rep;
        char err[512];
        struct kvs_trace *t;
        size_t want = records_before(ch, nch, L, NULL);
        n_recover++;
        if (!spit(in, full, L) || kvs_trace_recover(in, out, true, &rep, err, sizeof err) != KVS_OK ||
            kvs_trace_open(&t, out, KVS_TRACE_OPEN_VERIFY, err, sizeof err) != KVS_OK) {
            bad_recover++;
            fprintf(stderr, "   recover at %zu: %s\n", L, err);
            continue;
        }
        long got = read_all_match(t, &v, NULL);
        if (!kvs_trace_get_info(t)->footer || got != (long)want) {
            bad_recover++;
            fprintf(stderr, "   recover at %zu: footer %d, %ld records, expected %zu (%s)\n", L,
                    kvs_trace_get_info(t)->footer, got, want, rep.note);
        }
        kvs_trace_close(t);
    }
    CHECKF(bad_recover == 0, "%zu of %zu recoveries wrong", bad_recover, n_recover);

    /* the note for one cut in the middle of a chunk names the offset */
    struct kvs_trace *t;
    char err[512];
    uint64_t mid = ch[3].off + 30;
    CHECK(kvs_trace_open_mem(&t, full, mid, "cut.kvt", 0, err, sizeof err) == KVS_OK);
    if (t) {
        char want[64];
        snprintf(want, sizeof want, "tail lost at offset %llu (", (unsigned long long)ch[3].off);
        CHECKF(strstr(kvs_trace_note(t), want) != NULL, "note: %s", kvs_trace_note(t));
        fprintf(stderr, "   e.g. %s\n", kvs_trace_note(t));
        kvs_trace_close(t);
    }
    free(full);
    recs_free(&v);
}

/* Every byte flipped (one bit each; every bit of the header): refused in the header; elsewhere
 * only the records before the damaged chunk come back, and never a wrong one. */
static void test_bit_flips(void)
{
    struct recs v = {0};
    sample(&v, 30, 5, 2);
    struct kvs_trace_writer_opts o = small_opts();
    o.chunk_bytes = 1500;
    const char *path = tmp_path("flip.kvt");
    CHECK(write_trace(path, &v, &o));
    size_t len;
    uint8_t *b = slurp(path, &len);
    uint32_t hlen;
    struct chunk_at ch[256];
    size_t nch = layout(b, len, &hlen, ch, 256);
    size_t hdr_accepted = 0, wrong = 0, tried = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            if (i >= hlen && bit != (int)(i % 8)) continue;
            b[i] ^= (uint8_t)(1u << bit);
            tried++;
            struct kvs_trace *t;
            char err[512];
            enum kvs_status st = kvs_trace_open_mem(&t, b, len, "flip.kvt", i % 3 == 0 ? KVS_TRACE_OPEN_VERIFY : 0,
                                                    err, sizeof err);
            if (i < hlen) {
                if (st == KVS_OK) { hdr_accepted++; kvs_trace_close(t); }
            } else if (st != KVS_OK) {
                wrong++;
                fprintf(stderr, "   flip at %zu refused: %s\n", i, err);
            } else {
                /* the chunk holding byte i and everything after it are lost; the trailer is not
                 * covered by a CRC but only locates the footer, which is found by scanning too */
                uint64_t limit = len;
                for (size_t c = 0; c < nch; c++)
                    if (i >= ch[c].off && i < ch[c].end) limit = ch[c].off;
                size_t want = records_before(ch, nch, limit, NULL);
                long got = read_all_match(t, &v, NULL);
                if (got != (long)want) {
                    wrong++;
                    if (wrong < 5) fprintf(stderr, "   flip at %zu: %ld records, expected %zu\n", i, got, want);
                }
                kvs_trace_close(t);
            }
            b[i] ^= (uint8_t)(1u << bit);
        }
    }
    fprintf(stderr, "   %zu flips over %zu bytes\n", tried, len);
    CHECKF(hdr_accepted == 0, "%zu header flips were accepted", hdr_accepted);
    CHECKF(wrong == 0, "%zu flips gave wrong results", wrong);

    /* the messages name the problem */
    struct kvs_trace *t;
    char err[512];
    b[ch[2].off + 72 + 5] ^= 0x10;
    CHECK(kvs_trace_open_mem(&t, b, len, "flip.kvt", 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECKF(strstr(kvs_trace_note(t), "payload CRC mismatch") != NULL, "%s", kvs_trace_note(t));
        kvs_trace_close(t);
    }
    b[ch[2].off + 72 + 5] ^= 0x10;
    b[ch[2].off + 20] ^= 0x01;
    CHECK(kvs_trace_open_mem(&t, b, len, "flip.kvt", 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECKF(strstr(kvs_trace_note(t), "chunk header CRC mismatch") != NULL, "%s", kvs_trace_note(t));
        kvs_trace_close(t);
    }
    b[ch[2].off + 20] ^= 0x01;
    b[hlen - 10] ^= 0x04;
    CHECK(kvs_trace_open_mem(&t, b, len, "flip.kvt", 0, err, sizeof err) != KVS_OK);
    CHECKF(strstr(err, "flip.kvt: offset") && strstr(err, "header CRC mismatch"), "%s", err);
    b[hlen - 10] ^= 0x04;
    free(b);
    recs_free(&v);
}

static void put_log_record(uint8_t *p, size_t *n, uint64_t seq, uint32_t level, const char *text, uint32_t extra)
{
    size_t tl = strlen(text);
    uint32_t body = (uint32_t)(8 + 4 + 1 + tl + extra);
    p[*n] = 7; p[*n + 1] = 0; p[*n + 2] = 0; p[*n + 3] = 0;
    wr32(p + *n + 4, body);
    uint8_t *q = p + *n + 8;
    wr64(q, seq);
    wr32(q + 8, level);
    q[12] = (uint8_t)tl;
    memcpy(q + 13, text, tl);
    memset(q + 13 + tl, 0xab, extra);
    *n += 8 + body;
}

static void test_unknown_types(void)
{
    struct recs v = {0};
    sample(&v, 20, 4, 1);
    struct kvs_trace_writer_opts o = small_opts();
    o.chunk_bytes = 1500;
    const char *path = tmp_path("unk.kvt");
    CHECK(write_trace(path, &v, &o));
    size_t len;
    uint8_t *b = slurp(path, &len);
    uint32_t hlen;
    struct chunk_at ch[128];
    size_t nch = layout(b, len, &hlen, ch, 128);
    uint64_t foot = ch[nch - 1].off;

    /* an unknown chunk type after the first data chunk, footer dropped: scanned, skipped */
    uint8_t *nb = malloc(len + 4096);
    uint8_t payload[100];
    for (int i = 0; i < 100; i++) payload[i] = (uint8_t)i;
    size_t at = ch[0].end;
    memcpy(nb, b, at);
    size_t n = at + make_chunk(nb + at, 77, 999, payload, sizeof payload, UINT64_MAX, 0, 0);
    memcpy(nb + n, b + at, foot - at);
    n += foot - at;
    struct kvs_trace *t;
    char err[512];
    CHECKF(kvs_trace_open_mem(&t, nb, n, "unk.kvt", KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK, "%s", err);
    if (t) {
        CHECK(kvs_trace_get_info(t)->n_unknown_chunks == 1);
        CHECK(read_all_match(t, &v, NULL) == (long)v.n);
        /* seeking across the unknown chunk */
        uint64_t kf;
        kvs_trace_seek_step(t, 17, &kf);
        CHECK(kf == 16);
        kvs_trace_close(t);
    }
    /* recovered into a clean file, the unknown chunk kept and still skipped */
    const char *p2 = tmp_path("unk2.kvt"), *p3 = tmp_path("unk3.kvt");
    CHECK(spit(p2, nb, n));
    struct kvs_trace_recover_report rep;
    CHECKF(kvs_trace_recover(p2, p3, true, &rep, err, sizeof err) == KVS_OK, "%s", err);
    CHECK(!rep.was_clean && rep.n_steps == v.n_steps);
    CHECKF(kvs_trace_open(&t, p3, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK, "%s", err);
    if (t) {
        CHECK(kvs_trace_get_info(t)->footer && kvs_trace_get_info(t)->n_unknown_chunks == 1);
        CHECK(read_all_match(t, &v, NULL) == (long)v.n);
        kvs_trace_close(t);
    }

    /* unknown record types inside a data chunk, and a record with extra trailing bytes */
    uint8_t pl[512];
    size_t pn = 0;
    pl[pn] = 99; pl[pn + 1] = 0; pl[pn + 2] = 0; pl[pn + 3] = 0;
    wr32(pl + pn + 4, 13);
    memset(pl + pn + 8, 0x5a, 13);
    pn += 8 + 13;
    put_log_record(pl, &pn, 41, 1, "first", 0);
    pl[pn] = 0x34; pl[pn + 1] = 0x12; pl[pn + 2] = 0; pl[pn + 3] = 0; wr32(pl + pn + 4, 0);
    pn += 8;
    put_log_record(pl, &pn, 42, 2, "second, from a newer minor version", 9);
    memcpy(nb, b, hlen);
    n = hlen + make_chunk(nb + hlen, 1, 0, pl, (uint32_t)pn, UINT64_MAX, 0, 4);
    CHECKF(kvs_trace_open_mem(&t, nb, n, "rec.kvt", KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK, "%s", err);
    if (t) {
        struct kvs_record *r1 = NULL, *r2 = NULL, *r3 = NULL;
        CHECK(kvs_trace_next(t, &r1, NULL) == KVS_OK && r1 && r1->type == KVS_REC_LOG && r1->seq == 41 &&
              !strcmp(r1->u.log.text, "first") && r1->u.log.level == 1);
        CHECK(kvs_trace_next(t, &r2, NULL) == KVS_OK && r2 && r2->type == KVS_REC_LOG && r2->seq == 42 &&
              !strcmp(r2->u.log.text, "second, from a newer minor version"));
        CHECK(kvs_trace_next(t, &r3, NULL) == KVS_OK && r3 == NULL);
        kvs_record_unref(r1);
        kvs_record_unref(r2);
        kvs_trace_close(t);
    }
    /* a record whose length runs past its chunk is an error naming the chunk */
    pn = 0;
    put_log_record(pl, &pn, 1, 0, "x", 0);
    wr32(pl + 4, 500);
    n = hlen + make_chunk(nb + hlen, 1, 0, pl, (uint32_t)pn, UINT64_MAX, 0, 1);
    CHECK(kvs_trace_open_mem(&t, nb, n, "bad.kvt", 0, err, sizeof err) == KVS_OK);
    if (t) {
        struct kvs_record *r = NULL;
        enum kvs_status st = kvs_trace_next(t, &r, NULL);
        CHECKF(st == KVS_ERR_FORMAT && r == NULL, "status %d", st);
        char want[64];
        snprintf(want, sizeof want, "bad.kvt: offset %u: record", hlen);
        CHECKF(strstr(kvs_trace_error(t), want) != NULL, "%s", kvs_trace_error(t));
        kvs_trace_close(t);
    }
    /* ... and with VERIFY the chunk is rejected at open */
    CHECK(kvs_trace_open_mem(&t, nb, n, "bad.kvt", KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK);
    if (t) {
        CHECK(kvs_trace_n_steps(t) == 0 && kvs_trace_note(t) && strstr(kvs_trace_note(t), "claims 500 body bytes"));
        kvs_trace_close(t);
    }
    free(nb);
    free(b);
    recs_free(&v);
}

/* A step record as older writers wrote it, without the appended cache overflow count (its last 8
 * bytes): read back, the count is 0 (nothing was counted then) and every field before it intact;
 * the current record round-trips the count. */
static void test_step_without_cache_count(void)
{
    struct kvs_record *r = mk_step(9, 30, 8), *back = NULL;
    r->u.step.acts_saturated = 5;
    r->u.step.cache_saturated = 123456789012ull;
    struct kvt_buf b = {0};
    char err[256] = "";
    size_t used = 0;
    CHECK(kvt_record_encode(&b, r) && !b.oom && b.len > 16);
    CHECKF(kvt_record_decode(b.p, b.len, &used, &back, err, sizeof err) == KVS_OK && back && used == b.len, "%s", err);
    CHECK(back && back->u.step.cache_saturated == 123456789012ull && back->u.step.acts_saturated == 5);
    kvs_record_unref(back);
    back = NULL;
    kvt_put32(b.p + 4, kvt_get32(b.p + 4) - 8); /* the body length, less the count */
    CHECKF(kvt_record_decode(b.p, b.len - 8, &used, &back, err, sizeof err) == KVS_OK && back && used == b.len - 8,
           "%s", err);
    CHECKF(back && back->u.step.cache_saturated == 0 && back->u.step.acts_saturated == 5 &&
               back->u.step.dev_pool_bytes == r->u.step.dev_pool_bytes && back->u.step.step == 9,
           "an older step record: cache_saturated %llu, acts_saturated %llu",
           back ? (unsigned long long)back->u.step.cache_saturated : 0ull,
           back ? (unsigned long long)back->u.step.acts_saturated : 0ull);
    kvs_record_unref(back);
    kvs_record_unref(r);
    kvt_buf_free(&b);
}

static void test_versions(void)
{
    struct recs v = {0};
    sample(&v, 10, 4, 1);
    struct kvs_trace_writer_opts o = small_opts();
    const char *path = tmp_path("ver.kvt");
    CHECK(write_trace(path, &v, &o));
    size_t len;
    uint8_t *b = slurp(path, &len);
    uint32_t hlen = le32(b + 12);
    struct kvs_trace *t;
    char err[512];

    b[8] = 2; /* major 2 */
    wr32(b + hlen - 4, kvs_crc32c(0, b, hlen - 4));
    CHECK(kvs_trace_open_mem(&t, b, len, "v2.kvt", 0, err, sizeof err) == KVS_ERR_UNSUPPORTED);
    CHECKF(strstr(err, "v2.kvt") && strstr(err, "2.0") && strstr(err, "newer"), "%s", err);
    fprintf(stderr, "   %s\n", err);

    b[8] = 1;
    b[16] = 0x02; /* an incompatible feature bit */
    wr32(b + hlen - 4, kvs_crc32c(0, b, hlen - 4));
    CHECK(kvs_trace_open_mem(&t, b, len, "inc.kvt", 0, err, sizeof err) == KVS_ERR_UNSUPPORTED);
    CHECKF(strstr(err, "incompatible features 0x2"), "%s", err);
    fprintf(stderr, "   %s\n", err);

    b[16] = 0;
    b[10] = 7;    /* minor 1.7 */
    b[24] = 0x81; /* compatible features: ignored */
    wr32(b + hlen - 4, kvs_crc32c(0, b, hlen - 4));
    CHECK(kvs_trace_open_mem(&t, b, len, "minor.kvt", 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECK(kvs_trace_get_info(t)->minor == 7 && kvs_trace_get_info(t)->compat == 0x81);
        CHECK(read_all_match(t, &v, NULL) == (long)v.n);
        kvs_trace_close(t);
    }
    CHECK(kvs_trace_open_mem(&t, "GGUF\3\0\0\0 not a trace", 20, "x.gguf", 0, err, sizeof err) == KVS_ERR_FORMAT);
    CHECKF(strstr(err, "not a kvscope trace"), "%s", err);
    CHECK(kvs_trace_open(&t, tmp_path("missing.kvt"), 0, err, sizeof err) == KVS_ERR_IO && strstr(err, "missing.kvt"));
    free(b);
    recs_free(&v);
}

static void test_overflow(void)
{
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.replace = true; /* scratch names are reused when the tests run again in one directory */
    o.queue_cap = 4;
    const char *path = tmp_path("drop.kvt");
    struct kvs_trace_writer *w;
    char err[512];
    CHECK(kvs_trace_writer_open(&w, path, NULL, 0, &o, err, sizeof err) == KVS_OK);
    if (!w) return;
    g_seq = 0;
    g_ctx = 0;
    uint64_t refused = 0, pushed = 0, steps = 0;
    /* a big matrix keeps the writer busy while small records pour in */
    for (int round = 0; round < 4; round++) {
        kvs_trace_writer_push(w, mk_matrix(KVS_MAT_SIM_HIDDEN, 0, 1024, 1024)) ? pushed++ : refused++;
        for (int i = 0; i < 20000; i++) {
            bool ok = kvs_trace_writer_push(w, mk_step(steps, 4, 1));
            if (ok) { pushed++; steps++; } else refused++;
        }
    }
    /* a slower producer gets everything through */
    for (int i = 0; i < 50; i++) {
        while (!kvs_trace_writer_push(w, mk_step(steps, 4, 1))) { refused++; usleep(2000); }
        pushed++;
        steps++;
    }
    uint64_t dropped = kvs_trace_writer_dropped(w);
    CHECKF(dropped == refused && refused > 0, "dropped %llu, refused %llu", (unsigned long long)dropped,
           (unsigned long long)refused);
    CHECK(kvs_trace_writer_close(w, err, sizeof err) == KVS_OK);
    struct kvs_trace *t;
    CHECK(kvs_trace_open(&t, path, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK);
    if (t) {
        const struct kvs_trace_info *in = kvs_trace_get_info(t);
        CHECKF(in->dropped == refused, "footer says %llu dropped", (unsigned long long)in->dropped);
        CHECKF(in->n_records == pushed && in->n_steps == steps, "%llu records of %llu pushed",
               (unsigned long long)in->n_records, (unsigned long long)pushed);
        fprintf(stderr, "   %llu pushed, %llu dropped with a 4-record queue\n", (unsigned long long)pushed,
                (unsigned long long)refused);
        kvs_trace_close(t);
    }
}

static void test_seek(void)
{
    struct recs v = {0};
    sample(&v, 150, 8, 2);
    struct kvs_trace_writer_opts o = small_opts();
    o.keyframe_every = 16;
    const char *path = tmp_path("seek.kvt");
    CHECK(write_trace(path, &v, &o));
    /* position in V of each trace step */
    size_t *pos = calloc(v.n_steps, sizeof *pos);
    for (size_t i = 0, s = 0; i < v.n; i++)
        if (v.r[i]->type == KVS_REC_STEP) pos[s++] = i;
    for (int mode = 0; mode < 2; mode++) {
        struct kvs_trace *t;
        char err[512];
        const char *p = path;
        if (mode == 1) {
            /* the same without a footer: the index comes from the scan */
            size_t len;
            uint8_t *b = slurp(path, &len);
            uint32_t hlen;
            struct chunk_at ch[512];
            size_t nch = layout(b, len, &hlen, ch, 512);
            p = tmp_path("seek-nofooter.kvt");
            spit(p, b, ch[nch - 1].off);
            free(b);
        }
        CHECK(kvs_trace_open(&t, p, 0, err, sizeof err) == KVS_OK);
        if (!t) continue;
        CHECK(kvs_trace_get_info(t)->footer == (mode == 0));
        size_t bad = 0, bad_state = 0;
        for (uint64_t target = 0; target < v.n_steps; target++) {
            uint64_t kf;
            kvs_trace_seek_step(t, target, &kf);
            if (kf > target || target - kf >= 16 || kf % 16) { bad++; continue; }
            /* keyframe state = the latest RUN, matrices and quality before step kf */
            struct kvs_record *r;
            struct kvs_trace_where w;
            size_t i = kf == 0 ? 0 : pos[kf];
            bool found = false;
            while (kvs_trace_next(t, &r, &w) == KVS_OK && r) {
                if (w.keyframe) {
                    /* an equal record must precede pos[kf], with no newer one of the same key */
                    bool ok = false;
                    for (size_t j = pos[kf]; j-- > 0;) {
                        const struct kvs_record *q = v.r[j];
                        if (q->type != r->type) continue;
                        if (r->type == KVS_REC_MATRIX &&
                            (q->u.matrix.kind != r->u.matrix.kind || q->u.matrix.group != r->u.matrix.group)) continue;
                        if (r->type == KVS_REC_QUALITY && strcmp(q->u.quality.method, r->u.quality.method)) continue;
                        ok = rec_equal(q, r);
                        break;
                    }
                    if (!ok) bad_state++;
                    kvs_record_unref(r);
                    continue;
                }
                /* after the state: exactly the records from the keyframe's step on */
                if (i >= v.n || !rec_equal(r, v.r[i])) { bad++; kvs_record_unref(r); break; }
                i++;
                bool hit = r->type == KVS_REC_STEP && w.step == target;
                kvs_record_unref(r);
                if (hit) { found = true; break; }
            }
            if (!found) bad++;
        }
        CHECKF(bad == 0 && bad_state == 0, "mode %d: %zu seeks wrong, %zu bad keyframe states", mode, bad, bad_state);
        /* past the end: the last keyframe */
        uint64_t kf;
        kvs_trace_seek_step(t, 1u << 30, &kf);
        CHECK(kf == (v.n_steps - 1) / 16 * 16);
        /* by token: in the first run tokens 0..36 are the prefill step, then one per step */
        uint64_t s;
        CHECK(kvs_trace_seek_token(t, 20, &s, &kf) == KVS_OK && s == 0 && kf == 0);
        CHECK(kvs_trace_seek_token(t, 37 + 40, &s, &kf) == KVS_OK && s == 41 && kf == 32);
        if (kf == 32) {
            struct kvs_record *r;
            struct kvs_trace_where w;
            bool saw = false;
            while (kvs_trace_next(t, &r, &w) == KVS_OK && r) {
                bool hit = r->type == KVS_REC_STEP && !w.keyframe && w.step == s;
                if (hit) saw = r->u.step.n_ctx - r->u.step.n_new <= 77 && 77 < r->u.step.n_ctx;
                kvs_record_unref(r);
                if (hit) break;
            }
            CHECK(saw);
        }
        CHECK(kvs_trace_seek_token(t, 100000, &s, &kf) == KVS_ERR_ARG);
        kvs_trace_close(t);
    }
    free(pos);
    recs_free(&v);
}

static void test_recover(void)
{
    struct recs v = {0};
    sample(&v, 60, 6, 2);
    /* a writer that never closes: abort leaves NAME.part as a crash would */
    const char *path = tmp_path("crash.kvt");
    struct kvs_trace_writer_opts o = small_opts();
    o.chunk_bytes = 2000;
    o.flush_ms = 20;
    struct kvs_trace_writer *w;
    char err[512];
    CHECK(kvs_trace_writer_open(&w, path, NULL, 0, &o, err, sizeof err) == KVS_OK);
    if (!w) { recs_free(&v); return; }
    for (size_t i = 0; i < v.n; i++) kvs_trace_writer_push(w, kvs_record_ref(v.r[i]));
    usleep(200 * 1000); /* the time flush writes the last partial chunk */
    kvs_trace_writer_abort(w);
    char part[600];
    snprintf(part, sizeof part, "%s.part", path);
    struct stat sb;
    CHECK(stat(part, &sb) == 0 && stat(path, &sb) != 0);
    struct kvs_trace *t;
    CHECK(kvs_trace_open(&t, part, 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECK(!kvs_trace_get_info(t)->footer && kvs_trace_note(t) &&
              strstr(kvs_trace_note(t), "no footer: the writer did not finish the file"));
        CHECK(read_all_match(t, &v, NULL) == (long)v.n);
        fprintf(stderr, "   %s\n", kvs_trace_note(t));
        kvs_trace_close(t);
    }
    /* cut in the middle of a chunk too, then recovered */
    size_t len;
    uint8_t *b = slurp(part, &len);
    uint32_t hlen;
    struct chunk_at ch[256];
    size_t nch = layout(b, len, &hlen, ch, 256);
    CHECK(nch > 3);
    size_t cut = (size_t)(ch[nch - 2].off + 40);
    size_t want = records_before(ch, nch, cut, NULL);
    const char *cutp = tmp_path("cut.kvt.part"), *out = tmp_path("recovered.kvt");
    CHECK(spit(cutp, b, cut));
    struct kvs_trace_recover_report rep;
    CHECKF(kvs_trace_recover(cutp, out, true, &rep, err, sizeof err) == KVS_OK, "%s", err);
    CHECK(!rep.was_clean && strstr(rep.note, "tail lost at offset"));
    fprintf(stderr, "   recover: %s\n", rep.note);
    CHECK(kvs_trace_open(&t, out, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK);
    if (t) {
        CHECK(kvs_trace_get_info(t)->footer && !kvs_trace_note(t));
        CHECK(read_all_match(t, &v, NULL) == (long)want);
        uint64_t kf;
        kvs_trace_seek_step(t, kvs_trace_n_steps(t) - 1, &kf);
        CHECK(kf == (kvs_trace_n_steps(t) - 1) / 8 * 8);
        kvs_trace_close(t);
    }
    /* recovering a clean trace keeps it whole */
    const char *out2 = tmp_path("recovered2.kvt");
    CHECK(kvs_trace_recover(out, out2, true, &rep, err, sizeof err) == KVS_OK && rep.was_clean);
    CHECK(kvs_trace_open(&t, out2, 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECK(read_all_match(t, &v, NULL) == (long)want);
        kvs_trace_close(t);
    }
    /* nothing usable: a clear error */
    CHECK(kvs_trace_recover(tmp_path("missing.kvt"), out2, true, &rep, err, sizeof err) == KVS_ERR_IO);
    free(b);
    recs_free(&v);
}

/* The fields of one CSV line (quotes honoured); returns the count. */
static int csv_fields(const char *line, size_t len)
{
    int n = 1;
    bool q = false;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '"') q = !q;
        else if (line[i] == ',' && !q) n++;
    }
    return n;
}

static void test_export(void)
{
    struct recs v = {0};
    sample(&v, 40, 30, 8);
    struct kvs_trace_writer_opts o = small_opts();
    const char *path = tmp_path("exp.kvt");
    CHECK(write_trace(path, &v, &o));
    struct kvs_trace *t;
    char err[512];
    CHECK(kvs_trace_open(&t, path, 0, err, sizeof err) == KVS_OK);
    if (!t) { recs_free(&v); return; }

    /* JSON lines: one per record, the same as formatting the records directly */
    char *buf = NULL, *ref = NULL;
    size_t len = 0, rlen = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(kvs_trace_export(t, KVS_TRACE_FMT_JSONL, 0, UINT64_MAX, f, err, sizeof err) == KVS_OK);
    fclose(f);
    f = open_memstream(&ref, &rlen);
    for (size_t i = 0; i < v.n; i++) kvs_record_to_json(v.r[i], f);
    fclose(f);
    CHECK(len == rlen && memcmp(buf, ref, len) == 0);
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    CHECK(lines == v.n);
    CHECK(strstr(buf, "\"layer_sim\":[null,-0,null,") != NULL);   /* NaN, -0, -inf */
    CHECK(strstr(buf, "\"piece\":\"\\ufffd\\ufffd\"") != NULL);    /* a cut UTF-8 sequence */
    CHECK(strstr(buf, "\"piece\":\"\\\"q\\\",\"") != NULL);
    CHECK(strstr(buf, "\"piece\":\"\xc3\xa9t\xc3\xa9\"") != NULL);
    CHECK(strstr(buf, "\"layer_kept\":[") != NULL && strstr(buf, "\"logprob\":null") != NULL); /* validity bits */
    /* the card: an object on measured steps, null on the others; the clamped activations always */
    CHECK(strstr(buf, "\"device\":{\"mem_used\":") != NULL && strstr(buf, ",\"mem_total\":85899345920,") != NULL);
    CHECK(strstr(buf, "\"device\":null,\"acts_saturated\":0,") != NULL);
    CHECK(strstr(buf, "\"acts_saturated\":6000018,\"cache_saturated\":42000006,") != NULL);
    free(buf);
    free(ref);

    /* CSV: a header and one row per step, all the same width; windows */
    buf = NULL;
    f = open_memstream(&buf, &len);
    CHECK(kvs_trace_export(t, KVS_TRACE_FMT_CSV, 10, 19, f, err, sizeof err) == KVS_OK);
    fclose(f);
    int rows = 0, width = -1;
    bool same = true, first_ok = false;
    for (char *p = buf, *nl; p < buf + len; p = nl + 1) {
        /* a quoted piece may hold a newline: find the line end outside quotes */
        bool q = false;
        for (nl = p; nl < buf + len && (q || *nl != '\n'); nl++) if (*nl == '"') q = !q;
        int n = csv_fields(p, (size_t)(nl - p));
        if (width < 0) width = n;
        else {
            same &= n == width;
            if (rows == 0) first_ok = !strncmp(p, "10,", 3);
            rows++;
        }
    }
    CHECKF(rows == 10 && same && first_ok, "%d rows, same width %d, first row at step 10 %d", rows, same, first_ok);
    CHECK(width == 19 + KVS_OP_COUNT + 29 + 2 * 30 + 3 * 8);
    free(buf);

    /* Perfetto: structure (the full JSON check is in t_traces.sh with python3) */
    buf = NULL;
    f = open_memstream(&buf, &len);
    CHECK(kvs_trace_export(t, KVS_TRACE_FMT_PERFETTO, 0, UINT64_MAX, f, err, sizeof err) == KVS_OK);
    fclose(f);
    CHECK(!strncmp(buf, "{\"traceEvents\":[", 16) && strstr(buf, "\"displayTimeUnit\":\"ms\""));
    CHECK(strstr(buf, "\"ph\":\"C\",\"name\":\"L29 bytes held\"") && strstr(buf, "\"ph\":\"i\",\"s\":\"t\""));
    CHECK(strstr(buf, "\"name\":\"process_name\",\"pid\":2") != NULL); /* the second run */
    CHECK(strstr(buf, "GPU stream 7") != NULL);
    free(buf);
    CHECK(kvs_trace_export(t, KVS_TRACE_FMT_CSV, 5, 4, stdout, err, sizeof err) == KVS_ERR_ARG);
    CHECK(kvs_trace_format_parse("perfetto") == KVS_TRACE_FMT_PERFETTO && kvs_trace_format_parse("xml") == 0);
    kvs_trace_close(t);
    recs_free(&v);
}

static void test_time_flush(void)
{
    /* a slow producer's records reach the disk within flush_ms, without a close */
    const char *path = tmp_path("flush.kvt");
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.replace = true; /* scratch names are reused when the tests run again in one directory */
    o.flush_ms = 30;
    struct kvs_trace_writer *w;
    char err[512];
    CHECK(kvs_trace_writer_open(&w, path, NULL, 0, &o, err, sizeof err) == KVS_OK);
    if (!w) return;
    g_seq = 0;
    kvs_trace_writer_push(w, mk_run(1, 4, 1));
    kvs_trace_writer_push(w, mk_step(0, 4, 1));
    usleep(300 * 1000);
    char part[600];
    snprintf(part, sizeof part, "%s.part", path);
    struct kvs_trace *t;
    CHECK(kvs_trace_open(&t, part, 0, err, sizeof err) == KVS_OK);
    if (t) {
        CHECKF(kvs_trace_n_steps(t) == 1, "%llu steps on disk", (unsigned long long)kvs_trace_n_steps(t));
        kvs_trace_close(t);
    }
    CHECK(kvs_trace_writer_close(w, err, sizeof err) == KVS_OK);
    /* a trace with no records at all is clean and empty */
    const char *empty = tmp_path("empty.kvt");
    CHECK(kvs_trace_writer_open(&w, empty, NULL, 0, &o, err, sizeof err) == KVS_OK);
    if (w) CHECK(kvs_trace_writer_close(w, err, sizeof err) == KVS_OK);
    CHECK(kvs_trace_open(&t, empty, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK);
    if (t) {
        struct kvs_record *r = (struct kvs_record *)1;
        uint64_t kf = 1;
        CHECK(kvs_trace_get_info(t)->footer && kvs_trace_n_steps(t) == 0);
        CHECK(kvs_trace_next(t, &r, NULL) == KVS_OK && r == NULL);
        CHECK(kvs_trace_seek_step(t, 5, &kf) == KVS_OK && kf == 0);
        kvs_trace_close(t);
    }
    /* a bad metadata key is refused */
    struct kvs_trace_kv bad[] = { { "a=b", "c" } };
    CHECK(kvs_trace_writer_open(&w, path, bad, 1, NULL, err, sizeof err) == KVS_ERR_ARG && w == NULL);
    /* an unwritable place: a clear error */
    CHECK(kvs_trace_writer_open(&w, "/nonexistent-dir/x.kvt", NULL, 0, NULL, err, sizeof err) == KVS_ERR_IO);
    CHECKF(strstr(err, "/nonexistent-dir/x.kvt.part: cannot create"), "%s", err);
}

/* Steps on disk in PATH.part (0 when it cannot be read yet). */
static uint64_t part_steps(const char *path)
{
    char part[600], err[512];
    snprintf(part, sizeof part, "%s.part", path);
    struct kvs_trace *t;
    if (kvs_trace_open(&t, part, 0, err, sizeof err) != KVS_OK) return 0;
    uint64_t n = kvs_trace_n_steps(t);
    kvs_trace_close(t);
    return n;
}

static void test_step_flush(void)
{
    /* the crash-loss bound: flush_steps steps reach the disk (write(2), no close) however young
     * they are; the age limit is set out of reach so only the step count can write them */
    const char *path = tmp_path("steps.kvt");
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    CHECK(o.flush_steps == 8 && o.flush_ms == 100);
    o.flush_ms = 600000;
    o.replace = true; /* a scratch file of ours: the ASan tier runs this binary again in the same folder */
    struct kvs_trace_writer *w;
    char err[512];
    CHECKF(kvs_trace_writer_open(&w, path, NULL, 0, &o, err, sizeof err) == KVS_OK, "%s", err);
    if (!w) return;
    g_seq = 0;
    kvs_trace_writer_push(w, mk_run(1, 4, 1));
    for (uint64_t s = 0; s < 19; s++) kvs_trace_writer_push(w, mk_step(s, 4, 1));
    /* a condition with a generous deadline, not a sleep: 16 of the 19 steps are due */
    uint64_t deadline = kvs_now_ns() + 30000000000ull, n = 0;
    while ((n = part_steps(path)) < 16 && kvs_now_ns() < deadline) usleep(10 * 1000);
    CHECKF(n == 16, "%llu steps on disk, expected 16 (two chunks of 8; 3 still open)", (unsigned long long)n);
    CHECK(kvs_trace_writer_close(w, err, sizeof err) == KVS_OK);
}

static bool file_is(const char *path, const char *want)
{
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return n == strlen(want) && memcmp(buf, want, n) == 0;
}

static bool put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

/* Files that are not ours: the writer and recovery never write into or replace a FIFO, a device
 * (also behind a symbolic link) or, unless asked, an existing file; not even one that appears
 * while the recording runs. Never touches a real device: the link's target is only examined. */
static void test_targets(void)
{
    char err[512];
    struct kvs_trace_writer *w = NULL;
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    char fifo[512], link_dev[512], old[512], name[512], other[512]; /* tmp_path's buffers rotate */
    snprintf(fifo, sizeof fifo, "%s", tmp_path("tg-fifo.kvt"));
    snprintf(link_dev, sizeof link_dev, "%s", tmp_path("tg-devnull.kvt"));
    snprintf(old, sizeof old, "%s", tmp_path("tg-old.kvt"));
    snprintf(name, sizeof name, "%s", tmp_path("tg-new.kvt"));
    snprintf(other, sizeof other, "%s", tmp_path("tg-other.kvt"));
    unlink(fifo);
    unlink(link_dev);
    CHECK(mkfifo(fifo, 0600) == 0);
    CHECK(symlink("/dev/null", link_dev) == 0);
    struct stat before, after;
    CHECK(lstat(fifo, &before) == 0);
    for (int replace = 0; replace < 2; replace++) {
        o.replace = replace;
        CHECKF(kvs_trace_writer_open(&w, fifo, NULL, 0, &o, err, sizeof err) == KVS_ERR_ARG && !w && strstr(err, "a FIFO"),
               "FIFO target refused (replace %d): %s", replace, err);
        CHECKF(kvs_trace_writer_open(&w, link_dev, NULL, 0, &o, err, sizeof err) == KVS_ERR_ARG && !w &&
               strstr(err, "character device"), "link to a device refused (replace %d): %s", replace, err);
    }
    CHECK(lstat(fifo, &after) == 0 && S_ISFIFO(after.st_mode) && after.st_ino == before.st_ino);
    char lt[64] = {0};
    CHECK(readlink(link_dev, lt, sizeof lt - 1) == 9 && !strcmp(lt, "/dev/null"));
    char part[600];
    snprintf(part, sizeof part, "%s.part", fifo);
    CHECK(access(part, F_OK) != 0);

    /* an existing file: refused unless asked, then replaced at close */
    CHECK(put_text(old, "precious"));
    o.replace = false;
    CHECKF(kvs_trace_writer_open(&w, old, NULL, 0, &o, err, sizeof err) == KVS_ERR_STATE && !w && strstr(err, old),
           "existing file refused: %s", err);
    CHECK(file_is(old, "precious"));
    o.replace = true;
    CHECK(kvs_trace_writer_open(&w, old, NULL, 0, &o, err, sizeof err) == KVS_OK);
    if (w) CHECKF(kvs_trace_writer_close(w, err, sizeof err) == KVS_OK, "%s", err);
    struct kvs_trace *t = NULL;
    CHECK(kvs_trace_open(&t, old, KVS_TRACE_OPEN_VERIFY, err, sizeof err) == KVS_OK);
    kvs_trace_close(t);

    /* NAME.part: a FIFO is never opened; a file (an interrupted recording) only replaced when asked */
    snprintf(part, sizeof part, "%s.part", name);
    unlink(name);
    unlink(part);
    CHECK(mkfifo(part, 0600) == 0);
    o.replace = true;
    CHECKF(kvs_trace_writer_open(&w, name, NULL, 0, &o, err, sizeof err) == KVS_ERR_ARG && !w, "FIFO .part: %s", err);
    CHECK(lstat(part, &after) == 0 && S_ISFIFO(after.st_mode));
    unlink(part);
    CHECK(put_text(part, "interrupted"));
    o.replace = false;
    CHECKF(kvs_trace_writer_open(&w, name, NULL, 0, &o, err, sizeof err) == KVS_ERR_STATE && !w &&
           strstr(err, "trace recover"), "leftover .part kept: %s", err);
    CHECK(file_is(part, "interrupted"));
    unlink(part);

    /* a file that appears while the recording runs is not replaced; a FIFO never is */
    CHECK(kvs_trace_writer_open(&w, name, NULL, 0, &o, err, sizeof err) == KVS_OK);
    CHECK(put_text(name, "appeared"));
    if (w) CHECKF(kvs_trace_writer_close(w, err, sizeof err) == KVS_ERR_STATE && strstr(err, name), "%s", err);
    CHECK(file_is(name, "appeared") && access(part, F_OK) == 0);
    unlink(part);
    unlink(name);
    o.replace = true;
    CHECK(kvs_trace_writer_open(&w, name, NULL, 0, &o, err, sizeof err) == KVS_OK);
    CHECK(mkfifo(name, 0600) == 0);
    if (w) CHECKF(kvs_trace_writer_close(w, err, sizeof err) == KVS_ERR_ARG, "%s", err);
    CHECK(lstat(name, &after) == 0 && S_ISFIFO(after.st_mode));
    unlink(name);
    unlink(part);

    /* recovery: the same rules for OUT, checked before IN is read */
    struct kvs_trace_recover_report rep;
    CHECK(kvs_trace_recover(old, fifo, true, &rep, err, sizeof err) == KVS_ERR_ARG);
    CHECK(kvs_trace_recover(old, link_dev, true, &rep, err, sizeof err) == KVS_ERR_ARG);
    CHECK(put_text(other, "precious"));
    CHECKF(kvs_trace_recover(old, other, false, &rep, err, sizeof err) == KVS_ERR_STATE && strstr(err, other), "%s", err);
    CHECK(file_is(other, "precious"));
    CHECKF(kvs_trace_recover(old, other, true, &rep, err, sizeof err) == KVS_OK, "%s", err);
    CHECK(lstat(fifo, &after) == 0 && S_ISFIFO(after.st_mode) && after.st_ino == before.st_ino);
    unlink(fifo);
    unlink(link_dev);
    unlink(old);
    unlink(other);
}

/* ---- modes for tests/t_traces.sh ---- */

static int writer_child(const char *path)
{
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.keyframe_every = 16;
    o.chunk_bytes = 8192;
    o.flush_ms = 20;
    struct kvs_trace_writer *w;
    char err[512];
    struct kvs_trace_kv meta[] = { { "model", "sigkill-test" } };
    if (kvs_trace_writer_open(&w, path, meta, 1, &o, err, sizeof err) != KVS_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    g_seq = 0;
    kvs_trace_writer_push(w, mk_run(1, 30, 8));
    kvs_trace_writer_push(w, mk_matrix(KVS_MAT_SIM_HIDDEN, 0, 30, 30));
    for (uint64_t s = 0;; s++) {
        kvs_trace_writer_push(w, mk_step(s, 30, 8));
        if (s % 4 == 0) kvs_trace_writer_push(w, mk_kernel(s));
        if (s == 100) { printf("ready\n"); fflush(stdout); }
        usleep(500);
    }
}

static int write_sample(const char *path, uint32_t n)
{
    struct recs v = {0};
    sample(&v, n, 30, 8);
    struct kvs_trace_writer_opts o = small_opts();
    o.chunk_bytes = 64 << 10;
    o.keyframe_every = 64;
    bool ok = write_trace(path, &v, &o);
    recs_free(&v);
    return ok ? 0 : 1;
}

/* A clean, small trace holding exactly one well-formed KERNEL record (what a GPU run adds): the
 * TUI's replay regression for records the history does not keep (tests/t_asan.sh). */
static int write_kernel(const char *path)
{
    struct recs v = {0};
    g_seq = 0;
    g_ctx = 0;
    recs_add(&v, mk_run(1, 4, 1));
    for (uint64_t i = 0; i < 4; i++) {
        recs_add(&v, mk_step(i, 4, 1));
        if (i == 1) recs_add(&v, mk_kernel(1));
    }
    recs_add(&v, mk_end(4));
    struct kvs_trace_writer_opts o = small_opts();
    bool ok = write_trace(path, &v, &o);
    recs_free(&v);
    return ok ? 0 : 1;
}

/* The chunks of B re-written stored (codec 0), without the footer: what the fuzzer mutates best. */
static size_t to_stored(const uint8_t *b, size_t len, uint8_t *out)
{
    uint32_t hlen;
    struct chunk_at ch[512];
    size_t nch = layout(b, len, &hlen, ch, 512), n = hlen;
    memcpy(out, b, hlen);
    for (size_t i = 0; i < nch; i++) {
        const uint8_t *h = b + ch[i].off;
        if (h[4] == 4) break;
        uLongf raw = le32(h + 12);
        uint8_t *p = malloc(raw + 1);
        if (h[5] == 1) uncompress(p, &raw, h + 72, le32(h + 8));
        else memcpy(p, h + 72, raw);
        n += make_chunk(out + n, h[4], le64(h + 16), p, (uint32_t)raw, le64(h + 40), le32(h + 48), le32(h + 52));
        free(p);
    }
    return n;
}

static int write_seeds(const char *dir)
{
    struct recs v = {0};
    sample(&v, 10, 4, 2);
    struct kvs_trace_writer_opts o = small_opts();
    o.keyframe_every = 4;
    o.chunk_bytes = 1000;
    char path[600];
    snprintf(path, sizeof path, "%s/sample.kvt", dir);
    bool ok = write_trace(path, &v, &o);
    recs_free(&v);
    size_t len;
    uint8_t *b = ok ? slurp(path, &len) : NULL;
    unlink(path);
    if (!b) return 1;
    uint8_t *buf = malloc(4 * len + 64), *st = malloc(4 * len);
    size_t sn = to_stored(b, len, st);
    /* mode byte, then the file: plain, verified, fast, CRC-repairing over stored chunks, cut */
    struct { const char *name; uint8_t mode; const uint8_t *p; size_t n; } seeds[] = {
        { "plain", 0x00, b, len }, { "verify", 0x04, b, len }, { "fast", 0x08, b, len },
        { "stored-repair", 0x05, st, sn }, { "stored-window", 0x11, st, sn }, { "cut", 0x00, b, len * 2 / 3 },
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(seeds); i++) {
        buf[0] = seeds[i].mode;
        memcpy(buf + 1, seeds[i].p, seeds[i].n);
        snprintf(path, sizeof path, "%s/%s", dir, seeds[i].name);
        if (!spit(path, buf, seeds[i].n + 1)) ok = false;
    }
    free(buf);
    free(st);
    free(b);
    return ok ? 0 : 1;
}

/* ---- benchmark (tests/bench_traces.sh): realistic decode steps, 30 layers, 8 groups ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A decode step as the engine would publish it: similarities drifting around per-layer means
 * with noise, budgets fixed, kept tokens and bytes growing with the context, op timings jittered. */
static struct kvs_record *real_step(uint64_t step, uint32_t nl, uint32_t ng)
{
    static const char *words[] = { " the", " of", " software", " License", " to", " and", " you", ",", ".",
                                   " GNU", " program", " any", " work", " that", " is", "\n" };
    static float base[KVS_MAX_LAYERS];
    if (step == 0)
        for (uint32_t l = 0; l < nl; l++) base[l] = 0.35f + 0.5f * (float)l / (float)nl;
    struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
    struct kvs_rec_step *s = &r->u.step;
    r->seq = g_seq++;
    s->step = step;
    s->kind = step == 0 ? KVS_STEP_PREFILL : KVS_STEP_DECODE;
    s->n_new = step == 0 ? 512 : 1;
    g_ctx += s->n_new;
    s->n_ctx = g_ctx;
    s->token = (int32_t)(rnd() % 49152);
    snprintf(s->piece, sizeof s->piece, "%s", words[rnd() % 16]);
    s->t_start_ns = 2000000000ull + step * 12000000ull + rnd() % 400000;
    s->t_end_ns = s->t_start_ns + 11000000ull + rnd() % 900000;
    s->valid = KVS_VALID_LAYER_SIM | KVS_VALID_GROUP_SIM | KVS_VALID_BUDGET | KVS_VALID_BYTES | KVS_VALID_LOGPROB |
               KVS_VALID_OPS;
    s->n_layer = nl;
    s->n_groups = ng;
    uint32_t merged = s->n_ctx > 132 ? (s->n_ctx - 132) / 2 : 0;
    for (uint32_t l = 0; l < nl; l++) {
        s->layer_sim[l] = base[l] + 0.05f * rndf();
        s->layer_kept[l] = s->n_ctx;
        s->layer_bytes_held[l] = (uint64_t)(s->n_ctx - merged) * 2 * 192 * 2 + (uint64_t)merged * 192 * 2 / 4;
    }
    for (uint32_t g = 0; g < ng; g++) {
        s->group_sim[g] = 0.6f + 0.3f * (float)g / (float)ng + 0.03f * rndf();
        s->group_rank[g] = 403;
        s->group_merged[g] = (float)merged / (float)s->n_ctx;
    }
    s->bytes_full = (uint64_t)s->n_ctx * nl * 2 * 192 * 2;
    s->bytes_held = 0;
    for (uint32_t l = 0; l < nl; l++) s->bytes_held += s->layer_bytes_held[l];
    s->bytes_alloc = (s->bytes_held + 65535) & ~65535ull;
    s->cr_target = 0.5f;
    s->cr_achieved = 1.0f - (float)s->bytes_held / (float)s->bytes_full;
    s->logprob = -2.0f * (float)(rnd() % 1000) / 1000.0f;
    static const uint64_t op_ns[KVS_OP_COUNT] = { 7000000, 2500000, 200000, 150000, 100000, 300000, 0, 0, 900000, 50000, 0 };
    for (int i = 0; i < KVS_OP_COUNT; i++) {
        if (!op_ns[i]) continue;
        s->ops[i].ns = op_ns[i] + rnd() % (op_ns[i] / 10);
        s->ops[i].bytes = (uint64_t)s->n_ctx * 1024 * (uint64_t)(i + 1);
        s->ops[i].flops = (uint64_t)s->n_ctx * 4096 * (uint64_t)(i + 1);
        s->ops[i].calls = 30;
    }
    return r;
}

static int bench(uint64_t n)
{
    const uint32_t nl = 30, ng = 8;
    g_seq = 0;
    g_ctx = 0;
    struct kvs_record **recs = malloc((n + 2) * sizeof *recs);
    recs[0] = mk_run(1, nl, ng);
    recs[1] = mk_matrix(KVS_MAT_SIM_HIDDEN, 0, nl, nl);
    for (uint64_t i = 0; i < n; i++) recs[i + 2] = real_step(i, nl, ng);
    const char *path = tmp_path("bench.kvt");
    struct kvs_trace_writer_opts o;
    kvs_trace_writer_opts_default(&o);
    o.replace = true; /* scratch names are reused when the tests run again in one directory */
    o.queue_cap = (uint32_t)n + 16; /* measure the writer, not the drops */
    struct kvs_trace_writer *w;
    char err[512];
    if (kvs_trace_writer_open(&w, path, NULL, 0, &o, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
    double t0 = now_s();
    for (uint64_t i = 0; i < n + 2; i++) kvs_trace_writer_push(w, kvs_record_ref(recs[i]));
    double t_push = now_s() - t0;
    if (kvs_trace_writer_close(w, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
    double t_write = now_s() - t0;
    struct stat sb;
    stat(path, &sb);

    /* baseline in the same run: the same records as JSON lines (what --batch prints) */
    FILE *devnull = fopen("/dev/null", "w");
    double t1 = now_s();
    for (uint64_t i = 0; i < n + 2; i++) kvs_record_to_json(recs[i], devnull);
    fclose(devnull);
    double t_json = now_s() - t1;

    printf("records           %llu decode steps, %u layers, %u groups (+ RUN and a %ux%u matrix)\n",
           (unsigned long long)n, nl, ng, nl, nl);
    printf("in-memory step    %zu bytes (struct kvs_record)\n", offsetof(struct kvs_record, u) + sizeof(struct kvs_rec_step));

    struct kvs_trace *t;
    t1 = now_s();
    if (kvs_trace_open(&t, path, 0, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
    double t_open = now_s() - t1;
    const struct kvs_trace_info *in = kvs_trace_get_info(t);
    printf("size              %.1f bytes per decoded token on disk (file %lld bytes); raw serialized %.1f, "
           "zlib ratio %.2fx\n", (double)sb.st_size / (double)n, (long long)sb.st_size,
           (double)in->raw_bytes / (double)n, (double)in->raw_bytes / (double)in->comp_bytes);
    printf("writer            %.0f steps/s end to end (%.2f us per step incl. compression and fsync); "
           "push %.3f us per record\n", (double)n / t_write, t_write * 1e6 / (double)n, t_push * 1e6 / (double)(n + 2));
    printf("baseline          JSON lines of the same records: %.2f us per step (writer/JSON %.2fx)\n",
           t_json * 1e6 / (double)n, t_write / t_json);
    printf("overhead budget   at 12 ms per decoded token, the writer's work is %.3f%% of decode time\n",
           t_write / (double)n / 0.012 * 100.0);
    t1 = now_s();
    struct kvs_trace *tf;
    if (kvs_trace_open(&tf, path, KVS_TRACE_OPEN_FAST, err, sizeof err) == KVS_OK) kvs_trace_close(tf);
    double t_open_fast = now_s() - t1;
    printf("open              %.1f ms checking every chunk CRC, %.2f ms trusting the footer index\n", t_open * 1e3,
           t_open_fast * 1e3);

    /* seek to random steps and replay to them */
    enum { SEEKS = 200 };
    double worst = 0, sum = 0, lin_sum = 0;
    double ts[SEEKS];
    uint64_t targets[SEEKS];
    for (int k = 0; k < SEEKS; k++) targets[k] = rnd() % n;
    bool ok = true;
    for (int k = 0; k < SEEKS; k++) {
        t1 = now_s();
        kvs_trace_seek_step(t, targets[k], NULL);
        struct kvs_record *r;
        struct kvs_trace_where wh;
        bool hit = false;
        while (kvs_trace_next(t, &r, &wh) == KVS_OK && r) {
            hit = r->type == KVS_REC_STEP && !wh.keyframe && wh.step == targets[k];
            if (hit) ok &= rec_equal(r, recs[targets[k] + 2]);
            kvs_record_unref(r);
            if (hit) break;
        }
        ok &= hit;
        ts[k] = now_s() - t1;
        sum += ts[k];
        if (ts[k] > worst) worst = ts[k];
    }
    /* baseline: reading from the start to the target, for 10 of the targets */
    for (int k = 0; k < 10; k++) {
        t1 = now_s();
        kvs_trace_rewind(t);
        struct kvs_record *r;
        struct kvs_trace_where wh;
        while (kvs_trace_next(t, &r, &wh) == KVS_OK && r) {
            bool hit = r->type == KVS_REC_STEP && wh.step == targets[k];
            kvs_record_unref(r);
            if (hit) break;
        }
        lin_sum += now_s() - t1;
    }
    for (int i = 1; i < SEEKS; i++)
        for (int j = i; j > 0 && ts[j - 1] > ts[j]; j--) { double x = ts[j]; ts[j] = ts[j - 1]; ts[j - 1] = x; }
    printf("seek              %d random steps of %llu: mean %.2f ms, median %.2f ms, max %.2f ms (target < 50 ms)%s\n",
           SEEKS, (unsigned long long)n, sum / SEEKS * 1e3, ts[SEEKS / 2] * 1e3, worst * 1e3, ok ? "" : " WRONG RECORDS");
    printf("baseline          reading from the start to the step: mean %.1f ms (seek is %.0fx faster)\n",
           lin_sum / 10 * 1e3, (lin_sum / 10) / (sum / SEEKS));
    kvs_trace_close(t);
    for (uint64_t i = 0; i < n + 2; i++) kvs_record_unref(recs[i]);
    free(recs);
    unlink(path);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    char err[512];
    if (argc >= 3 && !strcmp(argv[1], "--writer-child")) return writer_child(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "--write-seeds")) return write_seeds(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "--bench")) return bench(argc >= 3 ? strtoull(argv[2], NULL, 10) : 100000);
    if (argc >= 3 && !strcmp(argv[1], "--write-kernel")) return write_kernel(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "--write-sample")) return write_sample(argv[2], (uint32_t)atoi(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "--recover")) {
        struct kvs_trace_recover_report rep;
        if (kvs_trace_recover(argv[2], argv[3], false, &rep, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
        printf("%s\n", rep.note);
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "--info")) {
        struct kvs_trace *t;
        if (kvs_trace_open(&t, argv[2], KVS_TRACE_OPEN_VERIFY, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
        const struct kvs_trace_info *in = kvs_trace_get_info(t);
        printf("steps %llu\nstatus %s\n", (unsigned long long)in->n_steps, in->footer ? "clean" : kvs_trace_note(t));
        kvs_trace_close(t);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "--export")) {
        struct kvs_trace *t;
        if (kvs_trace_open(&t, argv[2], 0, err, sizeof err) != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
        FILE *f = fopen(argv[4], "w");
        enum kvs_status st = f ? kvs_trace_export(t, kvs_trace_format_parse(argv[3]), 0, UINT64_MAX, f, err, sizeof err)
                               : KVS_ERR_IO;
        if (f) fclose(f);
        kvs_trace_close(t);
        if (st != KVS_OK) { fprintf(stderr, "%s\n", err); return 1; }
        return 0;
    }
    RUN(test_crc32c);
    RUN(test_round_trip);
    RUN(test_truncation);
    RUN(test_bit_flips);
    RUN(test_unknown_types);
    RUN(test_versions);
    RUN(test_step_without_cache_count);
    RUN(test_overflow);
    RUN(test_seek);
    RUN(test_recover);
    RUN(test_export);
    RUN(test_time_flush);
    RUN(test_step_flush);
    RUN(test_targets);
    return kvs_test_summary();
}
