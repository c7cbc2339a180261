/* Record formatting and trace exports: one JSON object per record (the `--batch` line format,
 * shared by live runs and replays), JSON lines, CSV (one row per step) and Perfetto/Chrome
 * trace-event JSON (per-layer counters, steps, ops and GPU activity as slices, tokens as
 * instants). Depends on libc and the trace reader; writes only to the FILE it is given. */
#include "trace_int.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

/* ---- JSON scalars ---- */

/* Shortest %g form that reads back as the same float; null for NaN and infinities. */
static void fmt_float(char *buf, size_t cap, float v)
{
    if (!isfinite(v)) { snprintf(buf, cap, "null"); return; }
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, cap, "%.*g", prec, (double)v);
        if (prec == 9 || strtof(buf, NULL) == v) return;
    }
}

static void jf(FILE *f, float v)
{
    char b[32];
    fmt_float(b, sizeof b, v);
    fputs(b, f);
}

/* Length of the valid UTF-8 sequence at P (N bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

void kvs_json_string(FILE *f, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') { fputc('\\', f); fputc((int)c, f); i++; continue; }
        if (c < 0x20 || c == 0x7f) {
            switch (c) {
            case '\n': fputs("\\n", f); break;
            case '\t': fputs("\\t", f); break;
            case '\r': fputs("\\r", f); break;
            default: fprintf(f, "\\u%04x", c); break;
            }
            i++;
            continue;
        }
        size_t l = utf8_len(p + i, n - i);
        if (l == 0) { fputs("\\ufffd", f); i++; continue; }
        /* C1 controls (U+0080..U+009F) are valid JSON but act on terminals: escape them too */
        if (l == 2 && c == 0xc2 && p[i + 1] < 0xa0) { fprintf(f, "\\u%04x", p[i + 1]); i += 2; continue; }
        fwrite(p + i, 1, l, f);
        i += l;
    }
    fputc('"', f);
}

void kvs_json_number(FILE *f, const char *fmt, double v)
{
    if (!isfinite(v)) { fputs("null", f); return; }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    fprintf(f, fmt, v);
#pragma GCC diagnostic pop
}

/* A JSON string of the first CAP bytes of S (up to its NUL). */
static void js(FILE *f, const char *s, size_t cap) { kvs_json_string(f, s, strnlen(s, cap)); }
#define JS(f, field) js(f, field, sizeof(field))

static void ju64(FILE *f, uint64_t v) { fprintf(f, "%llu", (unsigned long long)v); }

static void jarr_f(FILE *f, const float *v, uint32_t n)
{
    fputc('[', f);
    for (uint32_t i = 0; i < n; i++) { if (i) fputc(',', f); jf(f, v[i]); }
    fputc(']', f);
}
static void jarr_u32(FILE *f, const uint32_t *v, uint32_t n)
{
    fputc('[', f);
    for (uint32_t i = 0; i < n; i++) fprintf(f, "%s%u", i ? "," : "", v[i]);
    fputc(']', f);
}
static void jarr_u64(FILE *f, const uint64_t *v, uint32_t n)
{
    fputc('[', f);
    for (uint32_t i = 0; i < n; i++) fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
    fputc(']', f);
}

/* ---- one record ---- */

static const char *matrix_kind_name(uint32_t k)
{
    switch (k) {
    case KVS_MAT_SIM_HIDDEN: return "sim_hidden";
    case KVS_MAT_SIM_KEYS: return "sim_keys";
    case KVS_MAT_SIM_LATENT: return "sim_latent";
    case KVS_MAT_SPECTRUM: return "spectrum";
    }
    return NULL;
}

static const char *kernel_kind_name(uint32_t k)
{
    static const char *names[] = { NULL, "kernel", "memcpy", "memset", "runtime" };
    return k < KVS_ARRAY_LEN(names) ? names[k] : NULL;
}

static void named_or_num(FILE *f, const char *name, uint32_t v)
{
    if (name) fprintf(f, "\"%s\"", name);
    else fprintf(f, "%u", v);
}

static void json_run(FILE *f, const struct kvs_rec_run *r)
{
    fprintf(f, ",\"run_id\":%u,\"model\":", r->run_id);
    JS(f, r->model);
    fputs(",\"arch\":", f);
    JS(f, r->arch);
    fputs(",\"backend\":", f);
    JS(f, r->backend);
    fputs(",\"device\":", f);
    JS(f, r->device);
    fputs(",\"method\":", f);
    JS(f, r->method);
    fprintf(f, ",\"n_layer\":%u,\"n_embd\":%u,\"n_head\":%u,\"n_head_kv\":%u,\"head_dim\":%u,\"n_ff\":%u,"
            "\"n_vocab\":%u,\"n_ctx_max\":%u,\"model_bytes\":", r->n_layer, r->n_embd, r->n_head, r->n_head_kv,
            r->head_dim, r->n_ff, r->n_vocab, r->n_ctx_max);
    ju64(f, r->model_bytes);
    fputs(",\"target_cr\":", f);
    if (r->target_cr < 0) fputs("null", f); else jf(f, r->target_cr);
    fputs(",\"rank_ratio\":", f);
    jf(f, r->rank_ratio);
    fprintf(f, ",\"group_size\":%u,\"n_groups\":%u,\"sinks\":%u,\"recent\":%u,\"quant_bits\":%u,"
            "\"evict_capacity\":%u,\"group_rank\":", r->group_size, r->n_groups, r->sinks, r->recent, r->quant_bits,
            r->evict_capacity);
    jarr_u32(f, r->group_rank, KVS_MIN(r->n_groups, (uint32_t)KVS_MAX_GROUPS));
    fprintf(f, ",\"n_threads\":%u,\"unix_ns\":", r->n_threads);
    ju64(f, r->unix_ns);
    fprintf(f, ",\"precise\":%s", r->precise ? "true" : "false");
    fputs(",\"plan_merge_share\":", f);
    if (isfinite(r->plan_merge_share)) jf(f, r->plan_merge_share); else fputs("null", f);
    fputs(",\"plan_merge_floor\":", f);
    if (isfinite(r->plan_merge_floor)) jf(f, r->plan_merge_floor); else fputs("null", f);
    fputs(",\"plan_note\":", f);
    JS(f, r->plan_note);
    /* the key kernel CommonKV/lowrank ran with; null for other methods and older traces */
    const char *keys = r->ckv_keys != KVS_CKV_KEYS_AUTO ? kvs_ckv_keys_name(r->ckv_keys) : NULL;
    fputs(",\"ckv_keys\":", f);
    if (keys) kvs_json_string(f, keys, strlen(keys)); else fputs("null", f);
    fputs(",\"weights\":", f);
    JS(f, r->weights);
    fputs(",\"weights_saturated\":", f);
    ju64(f, r->weights_saturated);
    fputs(",\"plan_profile\":", f);
    JS(f, r->plan_profile ? "paper" : "tuned");
    fputs(",\"plan_why\":", f);
    JS(f, r->plan_why);
}

static void json_step(FILE *f, const struct kvs_rec_step *s)
{
    uint32_t nl = KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS), ng = KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS);
    fputs(",\"step\":", f);
    ju64(f, s->step);
    fputs(",\"kind\":", f);
    named_or_num(f, s->kind == KVS_STEP_PREFILL ? "prefill" : s->kind == KVS_STEP_DECODE ? "decode" : NULL, s->kind);
    fprintf(f, ",\"n_new\":%u,\"n_ctx\":%u,\"token\":%d,\"piece\":", s->n_new, s->n_ctx, s->token);
    JS(f, s->piece);
    fputs(",\"t_start_ns\":", f);
    ju64(f, s->t_start_ns);
    fputs(",\"t_end_ns\":", f);
    ju64(f, s->t_end_ns);
    fprintf(f, ",\"valid\":%u,\"n_layer\":%u,\"n_groups\":%u", s->valid, s->n_layer, s->n_groups);
    bool bytes = s->valid & KVS_VALID_BYTES, budget = s->valid & KVS_VALID_BUDGET;
    fputs(",\"layer_sim\":", f); /* between layers l and l+1: n_layer - 1 values */
    if (s->valid & KVS_VALID_LAYER_SIM) jarr_f(f, s->layer_sim, nl ? nl - 1 : 0); else fputs("null", f);
    fputs(",\"layer_kept\":", f);
    if (bytes) jarr_u32(f, s->layer_kept, nl); else fputs("null", f);
    fputs(",\"layer_bytes_held\":", f);
    if (bytes) jarr_u64(f, s->layer_bytes_held, nl); else fputs("null", f);
    fputs(",\"group_sim\":", f);
    if (s->valid & KVS_VALID_GROUP_SIM) jarr_f(f, s->group_sim, ng); else fputs("null", f);
    fputs(",\"group_rank\":", f);
    if (budget) jarr_u32(f, s->group_rank, ng); else fputs("null", f);
    fputs(",\"group_merged\":", f);
    if (budget) jarr_f(f, s->group_merged, ng); else fputs("null", f);
    if (bytes) {
        fprintf(f, ",\"bytes_full\":%llu,\"bytes_held\":%llu,\"bytes_alloc\":%llu,\"bytes_factors\":%llu,\"cr_achieved\":",
                (unsigned long long)s->bytes_full, (unsigned long long)s->bytes_held,
                (unsigned long long)s->bytes_alloc, (unsigned long long)s->bytes_factors);
        jf(f, s->cr_achieved);
    } else {
        fputs(",\"bytes_full\":null,\"bytes_held\":null,\"bytes_alloc\":null,\"bytes_factors\":null,\"cr_achieved\":null", f);
    }
    fputs(",\"cr_target\":", f);
    if (s->cr_target < 0) fputs("null", f); else jf(f, s->cr_target);
    fputs(",\"logprob\":", f);
    if (s->valid & KVS_VALID_LOGPROB) jf(f, s->logprob); else fputs("null", f);
    if (s->valid & KVS_VALID_QUALITY) {
        fputs(",\"ppl\":", f); jf(f, s->ppl);
        fputs(",\"kl\":", f); jf(f, s->kl);
        fputs(",\"top1\":", f); jf(f, s->top1);
    } else {
        fputs(",\"ppl\":null,\"kl\":null,\"top1\":null", f);
    }
    if (s->valid & KVS_VALID_SPLIT)
        fprintf(f, ",\"saved\":{\"rank\":%lld,\"merge\":%lld,\"quant\":%lld,\"evict\":%lld}",
                (long long)s->saved_rank, (long long)s->saved_merge, (long long)s->saved_quant,
                (long long)s->saved_evict);
    else
        fputs(",\"saved\":null", f);
    /* the card: null on the CPU and in traces that did not measure it */
    if (s->dev_mem_total)
        fprintf(f, ",\"device\":{\"mem_used\":%llu,\"mem_total\":%llu,\"pool_bytes\":%llu}",
                (unsigned long long)s->dev_mem_used, (unsigned long long)s->dev_mem_total,
                (unsigned long long)s->dev_pool_bytes);
    else
        fputs(",\"device\":null", f);
    fprintf(f, ",\"acts_saturated\":%llu,\"cache_saturated\":%llu", (unsigned long long)s->acts_saturated,
            (unsigned long long)s->cache_saturated);
    fputs(",\"ops\":", f);
    if (s->valid & KVS_VALID_OPS) {
        fputc('{', f);
        for (int i = 0; i < KVS_OP_COUNT; i++)
            fprintf(f, "%s\"%s\":{\"ns\":%llu,\"bytes\":%llu,\"flops\":%llu,\"calls\":%u}", i ? "," : "",
                    kvs_op_name((enum kvs_op)i), (unsigned long long)s->ops[i].ns,
                    (unsigned long long)s->ops[i].bytes, (unsigned long long)s->ops[i].flops, s->ops[i].calls);
        fputc('}', f);
    } else {
        fputs("null", f);
    }
}

void kvs_record_to_json(const struct kvs_record *r, FILE *f)
{
    static const char *types[] = { NULL, "run", "step", "matrix", "quality", "kernel", "end", "log" };
    fputs("{\"type\":", f);
    named_or_num(f, r->type < KVS_ARRAY_LEN(types) ? types[r->type] : NULL, r->type);
    fputs(",\"seq\":", f);
    ju64(f, r->seq);
    switch (r->type) {
    case KVS_REC_RUN: json_run(f, &r->u.run); break;
    case KVS_REC_STEP: json_step(f, &r->u.step); break;
    case KVS_REC_MATRIX: {
        const struct kvs_rec_matrix *m = &r->u.matrix;
        size_t base = offsetof(struct kvs_record, u) + sizeof *m;
        uint64_t have = r->bytes > base ? (r->bytes - base) / sizeof(float) : 0;
        fputs(",\"kind\":", f);
        named_or_num(f, matrix_kind_name(m->kind), m->kind);
        fprintf(f, ",\"group\":%u,\"rows\":%u,\"cols\":%u,\"v\":", m->group, m->rows, m->cols);
        jarr_f(f, m->v, (uint32_t)KVS_MIN((uint64_t)m->rows * m->cols, have));
        break;
    }
    case KVS_REC_QUALITY: {
        const struct kvs_rec_quality *q = &r->u.quality;
        fputs(",\"method\":", f);
        JS(f, q->method);
        fputs(",\"target_cr\":", f);
        if (q->target_cr < 0) fputs("null", f); else jf(f, q->target_cr);
        fputs(",\"achieved_cr\":", f); jf(f, q->achieved_cr);
        fputs(",\"ppl\":", f); jf(f, q->ppl);
        fputs(",\"ppl_full\":", f); jf(f, q->ppl_full);
        fputs(",\"kl\":", f); jf(f, q->kl);
        fputs(",\"top1\":", f); jf(f, q->top1);
        fputs(",\"passkey_acc\":", f); jf(f, q->passkey_acc);
        fputs(",\"decode_tps\":", f); jf(f, q->decode_tps);
        fprintf(f, ",\"n_tokens\":%u", q->n_tokens);
        break;
    }
    case KVS_REC_KERNEL: {
        const struct kvs_rec_kernel *k = &r->u.kernel;
        fputs(",\"name\":", f);
        JS(f, k->name);
        fputs(",\"kind\":", f);
        named_or_num(f, kernel_kind_name(k->kind), k->kind);
        fprintf(f, ",\"stream\":%u,\"start_ns\":%llu,\"end_ns\":%llu,\"bytes\":%llu", k->stream,
                (unsigned long long)k->start_ns, (unsigned long long)k->end_ns, (unsigned long long)k->bytes);
        break;
    }
    case KVS_REC_END: {
        const struct kvs_rec_end *e = &r->u.end;
        fprintf(f, ",\"n_steps\":%llu,\"n_prompt\":%u,\"n_gen\":%u,\"prefill_tps\":", (unsigned long long)e->n_steps,
                e->n_prompt, e->n_gen);
        jf(f, e->prefill_tps);
        fputs(",\"decode_tps\":", f);
        jf(f, e->decode_tps);
        fprintf(f, ",\"dropped_records\":%llu", (unsigned long long)e->dropped_records);
        break;
    }
    case KVS_REC_LOG: {
        const struct kvs_rec_log *l = &r->u.log;
        static const char *lv[] = { "info", "warn", "error" };
        fputs(",\"level\":", f);
        named_or_num(f, l->level < 3 ? lv[l->level] : NULL, l->level);
        fputs(",\"text\":", f);
        JS(f, l->text);
        break;
    }
    default: break;
    }
    fputs("}\n", f);
}

enum kvs_trace_format kvs_trace_format_parse(const char *s)
{
    if (!s) return 0;
    if (!strcmp(s, "perfetto") || !strcmp(s, "chrome") || !strcmp(s, "json")) return KVS_TRACE_FMT_PERFETTO;
    if (!strcmp(s, "csv")) return KVS_TRACE_FMT_CSV;
    if (!strcmp(s, "jsonl") || !strcmp(s, "ndjson")) return KVS_TRACE_FMT_JSONL;
    return 0;
}

/* ---- CSV: one row per step ---- */

struct csv {
    bool header;
    uint32_t nl, ng;
};

static void csv_float(FILE *f, bool valid, float v)
{
    fputc(',', f);
    if (valid && isfinite(v)) jf(f, v);
}

static void csv_header(FILE *f, struct csv *c, const struct kvs_rec_step *s)
{
    c->nl = s ? KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS) : 0;
    c->ng = s ? KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS) : 0;
    fputs("trace_step,run,step,kind,n_new,n_ctx,token,piece,t_start_ns,t_end_ns,bytes_full,bytes_held,"
          "bytes_alloc,cr_target,cr_achieved,logprob,ppl,kl,top1", f);
    for (int i = 0; i < KVS_OP_COUNT; i++) fprintf(f, ",%s_ns", kvs_op_name((enum kvs_op)i));
    for (uint32_t i = 0; i + 1 < c->nl; i++) fprintf(f, ",sim_L%u_L%u", i, i + 1);
    for (uint32_t i = 0; i < c->nl; i++) fprintf(f, ",kept_L%u", i);
    for (uint32_t i = 0; i < c->nl; i++) fprintf(f, ",held_L%u", i);
    for (uint32_t i = 0; i < c->ng; i++) fprintf(f, ",sim_G%u", i);
    for (uint32_t i = 0; i < c->ng; i++) fprintf(f, ",rank_G%u", i);
    for (uint32_t i = 0; i < c->ng; i++) fprintf(f, ",merged_G%u", i);
    fputc('\n', f);
    c->header = true;
}

static void csv_row(FILE *f, struct csv *c, uint64_t trace_step, uint32_t run, const struct kvs_rec_step *s)
{
    if (!c->header) csv_header(f, c, s);
    fprintf(f, "%llu,%u,%llu,%s,%u,%u,%d,\"", (unsigned long long)trace_step, run, (unsigned long long)s->step,
            s->kind == KVS_STEP_PREFILL ? "prefill" : s->kind == KVS_STEP_DECODE ? "decode" : "?", s->n_new,
            s->n_ctx, s->token);
    /* token text comes from the model's vocabulary: control bytes and invalid UTF-8 become
     * visible escapes so a row stays one line of text */
    char piece[4 * sizeof s->piece + 1];
    kvs_escape(piece, sizeof piece, s->piece, strnlen(s->piece, sizeof s->piece));
    for (const char *pc = piece; *pc; pc++) {
        if (*pc == '"') fputc('"', f);
        fputc(*pc, f);
    }
    fprintf(f, "\",%llu,%llu", (unsigned long long)s->t_start_ns, (unsigned long long)s->t_end_ns);
    bool bytes = s->valid & KVS_VALID_BYTES, budget = s->valid & KVS_VALID_BUDGET;
    if (bytes) fprintf(f, ",%llu,%llu,%llu", (unsigned long long)s->bytes_full, (unsigned long long)s->bytes_held,
                       (unsigned long long)s->bytes_alloc);
    else fputs(",,,", f);
    csv_float(f, s->cr_target >= 0, s->cr_target);
    csv_float(f, bytes, s->cr_achieved);
    csv_float(f, s->valid & KVS_VALID_LOGPROB, s->logprob);
    csv_float(f, s->valid & KVS_VALID_QUALITY, s->ppl);
    csv_float(f, s->valid & KVS_VALID_QUALITY, s->kl);
    csv_float(f, s->valid & KVS_VALID_QUALITY, s->top1);
    for (int i = 0; i < KVS_OP_COUNT; i++) {
        if (s->valid & KVS_VALID_OPS) fprintf(f, ",%llu", (unsigned long long)s->ops[i].ns);
        else fputc(',', f);
    }
    uint32_t nl = KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS), ng = KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS);
    for (uint32_t i = 0; i + 1 < c->nl; i++) csv_float(f, i + 1 < nl && (s->valid & KVS_VALID_LAYER_SIM), s->layer_sim[i]);
    for (uint32_t i = 0; i < c->nl; i++) {
        if (i < nl && bytes) fprintf(f, ",%u", s->layer_kept[i]); else fputc(',', f);
    }
    for (uint32_t i = 0; i < c->nl; i++) {
        if (i < nl && bytes) fprintf(f, ",%llu", (unsigned long long)s->layer_bytes_held[i]); else fputc(',', f);
    }
    for (uint32_t i = 0; i < c->ng; i++) csv_float(f, i < ng && (s->valid & KVS_VALID_GROUP_SIM), s->group_sim[i]);
    for (uint32_t i = 0; i < c->ng; i++) {
        if (i < ng && budget) fprintf(f, ",%u", s->group_rank[i]); else fputc(',', f);
    }
    for (uint32_t i = 0; i < c->ng; i++) csv_float(f, i < ng && budget, s->group_merged[i]);
    fputc('\n', f);
}

/* ---- Perfetto / Chrome trace-event JSON ---- */

enum { TID_STEPS = 1, TID_OPS = 2, TID_TOKENS = 3, TID_EVENTS = 4, TID_GPU = 100 };

struct pf {
    FILE *f;
    bool any;                /* an event was written (comma before the next) */
    uint32_t pid;            /* 1 + runs seen (records before the first RUN go to pid 1) */
    bool pid_named;
    uint64_t last_us_ns;     /* latest timestamp seen, for events without one */
    uint32_t gpu_named[64];  /* streams named for this pid (bitmap over 0..2047) */
};

static void pf_begin(struct pf *p)
{
    fputs(p->any ? ",\n" : "\n", p->f);
    p->any = true;
}

static void pf_ts(FILE *f, const char *key, uint64_t ns)
{
    fprintf(f, ",\"%s\":%llu.%03u", key, (unsigned long long)(ns / 1000), (unsigned)(ns % 1000));
}

static void pf_thread_name(struct pf *p, uint32_t tid, const char *name)
{
    pf_begin(p);
    fprintf(p->f, "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%u,\"tid\":%u,\"args\":{\"name\":", p->pid, tid);
    js(p->f, name, strlen(name) + 1);
    fputs("}}", p->f);
}

static void pf_name_process(struct pf *p, const struct kvs_rec_run *r)
{
    char name[300];
    if (r) snprintf(name, sizeof name, "run %u: %.64s, %.64s, %.32s", r->run_id, r->model, r->method, r->backend);
    else snprintf(name, sizeof name, "kvscope");
    pf_begin(p);
    fprintf(p->f, "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":%u,\"tid\":0,\"args\":{\"name\":", p->pid);
    js(p->f, name, sizeof name);
    fputs("}}", p->f);
    pf_thread_name(p, TID_STEPS, "steps");
    pf_thread_name(p, TID_OPS, "ops (per-step totals, laid end to end)");
    pf_thread_name(p, TID_TOKENS, "tokens");
    pf_thread_name(p, TID_EVENTS, "events");
    memset(p->gpu_named, 0, sizeof p->gpu_named);
    p->pid_named = true;
}

static void pf_counter(struct pf *p, const char *name, uint64_t ts, double v, bool integer)
{
    if (!isfinite(v)) return; /* a counter sample needs a number; a gap says "unknown" */
    pf_begin(p);
    fprintf(p->f, "{\"ph\":\"C\",\"name\":\"%s\",\"pid\":%u,\"tid\":0", name, p->pid);
    pf_ts(p->f, "ts", ts);
    if (integer) fprintf(p->f, ",\"args\":{\"value\":%.0f}}", v);
    else {
        char b[32];
        fmt_float(b, sizeof b, (float)v);
        fprintf(p->f, ",\"args\":{\"value\":%s}}", b);
    }
}

static void pf_step(struct pf *p, uint64_t trace_step, const struct kvs_rec_step *s)
{
    FILE *f = p->f;
    uint64_t t0 = s->t_start_ns, t1 = s->t_end_ns >= s->t_start_ns ? s->t_end_ns : s->t_start_ns;
    const char *kind = s->kind == KVS_STEP_PREFILL ? "prefill" : "decode";
    pf_begin(p);
    fprintf(f, "{\"ph\":\"X\",\"name\":\"%s\",\"cat\":\"step\",\"pid\":%u,\"tid\":%u", kind, p->pid, TID_STEPS);
    pf_ts(f, "ts", t0);
    pf_ts(f, "dur", t1 - t0);
    fprintf(f, ",\"args\":{\"trace_step\":%llu,\"step\":%llu,\"n_new\":%u,\"n_ctx\":%u,\"token\":%d}}",
            (unsigned long long)trace_step, (unsigned long long)s->step, s->n_new, s->n_ctx, s->token);
    if (s->valid & KVS_VALID_OPS) {
        uint64_t at = t0;
        for (int i = 0; i < KVS_OP_COUNT; i++) {
            const struct kvs_op_counter *o = &s->ops[i];
            if (!o->ns && !o->calls) continue;
            pf_begin(p);
            fprintf(f, "{\"ph\":\"X\",\"name\":\"%s\",\"cat\":\"op\",\"pid\":%u,\"tid\":%u",
                    kvs_op_name((enum kvs_op)i), p->pid, TID_OPS);
            pf_ts(f, "ts", at);
            pf_ts(f, "dur", o->ns);
            fprintf(f, ",\"args\":{\"calls\":%u,\"bytes\":%llu,\"flops\":%llu}}", o->calls,
                    (unsigned long long)o->bytes, (unsigned long long)o->flops);
            at += o->ns;
        }
    }
    if (s->kind == KVS_STEP_DECODE) {
        pf_begin(p);
        fputs("{\"ph\":\"i\",\"s\":\"t\",\"name\":", f);
        if (s->piece[0]) JS(f, s->piece);
        else fprintf(f, "\"token %d\"", s->token);
        fprintf(f, ",\"cat\":\"token\",\"pid\":%u,\"tid\":%u", p->pid, TID_TOKENS);
        pf_ts(f, "ts", t1);
        fprintf(f, ",\"args\":{\"token\":%d,\"step\":%llu,\"n_ctx\":%u", s->token, (unsigned long long)s->step,
                s->n_ctx);
        if (s->valid & KVS_VALID_LOGPROB) { fputs(",\"logprob\":", f); jf(f, s->logprob); }
        fputs("}}", f);
    }
    char name[64];
    uint32_t nl = KVS_MIN(s->n_layer, (uint32_t)KVS_MAX_LAYERS), ng = KVS_MIN(s->n_groups, (uint32_t)KVS_MAX_GROUPS);
    if (s->valid & KVS_VALID_BYTES) {
        pf_counter(p, "cache bytes held", t1, (double)s->bytes_held, true);
        pf_counter(p, "cache bytes allocated", t1, (double)s->bytes_alloc, true);
        pf_counter(p, "cache bytes full fp16", t1, (double)s->bytes_full, true);
        if (isfinite(s->cr_achieved)) pf_counter(p, "CR achieved", t1, s->cr_achieved, false);
        for (uint32_t l = 0; l < nl; l++) {
            snprintf(name, sizeof name, "L%02u bytes held", l);
            pf_counter(p, name, t1, (double)s->layer_bytes_held[l], true);
            snprintf(name, sizeof name, "L%02u kept tokens", l);
            pf_counter(p, name, t1, s->layer_kept[l], true);
        }
    }
    if (s->valid & KVS_VALID_LAYER_SIM)
        for (uint32_t l = 0; l + 1 < nl; l++) {
            if (!isfinite(s->layer_sim[l])) continue;
            snprintf(name, sizeof name, "L%02u-L%02u similarity", l, l + 1);
            pf_counter(p, name, t1, s->layer_sim[l], false);
        }
    if (s->valid & KVS_VALID_GROUP_SIM)
        for (uint32_t g = 0; g < ng; g++) {
            if (!isfinite(s->group_sim[g])) continue;
            snprintf(name, sizeof name, "G%u similarity", g);
            pf_counter(p, name, t1, s->group_sim[g], false);
        }
    if (s->valid & KVS_VALID_BUDGET)
        for (uint32_t g = 0; g < ng; g++) {
            snprintf(name, sizeof name, "G%u rank", g);
            pf_counter(p, name, t1, s->group_rank[g], true);
            if (!isfinite(s->group_merged[g])) continue;
            snprintf(name, sizeof name, "G%u merged fraction", g);
            pf_counter(p, name, t1, s->group_merged[g], false);
        }
    if (s->valid & KVS_VALID_QUALITY) {
        if (isfinite(s->kl)) pf_counter(p, "KL vs full", t1, s->kl, false);
        if (isfinite(s->top1)) pf_counter(p, "top-1 agreement", t1, s->top1, false);
    }
    p->last_us_ns = t1;
}

static void pf_record(struct pf *p, uint64_t trace_step, const struct kvs_record *r, bool keyframe)
{
    FILE *f = p->f;
    if (r->type == KVS_REC_RUN) {
        /* each run is a process; a keyframe's RUN names the process the window starts in */
        if (keyframe && p->pid_named) return;
        if (!keyframe && p->pid_named) p->pid++;
        pf_name_process(p, &r->u.run);
        return;
    }
    if (!p->pid_named) pf_name_process(p, NULL);
    switch (r->type) {
    case KVS_REC_STEP: pf_step(p, trace_step, &r->u.step); break;
    case KVS_REC_KERNEL: {
        const struct kvs_rec_kernel *k = &r->u.kernel;
        uint32_t tid = TID_GPU + KVS_MIN(k->stream, 2047u);
        uint32_t st = tid - TID_GPU;
        if (!(p->gpu_named[st / 32] & (1u << (st % 32)))) {
            char name[48];
            snprintf(name, sizeof name, "GPU stream %u", k->stream);
            pf_thread_name(p, tid, name);
            p->gpu_named[st / 32] |= 1u << (st % 32);
        }
        const char *kn = kernel_kind_name(k->kind);
        pf_begin(p);
        fputs("{\"ph\":\"X\",\"name\":", f);
        JS(f, k->name);
        fprintf(f, ",\"cat\":\"%s\",\"pid\":%u,\"tid\":%u", kn ? kn : "gpu", p->pid, tid);
        pf_ts(f, "ts", k->start_ns);
        pf_ts(f, "dur", k->end_ns >= k->start_ns ? k->end_ns - k->start_ns : 0);
        fprintf(f, ",\"args\":{\"bytes\":%llu}}", (unsigned long long)k->bytes);
        break;
    }
    case KVS_REC_LOG:
        pf_begin(p);
        fputs("{\"ph\":\"i\",\"s\":\"p\",\"name\":", f);
        JS(f, r->u.log.text);
        fprintf(f, ",\"cat\":\"log\",\"pid\":%u,\"tid\":%u", p->pid, TID_EVENTS);
        pf_ts(f, "ts", p->last_us_ns);
        fprintf(f, ",\"args\":{\"level\":%u}}", r->u.log.level);
        break;
    case KVS_REC_QUALITY:
    case KVS_REC_END:
    case KVS_REC_MATRIX:
        /* run-level facts: an instant carrying the record (matrices are summarised by shape) */
        pf_begin(p);
        fprintf(f, "{\"ph\":\"i\",\"s\":\"p\",\"name\":\"%s\",\"cat\":\"run\",\"pid\":%u,\"tid\":%u",
                r->type == KVS_REC_QUALITY ? "quality" : r->type == KVS_REC_END ? "end" : "matrix", p->pid, TID_EVENTS);
        pf_ts(f, "ts", p->last_us_ns);
        fputs(",\"args\":", f);
        if (r->type == KVS_REC_MATRIX) {
            const char *mk = matrix_kind_name(r->u.matrix.kind);
            fprintf(f, "{\"kind\":\"%s\",\"group\":%u,\"rows\":%u,\"cols\":%u}", mk ? mk : "?", r->u.matrix.group,
                    r->u.matrix.rows, r->u.matrix.cols);
        } else {
            /* the record's own JSON without the trailing newline */
            char *buf = NULL;
            size_t len = 0;
            FILE *m = open_memstream(&buf, &len);
            if (m) {
                kvs_record_to_json(r, m);
                fclose(m);
                if (len && buf[len - 1] == '\n') buf[--len] = 0;
                fputs(buf, f);
            } else {
                fputs("{}", f);
            }
            free(buf);
        }
        fputc('}', f);
        break;
    default: break;
    }
}

/* ---- driver ---- */

enum kvs_status kvs_trace_export(struct kvs_trace *t, enum kvs_trace_format fmt, uint64_t from, uint64_t to,
                                 FILE *out, char *err, size_t errlen)
{
    if (fmt != KVS_TRACE_FMT_PERFETTO && fmt != KVS_TRACE_FMT_CSV && fmt != KVS_TRACE_FMT_JSONL) {
        kvs_seterr(err, errlen, "unknown export format %d", (int)fmt);
        return KVS_ERR_ARG;
    }
    if (from > to) {
        kvs_seterr(err, errlen, "empty step window: --from %llu is after --to %llu", (unsigned long long)from,
                   (unsigned long long)to);
        return KVS_ERR_ARG;
    }
    if (from > 0) kvs_trace_seek_step(t, from, NULL);
    else kvs_trace_rewind(t);
    struct csv csv = {0};
    struct pf pf = { .f = out, .pid = 1 };
    uint32_t run = 0;
    if (fmt == KVS_TRACE_FMT_PERFETTO) fputs("{\"traceEvents\":[", out);
    enum kvs_status st;
    struct kvs_record *r;
    struct kvs_trace_where w;
    while ((st = kvs_trace_next(t, &r, &w)) == KVS_OK && r) {
        bool is_step = r->type == KVS_REC_STEP && !w.keyframe;
        bool state = r->type == KVS_REC_RUN || r->type == KVS_REC_MATRIX || r->type == KVS_REC_QUALITY;
        if (is_step && w.step > to) { kvs_record_unref(r); break; }
        /* before the window only state records matter (they set up what the window shows) */
        bool keep = is_step ? w.step >= from : (w.step >= from || state);
        if (r->type == KVS_REC_STEP && w.keyframe) keep = false;
        if (r->type == KVS_REC_RUN && !w.keyframe) run++;
        if (r->type == KVS_REC_RUN && w.keyframe && run == 0) run = 1;
        if (keep) {
            switch (fmt) {
            case KVS_TRACE_FMT_JSONL: kvs_record_to_json(r, out); break;
            case KVS_TRACE_FMT_CSV: if (is_step) csv_row(out, &csv, w.step, run, &r->u.step); break;
            case KVS_TRACE_FMT_PERFETTO: pf_record(&pf, w.step, r, w.keyframe); break;
            }
        }
        kvs_record_unref(r);
    }
    if (st != KVS_OK) {
        kvs_seterr(err, errlen, "%s", kvs_trace_error(t));
        return st;
    }
    if (fmt == KVS_TRACE_FMT_CSV && !csv.header) csv_header(out, &csv, NULL);
    if (fmt == KVS_TRACE_FMT_PERFETTO) {
        fputs("\n],\"displayTimeUnit\":\"ms\",\"otherData\":{", out);
        for (size_t i = 0; i < kvs_trace_meta_count(t); i++) {
            if (i) fputc(',', out);
            const char *k = kvs_trace_meta_key(t, i), *v = kvs_trace_meta_value(t, i);
            js(out, k, strlen(k) + 1);
            fputc(':', out);
            js(out, v, strlen(v) + 1);
        }
        fputs("}}\n", out);
    }
    if (fflush(out) != 0 || ferror(out)) {
        kvs_seterr(err, errlen, "export: write failed: %s", strerror(errno));
        return KVS_ERR_IO;
    }
    return KVS_OK;
}
