/* JSON lines for step records (see record_json.h). Strings are escaped byte by byte; invalid UTF-8
 * in token pieces is written as \u00XX escapes of the bytes so the output is always valid JSON.
 * Depends on engine/record.h and libc. */
#include "record_json.h"

#include <math.h>
#include <string.h>

void kvs_app_json_str(FILE *f, const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
        else if (c < 0x80) fputc(c, f);
        else {
            /* copy a complete, valid UTF-8 sequence; escape stray bytes */
            int len = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
            bool ok = len > 0 && i + (size_t)len <= n;
            for (int k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
            if (ok) { fwrite(s + i, 1, (size_t)len, f); i += (size_t)len - 1; }
            else fprintf(f, "\\u%04x", c);
        }
    }
    fputc('"', f);
}

static void jf(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.9g", v);
    else fputs("null", f);
}

static void jfarr(FILE *f, const char *name, const float *v, uint32_t n)
{
    fprintf(f, ",\"%s\":[", name);
    for (uint32_t i = 0; i < n; i++) { if (i) fputc(',', f); jf(f, v[i]); }
    fputc(']', f);
}

static void juarr(FILE *f, const char *name, const uint32_t *v, uint32_t n)
{
    fprintf(f, ",\"%s\":[", name);
    for (uint32_t i = 0; i < n; i++) fprintf(f, i ? ",%u" : "%u", v[i]);
    fputc(']', f);
}

bool kvs_app_record_json(FILE *f, const struct kvs_record *r)
{
    fprintf(f, "{\"seq\":%llu", (unsigned long long)r->seq);
    switch (r->type) {
    case KVS_REC_RUN: {
        const struct kvs_rec_run *u = &r->u.run;
        fprintf(f, ",\"type\":\"run\",\"run_id\":%u,\"model\":", u->run_id);
        kvs_app_json_str(f, u->model, sizeof u->model);
        fputs(",\"arch\":", f); kvs_app_json_str(f, u->arch, sizeof u->arch);
        fputs(",\"backend\":", f); kvs_app_json_str(f, u->backend, sizeof u->backend);
        fputs(",\"device\":", f); kvs_app_json_str(f, u->device, sizeof u->device);
        fputs(",\"method\":", f); kvs_app_json_str(f, u->method, sizeof u->method);
        fprintf(f, ",\"n_layer\":%u,\"n_embd\":%u,\"n_head\":%u,\"n_head_kv\":%u,\"head_dim\":%u,\"n_ff\":%u,\"n_vocab\":%u,"
                   "\"n_ctx_max\":%u,\"model_bytes\":%llu,\"target_cr\":",
                u->n_layer, u->n_embd, u->n_head, u->n_head_kv, u->head_dim, u->n_ff, u->n_vocab, u->n_ctx_max,
                (unsigned long long)u->model_bytes);
        if (u->target_cr < 0) fputs("null", f); else jf(f, u->target_cr);
        fputs(",\"rank_ratio\":", f); jf(f, u->rank_ratio);
        fprintf(f, ",\"group_size\":%u,\"n_groups\":%u,\"sinks\":%u,\"recent\":%u,\"quant_bits\":%u,\"evict_capacity\":%u",
                u->group_size, u->n_groups, u->sinks, u->recent, u->quant_bits, u->evict_capacity);
        juarr(f, "group_rank", u->group_rank, u->n_groups < KVS_MAX_GROUPS ? u->n_groups : KVS_MAX_GROUPS);
        fprintf(f, ",\"n_threads\":%u,\"unix_ns\":%llu", u->n_threads, (unsigned long long)u->unix_ns);
        break;
    }
    case KVS_REC_STEP: {
        const struct kvs_rec_step *s = &r->u.step;
        uint32_t nl = s->n_layer < KVS_MAX_LAYERS ? s->n_layer : KVS_MAX_LAYERS;
        uint32_t ng = s->n_groups < KVS_MAX_GROUPS ? s->n_groups : KVS_MAX_GROUPS;
        fprintf(f, ",\"type\":\"step\",\"step\":%llu,\"kind\":\"%s\",\"n_new\":%u,\"n_ctx\":%u,\"token\":%d,\"piece\":",
                (unsigned long long)s->step, s->kind == KVS_STEP_PREFILL ? "prefill" : s->kind == KVS_STEP_DECODE ? "decode" : "?",
                s->n_new, s->n_ctx, s->token);
        kvs_app_json_str(f, s->piece, sizeof s->piece);
        fprintf(f, ",\"t_start_ns\":%llu,\"t_end_ns\":%llu,\"valid\":%u,\"n_layer\":%u,\"n_groups\":%u",
                (unsigned long long)s->t_start_ns, (unsigned long long)s->t_end_ns, s->valid, s->n_layer, s->n_groups);
        if (s->valid & KVS_VALID_LAYER_SIM) jfarr(f, "layer_sim", s->layer_sim, nl > 0 ? nl - 1 : 0);
        if (s->valid & KVS_VALID_GROUP_SIM) jfarr(f, "group_sim", s->group_sim, ng);
        if (s->valid & KVS_VALID_BUDGET) {
            juarr(f, "group_rank", s->group_rank, ng);
            jfarr(f, "group_merged", s->group_merged, ng);
        }
        if (s->valid & (KVS_VALID_BYTES | KVS_VALID_BUDGET)) juarr(f, "layer_kept", s->layer_kept, nl);
        if (s->valid & KVS_VALID_BYTES) {
            fputs(",\"layer_bytes_held\":[", f);
            for (uint32_t i = 0; i < nl; i++) fprintf(f, i ? ",%llu" : "%llu", (unsigned long long)s->layer_bytes_held[i]);
            fprintf(f, "],\"bytes_full\":%llu,\"bytes_held\":%llu,\"bytes_alloc\":%llu,\"cr_achieved\":",
                    (unsigned long long)s->bytes_full, (unsigned long long)s->bytes_held, (unsigned long long)s->bytes_alloc);
            jf(f, s->cr_achieved);
        }
        fputs(",\"cr_target\":", f);
        if (s->cr_target < 0) fputs("null", f); else jf(f, s->cr_target);
        if (s->valid & KVS_VALID_LOGPROB) { fputs(",\"logprob\":", f); jf(f, s->logprob); }
        if (s->valid & KVS_VALID_QUALITY) {
            fputs(",\"ppl\":", f); jf(f, s->ppl);
            fputs(",\"kl\":", f); jf(f, s->kl);
            fputs(",\"top1\":", f); jf(f, s->top1);
        }
        if (s->valid & KVS_VALID_OPS) {
            fputs(",\"ops\":{", f);
            bool first = true;
            for (int o = 0; o < KVS_OP_COUNT; o++) {
                const struct kvs_op_counter *c = &s->ops[o];
                if (!c->calls && !c->ns) continue;
                fprintf(f, "%s\"%s\":{\"ns\":%llu,\"bytes\":%llu,\"flops\":%llu,\"calls\":%u}", first ? "" : ",",
                        kvs_op_name((enum kvs_op)o), (unsigned long long)c->ns, (unsigned long long)c->bytes,
                        (unsigned long long)c->flops, c->calls);
                first = false;
            }
            fputc('}', f);
        }
        break;
    }
    case KVS_REC_MATRIX: {
        const struct kvs_rec_matrix *m = &r->u.matrix;
        static const char *kinds[] = {"?", "sim_hidden", "sim_keys", "sim_latent", "spectrum"};
        uint64_t n = (uint64_t)m->rows * m->cols;
        size_t room = r->bytes > offsetof(struct kvs_record, u) + sizeof *m
                          ? (r->bytes - offsetof(struct kvs_record, u) - sizeof *m) / sizeof(float) : 0;
        if (n > room) n = room;
        fprintf(f, ",\"type\":\"matrix\",\"kind\":\"%s\",\"group\":%u,\"rows\":%u,\"cols\":%u,\"v\":[",
                m->kind <= 4 ? kinds[m->kind] : "?", m->group, m->rows, m->cols);
        for (uint64_t i = 0; i < n; i++) { if (i) fputc(',', f); jf(f, m->v[i]); }
        fputc(']', f);
        break;
    }
    case KVS_REC_QUALITY: {
        const struct kvs_rec_quality *q = &r->u.quality;
        fputs(",\"type\":\"quality\",\"method\":", f);
        kvs_app_json_str(f, q->method, sizeof q->method);
        fputs(",\"target_cr\":", f); if (q->target_cr < 0) fputs("null", f); else jf(f, q->target_cr);
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
        fputs(",\"type\":\"kernel\",\"name\":", f);
        kvs_app_json_str(f, k->name, sizeof k->name);
        fprintf(f, ",\"kind\":%u,\"stream\":%u,\"start_ns\":%llu,\"end_ns\":%llu,\"bytes\":%llu", k->kind, k->stream,
                (unsigned long long)k->start_ns, (unsigned long long)k->end_ns, (unsigned long long)k->bytes);
        break;
    }
    case KVS_REC_END: {
        const struct kvs_rec_end *e = &r->u.end;
        fprintf(f, ",\"type\":\"end\",\"n_steps\":%llu,\"n_prompt\":%u,\"n_gen\":%u,\"prefill_tps\":", (unsigned long long)e->n_steps,
                e->n_prompt, e->n_gen);
        jf(f, e->prefill_tps);
        fputs(",\"decode_tps\":", f);
        jf(f, e->decode_tps);
        fprintf(f, ",\"dropped_records\":%llu", (unsigned long long)e->dropped_records);
        break;
    }
    case KVS_REC_LOG:
        fprintf(f, ",\"type\":\"log\",\"level\":%u,\"text\":", r->u.log.level);
        kvs_app_json_str(f, r->u.log.text, sizeof r->u.log.text);
        break;
    default: fprintf(f, ",\"type\":\"unknown\",\"type_id\":%u", r->type); break;
    }
    fputs("}\n", f);
    return !ferror(f);
}
