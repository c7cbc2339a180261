/* --batch output (see batch.h): every record as the trace library's JSON line (kvs_record_to_json,
 * also the `trace export --format jsonl` format, so a live run and its replay print the same
 * bytes), then a summary of the last run: steps, bytes, achieved CR, quality, rates and the
 * generated text. Depends on engine/core/record.h and traces/trace.h (formatting only). */
#include "batch.h"

#include "trace.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int kvs_batch_print(FILE *f, kvs_batch_next_fn next, void *ctx, bool stop_at_end)
{
    uint64_t n_records = 0, n_steps = 0, n_runs = 0;
    struct kvs_record *last_step = NULL, *end = NULL, *quality = NULL, *run = NULL;
    int errors = 0;
    bool write_failed = false;
    char *text = NULL;
    size_t text_len = 0, text_cap = 0;
    struct kvs_record *r;
    while ((r = next(ctx)) != NULL) {
        n_records++;
        kvs_record_to_json(r, f);
        if (ferror(f)) write_failed = true;
        switch (r->type) {
        case KVS_REC_STEP:
            n_steps++;
            if (r->u.step.kind == KVS_STEP_DECODE) {
                size_t pl = strnlen(r->u.step.piece, KVS_REC_PIECE_MAX);
                if (text_len + pl + 1 > text_cap) {
                    size_t nc = (text_len + pl + 1) * 2;
                    char *nt = realloc(text, nc);
                    if (nt) { text = nt; text_cap = nc; }
                }
                if (text_len + pl + 1 <= text_cap) {
                    memcpy(text + text_len, r->u.step.piece, pl);
                    text_len += pl;
                    text[text_len] = 0;
                }
            }
            kvs_record_unref(last_step);
            last_step = r;
            break;
        case KVS_REC_RUN:
            /* the summary describes the last run */
            n_runs++;
            kvs_record_unref(run); run = r;
            kvs_record_unref(last_step); last_step = NULL;
            kvs_record_unref(quality); quality = NULL;
            kvs_record_unref(end); end = NULL;
            text_len = 0;
            if (text) text[0] = 0;
            break;
        case KVS_REC_QUALITY: kvs_record_unref(quality); quality = r; break;
        case KVS_REC_END: kvs_record_unref(end); end = r; break;
        case KVS_REC_LOG:
            if (r->u.log.level >= 2) {
                /* also on stderr: a script reading only the exit status and stderr learns why */
                errors++;
                char msg[4 * sizeof r->u.log.text + 1];
                kvs_escape(msg, sizeof msg, r->u.log.text, strnlen(r->u.log.text, sizeof r->u.log.text));
                fprintf(stderr, "kvscope: %s\n", msg);
            }
            kvs_record_unref(r);
            break;
        default: kvs_record_unref(r); break;
        }
        if (write_failed || (stop_at_end && end)) break;
    }
    fprintf(f, "{\"type\":\"summary\",\"records\":%llu,\"runs\":%llu,\"steps\":%llu", (unsigned long long)n_records,
            (unsigned long long)n_runs, (unsigned long long)n_steps);
    if (run) {
        fputs(",\"method\":", f);
        kvs_json_string(f, run->u.run.method, strnlen(run->u.run.method, sizeof run->u.run.method));
    }
    if (last_step && (last_step->u.step.valid & KVS_VALID_BYTES)) {
        const struct kvs_rec_step *s = &last_step->u.step;
        fprintf(f, ",\"n_ctx\":%u,\"bytes_full\":%llu,\"bytes_held\":%llu,\"bytes_alloc\":%llu,\"bytes_factors\":%llu,"
                   "\"cr_achieved\":", s->n_ctx, (unsigned long long)s->bytes_full, (unsigned long long)s->bytes_held,
                (unsigned long long)s->bytes_alloc, (unsigned long long)s->bytes_factors);
        kvs_json_number(f, "%.6g", (double)s->cr_achieved);
    }
    if (quality) {
        const struct kvs_rec_quality *q = &quality->u.quality;
        if (isfinite(q->kl)) fprintf(f, ",\"kl\":%.6g", (double)q->kl);
        if (isfinite(q->top1)) fprintf(f, ",\"top1\":%.6g", (double)q->top1);
        if (isfinite(q->ppl)) fprintf(f, ",\"ppl\":%.6g", (double)q->ppl);
        if (isfinite(q->ppl_full)) fprintf(f, ",\"ppl_full\":%.6g", (double)q->ppl_full);
        fprintf(f, ",\"n_scored\":%u", q->n_tokens);
    }
    if (end) {
        /* a replayed END record comes from a file: its rates may be anything */
        fprintf(f, ",\"n_prompt\":%u,\"n_gen\":%u,\"prefill_tps\":", end->u.end.n_prompt, end->u.end.n_gen);
        kvs_json_number(f, "%.3f", (double)end->u.end.prefill_tps);
        fputs(",\"decode_tps\":", f);
        kvs_json_number(f, "%.3f", (double)end->u.end.decode_tps);
        fprintf(f, ",\"dropped_records\":%llu", (unsigned long long)end->u.end.dropped_records);
    }
    fprintf(f, ",\"complete\":%s,\"errors\":%d,\"text\":", end ? "true" : "false", errors);
    kvs_json_string(f, text ? text : "", text_len);
    fputs("}\n", f);
    free(text);
    kvs_record_unref(last_step);
    kvs_record_unref(end);
    kvs_record_unref(quality);
    kvs_record_unref(run);
    if (fflush(f) != 0 || ferror(f)) write_failed = true;
    /* the exit status alone would not say why */
    if (write_failed) fprintf(stderr, "kvscope: cannot write the output: %s\n", errno ? strerror(errno) : "write error");
    return errors || write_failed ? 1 : 0;
}
