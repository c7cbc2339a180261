/* Session: the engine thread. Builds the press, runs prefill in chunks and decodes, and publishes
 * RUN, LOG, MATRIX, STEP, QUALITY and END records (DESIGN.md §1). With a full reference run the
 * reference chooses the tokens and the method is scored teacher-forced on them (DESIGN.md §6).
 * One-off setup (factorization, calibration) is its own phase, outside time to first token.
 * Never touches the terminal. */
#include "session.h"
#include "commonkv.h"
#include "infer.h"
#include "metrics.h"
#include "profiler.h"

#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SIM_SAMPLES 64 /* prompt tokens sampled for the layer x layer similarity matrices */

struct kvs_session {
    const struct kvs_model *model;
    struct kvs_session_params p;
    char *prompt;
    struct kvs_queue *q;
    pthread_t thread;
    volatile int stop;
    volatile int done;
    uint64_t seq;
    uint64_t t0;
    /* similarity collection (hook) */
    float *sim_x, *sim_k; /* (n_layer, SIM_SAMPLES, D) and (n_layer, SIM_SAMPLES, dkv) */
    bool sim_filled[SIM_SAMPLES];
    int sim_n;
    uint64_t acts_logged; /* activation values clamped to fp16 that a log record has reported */
    uint64_t cache_logged; /* cache values clamped to fp16 that a log record has reported */
};

void kvs_session_params_default(struct kvs_session_params *p)
{
    memset(p, 0, sizeof *p);
    kvs_method_parse(&p->method, "full", NULL, 0);
    p->n_predict = 64;
    p->n_ctx = 4096;
    p->n_batch = 256;
    p->seed = 42;
    p->temp = 0;
    p->top_p = 0.95f;
    p->similarity = true;
}

static void emit(struct kvs_session *s, struct kvs_record *r)
{
    if (!r) return;
    r->seq = s->seq++;
    if (s->p.lossless || r->type == KVS_REC_RUN || r->type == KVS_REC_END) kvs_queue_push_wait(s->q, r);
    else kvs_queue_push(s->q, r);
}

static void emit_cb(void *ud, struct kvs_record *r) { emit(ud, r); }

static void logf_(struct kvs_session *s, uint32_t level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(struct kvs_session *s, uint32_t level, const char *fmt, ...)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_LOG, 0);
    if (!r) return;
    r->u.log.level = level;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->u.log.text, sizeof r->u.log.text, fmt, ap);
    va_end(ap);
    emit(s, r);
}

/* Offline work (factorization, calibration) asks this between units: a stop request cancels it,
 * so quitting or restarting during calibration does not wait for the whole of it. */
static bool progress_cb(void *ud, const char *what, float frac)
{
    struct kvs_session *s = ud;
    if (__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) return false;
    logf_(s, 0, "%s %3.0f%%", what, (double)(frac * 100));
    return true;
}

/* Samples up to SIM_SAMPLES prompt tokens per layer for the similarity matrices. */
static void sim_hook(void *ud, int layer, int T, const int32_t *pos, const float *x, const float *xn, const float *k)
{
    struct kvs_session *s = ud;
    const struct kvs_hparams *hp = &s->model->hp;
    int D = (int)hp->n_embd, dkv = (int)(hp->n_head_kv * hp->head_dim);
    for (int t = 0; t < T; t++) {
        int slot = pos[t] % SIM_SAMPLES; /* later tokens overwrite earlier ones: a spread sample */
        if (pos[t] < 4) continue;        /* attention sinks are outliers in every layer */
        memcpy(s->sim_x + ((size_t)layer * SIM_SAMPLES + slot) * D, x + (size_t)t * D, (size_t)D * sizeof(float));
        if (k) memcpy(s->sim_k + ((size_t)layer * SIM_SAMPLES + slot) * dkv, k + (size_t)t * dkv, (size_t)dkv * sizeof(float));
        if (layer == 0 && !s->sim_filled[slot]) {
            s->sim_filled[slot] = true;
            s->sim_n++;
        }
    }
}

static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
}

static void emit_sim_matrix(struct kvs_session *s, uint32_t kind, const float *data, int width)
{
    int L = (int)s->model->hp.n_layer;
    if (s->sim_n <= 0) return;
    struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, (uint32_t)(L * L));
    if (!r) return;
    r->u.matrix.kind = kind;
    r->u.matrix.rows = r->u.matrix.cols = (uint32_t)L;
    for (int i = 0; i < L; i++)
        for (int j = i; j < L; j++) {
            double sum = 0;
            for (int t = 0; t < SIM_SAMPLES; t++)
                if (s->sim_filled[t])
                    sum += cosine(data + ((size_t)i * SIM_SAMPLES + t) * width, data + ((size_t)j * SIM_SAMPLES + t) * width, width);
            float v = (float)(sum / s->sim_n);
            r->u.matrix.v[i * L + j] = r->u.matrix.v[j * L + i] = v;
        }
    emit(s, r);
}

static void drain_profiler(struct kvs_session *s, struct kvs_profiler *prof)
{
    if (!prof) return;
    kvs_profiler_flush(prof);
    struct kvs_record *r;
    while ((r = kvs_profiler_pop_record(prof)) != NULL) emit(s, r);
}

/* The CommonKV latent similarity (layer pairs within a group; others NaN) on the first prompt
 * tokens, at the ranks the press runs with, so the Similarity panel can set latents beside hidden
 * states and raw keys. An extra forward pass over at most LATENT_SIM_TOKENS tokens. */
#define LATENT_SIM_TOKENS 128
static void emit_latent_similarity(struct kvs_session *s, struct kvs_press *press, const int32_t *toks, int n)
{
    const struct kvs_ckv_factors *f = kvs_press_commonkv_factors(press);
    const struct kvs_ckv_plan *plan = kvs_press_commonkv_plan(press);
    if (!f || !plan || n < 8) return;
    int L = (int)s->model->hp.n_layer;
    float *H = NULL, *K = NULL, *Lt = NULL;
    char err[256];
    if (kvs_similarity_layers(s->model, toks, KVS_MIN(n, LATENT_SIM_TOKENS), f, plan->rank, s->p.n_threads, &H, &K, &Lt,
                              err, sizeof err) != KVS_OK) {
        logf_(s, 1, "latent similarity unavailable: %s", err);
        return;
    }
    struct kvs_record *r = kvs_record_new(KVS_REC_MATRIX, (uint32_t)(L * L));
    if (r) {
        r->u.matrix.kind = KVS_MAT_SIM_LATENT;
        r->u.matrix.rows = r->u.matrix.cols = (uint32_t)L;
        memcpy(r->u.matrix.v, Lt, (size_t)L * L * sizeof(float));
        emit(s, r);
    }
    free(H);
    free(K);
    free(Lt);
}

static void fill_step(struct kvs_session *s, struct kvs_press *press, struct kvs_ctx *ctx, struct kvs_rec_step *st,
                      struct kvs_op_counter *prev)
{
    struct kvs_op_counter *c = kvs_ctx_counters(ctx);
    for (int i = 0; i < KVS_OP_COUNT; i++) {
        st->ops[i].ns = c[i].ns - prev[i].ns;
        st->ops[i].bytes = c[i].bytes - prev[i].bytes;
        st->ops[i].flops = c[i].flops - prev[i].flops;
        st->ops[i].calls = c[i].calls - prev[i].calls;
        prev[i] = c[i];
    }
    st->valid |= KVS_VALID_OPS;
    st->n_layer = s->model->hp.n_layer;
    st->cr_target = s->p.method.target_cr;
    if (press->ops->fill_record) press->ops->fill_record(press, st);
    /* the card, after the step's last download: its memory and the fp16 activation overflow count
     * (read once a step, so the products never wait for it) */
    if (kvs_ctx_device_mem(ctx, &st->dev_mem_used, &st->dev_mem_total)) st->dev_pool_bytes = kvs_ctx_pool_bytes(ctx);
    st->acts_saturated = kvs_ctx_acts_saturated(ctx);
    if (st->acts_saturated && !s->acts_logged) { /* never silent: the products did not see these values */
        uint64_t clamped = 0;
        logf_(s, 1, "activations: %llu values beyond the fp16 range clamped to +-65504 in products by step %llu "
              "(%s weights); bf16 keeps them", (unsigned long long)st->acts_saturated, (unsigned long long)st->step,
              kvs_ctx_weights(ctx, &clamped));
        s->acts_logged = st->acts_saturated;
    }
    st->cache_saturated = kvs_ctx_cache_saturated(ctx);
    if (st->cache_saturated && !s->cache_logged) { /* never silent: attention saw +-65504, not the value */
        logf_(s, 1, "cache: %llu cache values clamped to fp16 range (+-65504) by step %llu instead of stored as "
              "inf; the model's keys or values exceed fp16", (unsigned long long)st->cache_saturated,
              (unsigned long long)st->step);
        s->cache_logged = st->cache_saturated;
    }
}

static void emit_run(struct kvs_session *s, struct kvs_press *press, struct kvs_ctx *ctx)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_RUN, 0);
    if (!r) return;
    struct kvs_rec_run *run = &r->u.run;
    const struct kvs_hparams *hp = &s->model->hp;
    run->run_id = s->p.run_id;
    snprintf(run->model, sizeof run->model, "%s", s->model->name);
    snprintf(run->arch, sizeof run->arch, "%s", hp->arch == KVS_ARCH_QWEN2 ? "qwen2" : "llama");
    snprintf(run->backend, sizeof run->backend, "%s", kvs_ctx_backend(ctx));
    char cpu[128] = "CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) { snprintf(cpu, sizeof cpu, "%s", c + 2); cpu[strcspn(cpu, "\n")] = 0; }
                break;
            }
        fclose(f);
    }
    snprintf(run->device, sizeof run->device, "%.63s", strcmp(kvs_ctx_backend(ctx), "cpu") ? kvs_ctx_device(ctx) : cpu);
    snprintf(run->method, sizeof run->method, "%s", s->p.method.spec);
    run->n_layer = hp->n_layer; run->n_embd = hp->n_embd; run->n_head = hp->n_head;
    run->n_head_kv = hp->n_head_kv; run->head_dim = hp->head_dim; run->n_ff = hp->n_ff;
    run->n_vocab = hp->n_vocab; run->n_ctx_max = (uint32_t)s->p.n_ctx;
    run->model_bytes = s->model->file_bytes;
    const struct kvs_method_config *m = &s->p.method;
    run->target_cr = m->target_cr;
    run->rank_ratio = m->rank_ratio;
    run->group_size = (m->methods & (KVS_M_COMMONKV)) ? m->group_size : 0;
    run->n_groups = run->group_size ? (hp->n_layer + run->group_size - 1) / run->group_size : 0;
    run->sinks = m->sinks;
    run->recent = m->recent;
    run->quant_bits = (m->methods & KVS_M_QUANT) ? m->quant_bits : 0;
    run->evict_capacity = (m->methods & KVS_M_SNAPKV) ? m->snap_capacity : 0;
    /* ranks as the press reports them in its first step record */
    struct kvs_rec_step tmp;
    memset(&tmp, 0, sizeof tmp);
    if (press->ops->fill_record) press->ops->fill_record(press, &tmp);
    for (uint32_t g = 0; g < tmp.n_groups && g < KVS_MAX_GROUPS; g++) run->group_rank[g] = tmp.group_rank[g];
    if (tmp.n_groups) run->n_groups = tmp.n_groups;
    kvs_press_commonkv_run_fields(press, run);
    const struct kvs_ckv_plan *plan = kvs_press_commonkv_plan(press);
    if (plan) {
        run->plan_profile = plan->profile;
        snprintf(run->plan_why, sizeof run->plan_why, "%s", plan->why);
    }
    run->n_threads = (uint32_t)kvs_pool_size(kvs_ctx_pool(ctx));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    run->unix_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    run->precise = s->p.precise;
    snprintf(run->weights, sizeof run->weights, "%s", kvs_ctx_weights(ctx, &run->weights_saturated));
    emit(s, r);
}

/* A QUALITY record: the method against the full run on the reference's tokens so far (N of them).
 * No passkey is run live, so passkey_acc stays NaN (the panel leaves the row out). */
#define QUALITY_EVERY 8
static void emit_quality(struct kvs_session *s, struct kvs_press *press, const struct kvs_quality_acc *q,
                         double decode_s, int n_gen)
{
    struct kvs_record *r = kvs_record_new(KVS_REC_QUALITY, 0);
    if (!r) return;
    snprintf(r->u.quality.method, sizeof r->u.quality.method, "%s", s->p.method.spec);
    r->u.quality.target_cr = s->p.method.target_cr;
    r->u.quality.kl = (float)kvs_quality_kl(q);
    r->u.quality.top1 = (float)kvs_quality_top1(q);
    r->u.quality.ppl = (float)kvs_quality_ppl(q);
    r->u.quality.ppl_full = (float)kvs_quality_ppl_ref(q);
    r->u.quality.passkey_acc = NAN;
    r->u.quality.decode_tps = decode_s > 0 && n_gen > 0 ? (float)(n_gen / decode_s) : NAN;
    r->u.quality.n_tokens = (uint32_t)q->n;
    struct kvs_rec_step tmp;
    memset(&tmp, 0, sizeof tmp);
    press->ops->fill_record(press, &tmp);
    r->u.quality.achieved_cr = (tmp.valid & KVS_VALID_BYTES) ? tmp.cr_achieved : NAN;
    emit(s, r);
}

static void *session_main(void *arg)
{
    struct kvs_session *s = arg;
    const struct kvs_model *m = s->model;
    const struct kvs_hparams *hp = &m->hp;
    char err[512] = "";
    struct kvs_press *press = NULL, *ref_press = NULL;
    struct kvs_ctx *ctx = NULL, *ref_ctx = NULL;
    int32_t *toks = NULL;
    struct kvs_op_counter prev[KVS_OP_COUNT];
    memset(prev, 0, sizeof prev);
    uint64_t n_steps = 0;
    int n_prompt = 0, n_gen = 0;
    double prefill_s = 0, decode_s = 0;
    s->t0 = kvs_now_ns();
    uint64_t t_setup = s->t0;

    /* prompt tokens */
    const char *text = s->prompt;
    char *chat = NULL;
    if (s->p.chat) {
        chat = kvs_tokenizer_chat_format(m->tok, NULL, text);
        if (chat) text = chat;
    }
    size_t len = strlen(text);
    int64_t cap = (int64_t)len + 8;
    toks = malloc((size_t)(cap + s->p.n_predict + 1) * sizeof(int32_t));
    if (!toks) { free(chat); logf_(s, 2, "out of memory tokenizing the prompt"); goto end; }
    int64_t n = 0;
    if (kvs_tokenizer_add_bos(m->tok) && kvs_tokenizer_bos(m->tok) >= 0) toks[n++] = kvs_tokenizer_bos(m->tok);
    int64_t got = kvs_tokenizer_encode(m->tok, text, len, s->p.chat, toks + n, cap - n);
    free(chat);
    if (got < 0 || got > cap - n) { logf_(s, 2, "tokenizer failed on the prompt"); goto end; }
    n += got;
    if (n == 0) { logf_(s, 2, "empty prompt"); goto end; }
    if (n + s->p.n_predict > s->p.n_ctx) {
        int64_t keep = s->p.n_ctx - s->p.n_predict;
        if (keep < 1) { logf_(s, 2, "context %d too small for %d new tokens", s->p.n_ctx, s->p.n_predict); goto end; }
        logf_(s, 1, "prompt of %lld tokens cut to %lld to fit the context of %d", (long long)n, (long long)keep, s->p.n_ctx);
        n = keep;
    }
    n_prompt = (int)n;

    /* the plan is made for the tokens this run holds: a short prompt leaves little to merge, and
     * the planner says what the target then costs */
    struct kvs_method_config mc = s->p.method;
    mc.plan_ctx = n_prompt + s->p.n_predict;
    enum kvs_status st = kvs_press_new(&press, m, &mc, s->p.n_ctx, progress_cb, s, err, sizeof err);
    if (st != KVS_OK) { logf_(s, 2, "method %s: %s", s->p.method.spec, err); goto end; }
    struct kvs_ctx_params cp;
    kvs_ctx_params_default(&cp);
    cp.n_ctx = s->p.n_ctx;
    cp.n_batch = s->p.n_batch > 0 ? s->p.n_batch : 256;
    cp.n_threads = s->p.n_threads;
    if (s->p.backend[0]) snprintf(cp.backend, sizeof cp.backend, "%s", s->p.backend);
    if (s->p.weights[0]) snprintf(cp.weights, sizeof cp.weights, "%s", s->p.weights);
    cp.precise = s->p.precise;
    if ((st = kvs_ctx_new(&ctx, m, press, &cp, err, sizeof err)) != KVS_OK) { logf_(s, 2, "%s", err); goto end; }
    if (s->p.compare_full && s->p.method.methods != KVS_M_FULL) {
        struct kvs_method_config fc;
        kvs_method_parse(&fc, "full", NULL, 0);
        if (kvs_press_new(&ref_press, m, &fc, s->p.n_ctx, NULL, NULL, err, sizeof err) != KVS_OK ||
            kvs_ctx_new(&ref_ctx, m, ref_press, &cp, err, sizeof err) != KVS_OK) {
            logf_(s, 1, "quality comparison disabled: %s", err);
        }
    }
    /* setup (SVD, calibration, contexts) is a phase of its own: counted as the SVD op of the first
     * step and logged, and the run's clock starts after it, so time to first token excludes it */
    {
        uint64_t now = kvs_now_ns(), setup_ns = now - t_setup;
        struct kvs_op_counter *c = kvs_ctx_counters(ctx);
        c[KVS_OP_SVD].ns += setup_ns;
        c[KVS_OP_SVD].calls++;
        /* no number in the text: records other than timings are the same bytes on every run */
        logf_(s, 0, "setup (factorization, calibration, contexts) done: its time is the svd op of the first step, "
                    "not counted in time to first token");
        s->t0 = now;
    }
    emit_run(s, press, ctx);
    uint64_t clamped = 0;
    const char *wtype = kvs_ctx_weights(ctx, &clamped);
    if (clamped) /* never silent: these weights are not what the model holds */
        logf_(s, 1, "weights: %llu values exceed the fp16 range and were clamped to +-65504 (%s on %s)",
              (unsigned long long)clamped, wtype, kvs_ctx_device(ctx));
    /* GPU activity: CUPTI when the run is on the GPU, otherwise the reason on one line */
    struct kvs_profiler *prof = NULL;
    enum kvs_prof_state pstate;
    const char *why = kvs_profiler_probe(&pstate);
    if (strcmp(kvs_ctx_backend(ctx), "cpu") != 0) {
        if (kvs_profiler_new(&prof, 0) == KVS_OK && kvs_profiler_start(prof, s->t0) == KVS_OK) {
            logf_(s, 0, "profiler: %s", kvs_profiler_status(prof));
        } else {
            logf_(s, 1, "profiler: %s", prof ? kvs_profiler_status(prof) : why);
            kvs_profiler_delete(prof);
            prof = NULL;
        }
    } else {
        logf_(s, 0, "profiler: CPU run, internal counters only (GPU: %s)", why);
    }


    if (s->p.similarity) {
        int D = (int)hp->n_embd, dkv = (int)(hp->n_head_kv * hp->head_dim);
        s->sim_x = calloc((size_t)hp->n_layer * SIM_SAMPLES * D, sizeof(float));
        s->sim_k = calloc((size_t)hp->n_layer * SIM_SAMPLES * dkv, sizeof(float));
        if (s->sim_x && s->sim_k) kvs_ctx_set_hook(ctx, sim_hook, s);
    }
    /* prefill, one STEP record per chunk */
    uint64_t tp0 = kvs_now_ns();
    for (int64_t i = 0; i < n && !s->stop; i += cp.n_batch) {
        int T = (int)KVS_MIN((int64_t)cp.n_batch, n - i);
        uint64_t a = kvs_now_ns();
        if ((st = kvs_ctx_eval(ctx, toks + i, T, NULL)) != KVS_OK) { logf_(s, 2, "%s", kvs_ctx_error(ctx)); goto end; }
        if (ref_ctx && kvs_ctx_eval(ref_ctx, toks + i, T, NULL) != KVS_OK) {
            logf_(s, 1, "reference run failed: %s", kvs_ctx_error(ref_ctx));
            kvs_ctx_delete(ref_ctx); ref_ctx = NULL;
        }
        struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
        if (!r) continue;
        struct kvs_rec_step *sr = &r->u.step;
        sr->step = n_steps++;
        sr->kind = KVS_STEP_PREFILL;
        sr->n_new = (uint32_t)T;
        sr->n_ctx = (uint32_t)kvs_ctx_n_past(ctx);
        sr->token = toks[i + T - 1];
        sr->t_start_ns = a - s->t0;
        sr->t_end_ns = kvs_now_ns() - s->t0;
        fill_step(s, press, ctx, sr, prev);
        emit(s, r);
        drain_profiler(s, prof);
    }
    prefill_s = (double)(kvs_now_ns() - tp0) / 1e9;
    kvs_ctx_set_hook(ctx, NULL, NULL);
    if (s->p.similarity && s->sim_x) {
        emit_sim_matrix(s, KVS_MAT_SIM_HIDDEN, s->sim_x, (int)hp->n_embd);
        emit_sim_matrix(s, KVS_MAT_SIM_KEYS, s->sim_k, (int)(hp->n_head_kv * hp->head_dim));
    }
    if (s->p.similarity && !s->stop) emit_latent_similarity(s, press, toks, n_prompt);
    if (press->ops->run_records) press->ops->run_records(press, emit_cb, s);

    /* decode */
    uint64_t rng = s->p.seed ? s->p.seed : 0x1234567ull;
    struct kvs_quality_acc qa; /* the method against the full run, the same accumulator eval uses */
    memset(&qa, 0, sizeof qa);
    uint64_t td0 = kvs_now_ns();
    for (int i = 0; i < s->p.n_predict && !s->stop; i++) {
        uint64_t a = kvs_now_ns();
        const float *lg = kvs_ctx_logits(ctx);
        /* with a reference, the full run chooses the token and both runs read it (teacher forcing):
         * the method is scored on the reference's continuation, never on its own output */
        int32_t id = kvs_sample(ref_ctx ? kvs_ctx_logits(ref_ctx) : lg, (int)hp->n_vocab, s->p.temp, s->p.top_p, &rng);
        float lp = kvs_logprob(lg, (int)hp->n_vocab, id);
        if (kvs_tokenizer_is_eog(m->tok, id)) break; /* no token: nothing to score */
        struct kvs_record *r = kvs_record_new(KVS_REC_STEP, 0);
        /* KL(full || method), top-1 agreement and both perplexities on the same prefix */
        if (ref_ctx) kvs_quality_add(&qa, lg, kvs_ctx_logits(ref_ctx), (int)hp->n_vocab, id);
        toks[n++] = id;
        if ((st = kvs_ctx_eval(ctx, &id, 1, NULL)) != KVS_OK) {
            if (r) kvs_record_unref(r);
            logf_(s, 2, "%s", kvs_ctx_error(ctx));
            goto end;
        }
        if (ref_ctx && kvs_ctx_eval(ref_ctx, &id, 1, NULL) != KVS_OK) { kvs_ctx_delete(ref_ctx); ref_ctx = NULL; }
        n_gen++;
        if (!r) continue;
        struct kvs_rec_step *sr = &r->u.step;
        sr->step = n_steps++;
        sr->kind = KVS_STEP_DECODE;
        sr->n_new = 1;
        sr->n_ctx = (uint32_t)kvs_ctx_n_past(ctx);
        sr->token = id;
        int pl = kvs_tokenizer_piece(m->tok, id, sr->piece, KVS_REC_PIECE_MAX - 1);
        sr->piece[pl > 0 ? KVS_MIN(pl, KVS_REC_PIECE_MAX - 1) : 0] = 0;
        sr->logprob = lp;
        sr->valid |= KVS_VALID_LOGPROB;
        if (qa.n) {
            sr->kl = (float)kvs_quality_kl(&qa);
            sr->top1 = (float)kvs_quality_top1(&qa);
            sr->ppl = (float)kvs_quality_ppl(&qa);
            sr->valid |= KVS_VALID_QUALITY;
        }
        sr->t_start_ns = a - s->t0;
        sr->t_end_ns = kvs_now_ns() - s->t0;
        fill_step(s, press, ctx, sr, prev);
        emit(s, r);
        /* the running comparison, both perplexities on the same tokens, every few tokens */
        if (qa.n && qa.n % QUALITY_EVERY == 0) emit_quality(s, press, &qa, (double)(kvs_now_ns() - td0) / 1e9, n_gen);
        drain_profiler(s, prof);
    }
    decode_s = (double)(kvs_now_ns() - td0) / 1e9;
    if (qa.n) emit_quality(s, press, &qa, decode_s, n_gen);
end:;
    if (prof) {
        kvs_profiler_stop(prof);
        drain_profiler(s, prof);
        kvs_profiler_delete(prof);
    }
    if (ctx && s->acts_logged) {
        uint64_t n_acts = kvs_ctx_acts_saturated(ctx);
        if (n_acts > s->acts_logged)
            logf_(s, 1, "activations: %llu values beyond the fp16 range clamped to +-65504 in products in this run",
                  (unsigned long long)n_acts);
    }
    if (ctx && s->cache_logged) {
        uint64_t n_cache = kvs_ctx_cache_saturated(ctx);
        if (n_cache > s->cache_logged)
            logf_(s, 1, "cache: %llu cache values clamped to fp16 range (+-65504) in this run",
                  (unsigned long long)n_cache);
    }
    struct kvs_record *r = kvs_record_new(KVS_REC_END, 0);
    if (r) {
        r->u.end.n_steps = n_steps;
        r->u.end.n_prompt = (uint32_t)n_prompt;
        r->u.end.n_gen = (uint32_t)n_gen;
        r->u.end.prefill_tps = prefill_s > 0 ? (float)(n_prompt / prefill_s) : 0;
        r->u.end.decode_tps = decode_s > 0 ? (float)(n_gen / decode_s) : 0;
        r->u.end.dropped_records = kvs_queue_dropped(s->q);
        emit(s, r);
    }
    kvs_ctx_delete(ref_ctx);
    kvs_press_delete(ref_press);
    kvs_ctx_delete(ctx);
    kvs_press_delete(press);
    free(toks);
    __atomic_store_n(&s->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

enum kvs_status kvs_session_start(struct kvs_session **out, const struct kvs_model *model,
                                  const struct kvs_session_params *p, struct kvs_queue *q, char *err, size_t errlen)
{
    *out = NULL;
    if (p->n_predict < 0 || p->n_predict > (1 << 20) || p->n_ctx <= 0 || p->n_ctx > (1 << 22)) {
        kvs_seterr(err, errlen, "tokens to generate (%d) or context (%d) out of range", p->n_predict, p->n_ctx);
        return KVS_ERR_ARG;
    }
    struct kvs_session *s = calloc(1, sizeof *s);
    if (!s) { kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
    s->model = model;
    s->p = *p;
    s->q = q;
    s->prompt = strdup(p->prompt ? p->prompt : "");
    s->p.prompt = s->prompt;
    if (!s->prompt) { free(s); kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
    if (pthread_create(&s->thread, NULL, session_main, s) != 0) {
        free(s->prompt);
        free(s);
        kvs_seterr(err, errlen, "cannot start the engine thread");
        return KVS_ERR_STATE;
    }
    *out = s;
    return KVS_OK;
}

void kvs_session_stop(struct kvs_session *s)
{
    if (!s) return;
    s->stop = 1;
    /* a consumer that stopped popping must not leave the engine blocked in push_wait */
    while (!__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        if (__atomic_load_n(&s->done, __ATOMIC_ACQUIRE)) break;
        struct kvs_record *r = kvs_queue_pop(s->q, 0);
        if (r) kvs_record_unref(r);
    }
    pthread_join(s->thread, NULL);
    free(s->sim_x);
    free(s->sim_k);
    free(s->prompt);
    free(s);
}

bool kvs_session_done(const struct kvs_session *s) { return __atomic_load_n(&s->done, __ATOMIC_ACQUIRE); }
