/* Model loading: architecture and hyperparameters from GGUF metadata, weight views into the
 * mapping with their shapes checked against the hyperparameters (and the tensors present against
 * block_count), and every float value and block scale checked for NaN/Inf.
 * Depends on gguf, quant, tokenizer. */
#include "model.h"
#include "quant.h"
#include "record.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct loader {
    struct kvs_model *m;
    char arch[32];
    char *err;
    size_t errlen;
};

static bool get_u32(struct loader *L, const char *suffix, uint32_t *out, bool required)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    if (kvs_gguf_get_u32(&L->m->gguf, key, out)) return true;
    if (required) {
        const struct kvs_gguf_kv *kv = kvs_gguf_find(&L->m->gguf, key);
        kvs_seterr(L->err, L->errlen, "%s: metadata %s: %s", L->m->gguf.path, key,
                   kv ? "not an unsigned 32-bit value" : "missing");
    }
    return false;
}

static bool get_f32(struct loader *L, const char *suffix, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->arch, suffix);
    return kvs_gguf_get_f32(&L->m->gguf, key, out);
}

/* Binds a 2-D weight: ne[0] == cols (inputs), ne[1] == rows (outputs). */
static bool bind_weight(struct loader *L, struct kvs_weight *w, const char *name, int64_t rows, int64_t cols,
                        bool optional)
{
    const struct kvs_gguf_tensor *t = kvs_gguf_tensor(&L->m->gguf, name);
    if (!t) {
        if (optional) return true;
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: missing", L->m->gguf.path, name);
        return false;
    }
    if (t->n_dims != 2 || (int64_t)t->ne[0] != cols || (int64_t)t->ne[1] != rows) {
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: shape [%llu, %llu] (%u dims), expected [%lld, %lld]",
                   L->m->gguf.path, name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims,
                   (long long)cols, (long long)rows);
        return false;
    }
    if (!kvs_type_supported(t->type)) {
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: type %s is not supported", L->m->gguf.path, name,
                   kvs_ggml_type_name(t->type));
        return false;
    }
    uint64_t rb;
    if (!kvs_type_row_bytes(t->type, (uint64_t)cols, &rb)) {
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: %lld columns is not a whole number of %s blocks",
                   L->m->gguf.path, name, (long long)cols, kvs_ggml_type_name(t->type));
        return false;
    }
    w->type = t->type;
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    w->row_bytes = rb;
    return true;
}

/* Binds a 1-D fp32 vector of N; f16/bf16 are converted into storage appended to *conv. */
static bool bind_vec(struct loader *L, const float **out, const char *name, int64_t n, bool optional,
                     float **conv, size_t *conv_used)
{
    const struct kvs_gguf_tensor *t = kvs_gguf_tensor(&L->m->gguf, name);
    *out = NULL;
    if (!t) {
        if (optional) return true;
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: missing", L->m->gguf.path, name);
        return false;
    }
    if (t->n_dims != 1 || (int64_t)t->ne[0] != n) {
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: shape [%llu] (%u dims), expected [%lld]", L->m->gguf.path,
                   name, (unsigned long long)t->ne[0], t->n_dims, (long long)n);
        return false;
    }
    if (t->type == KVS_GGML_F32) {
        *out = t->data;
        return true;
    }
    if (t->type != KVS_GGML_F16 && t->type != KVS_GGML_BF16) {
        kvs_seterr(L->err, L->errlen, "%s: tensor %s: type %s for a vector (expected F32, F16 or BF16)",
                   L->m->gguf.path, name, kvs_ggml_type_name(t->type));
        return false;
    }
    float *dst = *conv + *conv_used;
    kvs_dequant_row(t->type, t->data, dst, n);
    *conv_used += (size_t)n;
    *out = dst;
    return true;
}

/* Byte offsets of the fp16 scale fields inside one block of TYPE (up to 2; -1 ends the list). */
static void scale_fields(uint32_t type, int f[2])
{
    f[0] = f[1] = -1;
    switch (type) {
    case KVS_GGML_Q4_0: case KVS_GGML_Q5_0: case KVS_GGML_Q8_0: f[0] = 0; break;
    case KVS_GGML_Q4_1: case KVS_GGML_Q5_1: case KVS_GGML_Q4_K: case KVS_GGML_Q5_K: f[0] = 0; f[1] = 2; break;
    case KVS_GGML_Q6_K: f[0] = 208; break;
    }
}

/* Looks for NaN or Inf in a tensor: every value of F32/F16/BF16 tensors, every block scale of the
 * quantized ones (one pass over the mapping, which the first forward pass reads anyway). A NaN
 * there can vanish into an int8 activation scale or a fp16 cache and give finite garbage, so it is
 * refused at load with the tensor's name and the file offset. */
static bool check_finite(struct loader *L, const struct kvs_gguf_tensor *t)
{
    const uint8_t *p = t->data;
    uint64_t bad = UINT64_MAX, at = 0;
    if (t->type == KVS_GGML_F32) {
        for (uint64_t i = 0; i + 4 <= t->nbytes && bad == UINT64_MAX; i += 4) {
            uint32_t u;
            memcpy(&u, p + i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) bad = i / 4, at = i;
        }
    } else if (t->type == KVS_GGML_F16 || t->type == KVS_GGML_BF16) {
        uint16_t mask = t->type == KVS_GGML_F16 ? 0x7c00 : 0x7f80;
        for (uint64_t i = 0; i + 2 <= t->nbytes && bad == UINT64_MAX; i += 2) {
            uint16_t h;
            memcpy(&h, p + i, 2);
            if ((h & mask) == mask) bad = i / 2, at = i;
        }
    } else {
        int f[2];
        scale_fields(t->type, f);
        uint32_t bb = kvs_type_block_bytes(t->type);
        for (uint64_t i = 0; bb && f[0] >= 0 && i + bb <= t->nbytes && bad == UINT64_MAX; i += bb)
            for (int k = 0; k < 2 && f[k] >= 0; k++) {
                uint16_t h;
                memcpy(&h, p + i + (uint64_t)f[k], 2);
                if ((h & 0x7c00) == 0x7c00) { bad = i / bb; at = i + (uint64_t)f[k]; break; }
            }
    }
    if (bad == UINT64_MAX) return true;
    bool scale = t->type != KVS_GGML_F32 && t->type != KVS_GGML_F16 && t->type != KVS_GGML_BF16;
    kvs_seterr(L->err, L->errlen, "%s: offset %llu: tensor %s (%s): %s %llu is NaN or Inf", L->m->gguf.path,
               (unsigned long long)((const uint8_t *)t->data - (const uint8_t *)L->m->gguf.map + at), t->name,
               kvs_ggml_type_name(t->type), scale ? "the scale of block" : "element", (unsigned long long)bad);
    return false;
}

static bool load_rope_scaling(struct loader *L)
{
    struct kvs_hparams *hp = &L->m->hp;
    char key[128], type[32] = "";
    snprintf(key, sizeof key, "%s.rope.scaling.type", L->arch);
    kvs_gguf_get_str(&L->m->gguf, key, type, sizeof type);
    float factor = 0;
    get_f32(L, "rope.scaling.factor", &factor);
    if (strcmp(type, "llama3") == 0) {
        hp->rope_scale_factor = factor > 0 ? factor : 8.0f;
        hp->rope_low_freq = 1.0f;
        hp->rope_high_freq = 4.0f;
        hp->rope_orig_ctx = 8192;
        get_f32(L, "rope.scaling.low_freq_factor", &hp->rope_low_freq);
        get_f32(L, "rope.scaling.high_freq_factor", &hp->rope_high_freq);
        get_u32(L, "rope.scaling.original_context_length", &hp->rope_orig_ctx, false);
    } else if (strcmp(type, "linear") == 0 && factor > 0) {
        /* linear scaling is expressed as low == high == 0 with a factor */
        hp->rope_scale_factor = factor;
        hp->rope_low_freq = hp->rope_high_freq = 0;
    } else if (type[0] && strcmp(type, "none") != 0) {
        kvs_seterr(L->err, L->errlen, "%s: metadata %s: RoPE scaling '%s' is not supported", L->m->gguf.path, key, type);
        return false;
    }
    return true;
}

enum kvs_status kvs_model_load(struct kvs_model **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    struct kvs_model *m = calloc(1, sizeof *m);
    if (!m) {
        kvs_seterr(err, errlen, "%s: out of memory", path);
        return KVS_ERR_NOMEM;
    }
    enum kvs_status st = kvs_gguf_open(&m->gguf, path);
    if (st != KVS_OK) {
        kvs_seterr(err, errlen, "%s", m->gguf.err);
        free(m);
        return st;
    }
    m->file_bytes = m->gguf.size;
    struct loader L = {.m = m, .err = err, .errlen = errlen};
    struct kvs_hparams *hp = &m->hp;
    st = KVS_ERR_FORMAT;
    if (!kvs_gguf_get_str(&m->gguf, "general.architecture", L.arch, sizeof L.arch)) {
        kvs_seterr(err, errlen, "%s: metadata general.architecture: missing", path);
        goto fail;
    }
    if (strcmp(L.arch, "llama") == 0 || strcmp(L.arch, "mistral") == 0) hp->arch = KVS_ARCH_LLAMA;
    else if (strcmp(L.arch, "qwen2") == 0) hp->arch = KVS_ARCH_QWEN2;
    else {
        kvs_seterr(err, errlen, "%s: metadata general.architecture: '%s' is not supported (llama, mistral, qwen2)",
                   path, L.arch);
        st = KVS_ERR_UNSUPPORTED;
        goto fail;
    }
    /* the name is shown in panels, traces and exports: keep the file's bytes on one visible line */
    const struct kvs_gguf_kv *nm = kvs_gguf_find(&m->gguf, "general.name");
    if (nm && nm->type == KVS_GGUF_STRING) {
        kvs_escape(m->name, sizeof m->name, nm->v.str.ptr, (size_t)nm->v.str.len);
    } else {
        const char *base = strrchr(path, '/');
        kvs_escape(m->name, sizeof m->name, base ? base + 1 : path, strlen(base ? base + 1 : path));
    }
    if (!get_u32(&L, "block_count", &hp->n_layer, true) || !get_u32(&L, "embedding_length", &hp->n_embd, true) ||
        !get_u32(&L, "feed_forward_length", &hp->n_ff, true) ||
        !get_u32(&L, "attention.head_count", &hp->n_head, true))
        goto fail;
    hp->n_head_kv = hp->n_head;
    get_u32(&L, "attention.head_count_kv", &hp->n_head_kv, false);
    hp->n_ctx_train = 4096;
    get_u32(&L, "context_length", &hp->n_ctx_train, false);
    const char *bad = NULL;
    if (hp->n_layer == 0 || hp->n_layer > KVS_MAX_LAYERS) bad = "block_count";
    else if (hp->n_embd == 0 || hp->n_embd > 65536) bad = "embedding_length";
    else if (hp->n_ff == 0 || hp->n_ff > 262144) bad = "feed_forward_length";
    else if (hp->n_head == 0 || hp->n_head > 1024 || hp->n_embd % hp->n_head) bad = "attention.head_count";
    else if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv) bad = "attention.head_count_kv";
    if (bad) {
        kvs_seterr(err, errlen, "%s: metadata %s.%s: value out of range for this model (layers %u, embd %u, ff %u, heads %u/%u; at most %d layers)",
                   path, L.arch, bad, hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv, KVS_MAX_LAYERS);
        goto fail;
    }
    /* a block_count smaller than the layers present would silently run a truncated model */
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
        const char *tn = m->gguf.tensors[i].name;
        if (strncmp(tn, "blk.", 4) != 0 || tn[4] < '0' || tn[4] > '9') continue;
        unsigned long long li = strtoull(tn + 4, NULL, 10);
        if (li >= hp->n_layer) {
            kvs_seterr(err, errlen, "%s: metadata %s.block_count is %u but the file holds tensor %s of layer %llu",
                       path, L.arch, hp->n_layer, tn, li);
            goto fail;
        }
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    /* head counts that divide the width but not the tensors would otherwise be blamed on a
     * later key (rope.dimension_count, key_length): name them while the shapes say why */
    const struct kvs_gguf_tensor *k0 = kvs_gguf_tensor(&m->gguf, "blk.0.attn_k.weight");
    if (k0 && k0->n_dims == 2 && k0->ne[1] != (uint64_t)hp->n_head_kv * hp->head_dim) {
        kvs_seterr(err, errlen, "%s: metadata %s.attention.head_count %u and head_count_kv %u give K/V rows of %u, "
                   "but tensor blk.0.attn_k.weight has %llu", path, L.arch, hp->n_head, hp->n_head_kv,
                   hp->n_head_kv * hp->head_dim, (unsigned long long)k0->ne[1]);
        goto fail;
    }
    uint32_t kl = 0;
    if (get_u32(&L, "attention.key_length", &kl, false) && kl != hp->head_dim) {
        kvs_seterr(err, errlen, "%s: metadata %s.attention.key_length: %u differs from embedding/heads %u (unsupported)",
                   path, L.arch, kl, hp->head_dim);
        st = KVS_ERR_UNSUPPORTED;
        goto fail;
    }
    if (hp->head_dim % 2) {
        kvs_seterr(err, errlen, "%s: head dimension %u is odd (RoPE needs pairs)", path, hp->head_dim);
        goto fail;
    }
    uint32_t rope_dim = hp->head_dim;
    if (get_u32(&L, "rope.dimension_count", &rope_dim, false) && rope_dim != hp->head_dim) {
        kvs_seterr(err, errlen, "%s: metadata %s.rope.dimension_count: partial RoPE (%u of %u) is not supported",
                   path, L.arch, rope_dim, hp->head_dim);
        st = KVS_ERR_UNSUPPORTED;
        goto fail;
    }
    hp->rope_theta = 10000.0f;
    get_f32(&L, "rope.freq_base", &hp->rope_theta);
    hp->rms_eps = 1e-5f;
    get_f32(&L, "attention.layer_norm_rms_epsilon", &hp->rms_eps);
    if (!(hp->rope_theta > 0) || !isfinite(hp->rope_theta) || !(hp->rms_eps > 0) || !(hp->rms_eps < 1)) {
        kvs_seterr(err, errlen, "%s: metadata rope.freq_base %g or rms epsilon %g out of range", path,
                   (double)hp->rope_theta, (double)hp->rms_eps);
        goto fail;
    }
    hp->rope_neox = hp->arch == KVS_ARCH_QWEN2;
    if (!load_rope_scaling(&L)) goto fail;

    m->tok = kvs_tokenizer_new(&m->gguf, err, errlen);
    if (!m->tok) goto fail;
    int32_t nv = kvs_tokenizer_n_vocab(m->tok);
    hp->n_vocab = (uint32_t)nv;

    const int64_t D = hp->n_embd, dq = (int64_t)hp->n_head * hp->head_dim, dkv = (int64_t)hp->n_head_kv * hp->head_dim;
    const int64_t F = hp->n_ff, V = hp->n_vocab, NL = hp->n_layer;
    size_t conv_cap = (size_t)(D * (2 * NL + 1) + (dq + 2 * dkv) * NL + hp->head_dim);
    m->f32_buf = malloc(conv_cap * sizeof(float));
    m->layers = calloc((size_t)NL, sizeof *m->layers);
    if (!m->f32_buf || !m->layers) {
        kvs_seterr(err, errlen, "%s: out of memory", path);
        st = KVS_ERR_NOMEM;
        goto fail;
    }
    size_t conv_used = 0;
    if (!bind_weight(&L, &m->tok_embd, "token_embd.weight", V, D, false) ||
        !bind_vec(&L, &m->output_norm, "output_norm.weight", D, false, &m->f32_buf, &conv_used) ||
        !bind_weight(&L, &m->output, "output.weight", V, D, true))
        goto fail;
    if (!m->output.data) m->output = m->tok_embd; /* tied */
    for (int64_t l = 0; l < NL; l++) {
        struct kvs_layer *ly = &m->layers[l];
        char n[96];
#define W(field, nm, r, c) (snprintf(n, sizeof n, "blk.%lld." nm, (long long)l), bind_weight(&L, &ly->field, n, r, c, false))
#define VEC(field, nm, len, opt) (snprintf(n, sizeof n, "blk.%lld." nm, (long long)l), bind_vec(&L, &ly->field, n, len, opt, &m->f32_buf, &conv_used))
        if (!VEC(attn_norm, "attn_norm.weight", D, false) || !W(wq, "attn_q.weight", dq, D) ||
            !W(wk, "attn_k.weight", dkv, D) || !W(wv, "attn_v.weight", dkv, D) ||
            !W(wo, "attn_output.weight", D, dq) || !VEC(ffn_norm, "ffn_norm.weight", D, false) ||
            !W(w_gate, "ffn_gate.weight", F, D) || !W(w_up, "ffn_up.weight", F, D) ||
            !W(w_down, "ffn_down.weight", D, F))
            goto fail;
        bool opt = hp->arch != KVS_ARCH_QWEN2;
        if (!VEC(bq, "attn_q.bias", dq, opt) || !VEC(bk, "attn_k.bias", dkv, opt) || !VEC(bv, "attn_v.bias", dkv, opt))
            goto fail;
#undef W
#undef VEC
    }
    /* llama3-style frequency factors stored as a tensor (llama.cpp writes rope_freqs.weight) */
    const float *rf = NULL;
    if (!bind_vec(&L, &rf, "rope_freqs.weight", hp->head_dim / 2, true, &m->f32_buf, &conv_used)) goto fail;
    hp->rope_factors = rf;
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++)
        if (!check_finite(&L, &m->gguf.tensors[i])) goto fail;
    *out = m;
    return KVS_OK;
fail:
    kvs_model_delete(m);
    return st;
}

void kvs_model_delete(struct kvs_model *m)
{
    if (!m) return;
    if (m->tok) kvs_tokenizer_delete(m->tok);
    free(m->layers);
    free(m->f32_buf);
    kvs_gguf_close(&m->gguf);
    free(m);
}

void kvs_weight_row_f32(const struct kvs_weight *w, int64_t row, float *dst)
{
    kvs_dequant_row(w->type, (const uint8_t *)w->data + (uint64_t)row * w->row_bytes, dst, w->cols);
}

float *kvs_weight_to_f32(const struct kvs_weight *w)
{
    uint64_t n;
    if (!kvs_mul_ok((uint64_t)w->rows, (uint64_t)w->cols, &n) || n > SIZE_MAX / sizeof(float)) return NULL;
    float *f = malloc(n * sizeof(float));
    if (!f) return NULL;
    for (int64_t r = 0; r < w->rows; r++) kvs_weight_row_f32(w, r, f + r * w->cols);
    return f;
}
