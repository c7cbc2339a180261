/* A loaded model: hyperparameters from GGUF metadata and weight views into the mapping.
 * Depends on engine/model/gguf.h, engine/model/tokenizer.h. Llama family (SmolLM2, Llama 2/3, Mistral) and
 * qwen2 (K/V bias, NEOX RoPE pairing). */
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include "gguf.h"
#include "tokenizer.h"

enum kvs_arch { KVS_ARCH_LLAMA = 1, KVS_ARCH_QWEN2 = 2 };

struct kvs_hparams {
    uint32_t arch;          /* enum kvs_arch */
    uint32_t n_layer;
    uint32_t n_embd;        /* D */
    uint32_t n_head;        /* query heads */
    uint32_t n_head_kv;     /* KV heads */
    uint32_t head_dim;      /* d */
    uint32_t n_ff;
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    float rope_theta;
    float rms_eps;
    bool rope_neox;         /* pairs (i, i+d/2) instead of (2i, 2i+1) */
    /* llama3 RoPE frequency scaling (factor 0: none) */
    float rope_scale_factor, rope_low_freq, rope_high_freq;
    uint32_t rope_orig_ctx;
    const float *rope_factors; /* optional (head_dim/2) frequency divisors (rope_freqs.weight) */
};

/* A weight matrix of ROWS rows (outputs) by COLS (inputs), each row contiguous in TYPE. */
struct kvs_weight {
    uint32_t type;
    int64_t rows, cols;
    const void *data;       /* into the mapping */
    uint64_t row_bytes;
};

struct kvs_layer {
    const float *attn_norm; /* (D) */
    struct kvs_weight wq, wk, wv, wo;   /* (n_head*d, D), (n_kv*d, D), (n_kv*d, D), (D, n_head*d) */
    const float *bq, *bk, *bv;          /* optional biases (qwen2), fp32 */
    const float *ffn_norm;  /* (D) */
    struct kvs_weight w_gate, w_up, w_down; /* (n_ff, D), (n_ff, D), (D, n_ff) */
};

struct kvs_model {
    struct kvs_gguf gguf;
    struct kvs_hparams hp;
    char name[64];
    struct kvs_weight tok_embd;  /* (n_vocab, D) */
    const float *output_norm;    /* (D) */
    struct kvs_weight output;    /* (n_vocab, D); tok_embd when tied */
    struct kvs_layer *layers;    /* n_layer */
    struct kvs_tokenizer *tok;
    float *f32_buf;              /* owned fp32 copies of vectors stored as f16/bf16 */
    uint64_t file_bytes;
};

/* Loads PATH. On failure returns an error with a one-line reason in err (file, field/offset,
 * problem) and *out stays NULL. The model owns its mapping; free with kvs_model_delete. */
enum kvs_status kvs_model_load(struct kvs_model **out, const char *path, char *err, size_t errlen);
void kvs_model_delete(struct kvs_model *m);

/* Reads one row of W as fp32 into dst (cols floats). */
void kvs_weight_row_f32(const struct kvs_weight *w, int64_t row, float *dst);
/* Dequantizes the whole of W into a new (rows x cols) fp32 array; caller frees. NULL on OOM. */
float *kvs_weight_to_f32(const struct kvs_weight *w);

#endif
