/* Tiny random-weight GGUF models for tests: llama or qwen2 architecture, any supported weight type,
 * a byte-level BPE (gpt2) or SentencePiece-style (llama) tokenizer learned from a built-in text,
 * metadata keys and tensor names exactly as llama.cpp writes them. Also a small GGUF byte writer
 * (struct kvs_gbuf) for crafting hostile files. Depends on engine/model/quant.h (quantizers) and libc. */
#ifndef KVS_TINYMODEL_H
#define KVS_TINYMODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

enum kvs_tiny_tok {
    KVS_TINY_TOK_BPE = 0,  /* tokenizer.ggml.model "gpt2": 256 byte tokens + merges + ChatML specials */
    KVS_TINY_TOK_SPM = 1,  /* tokenizer.ggml.model "llama": <unk> <s> </s>, <0x00>..<0xFF>, ▁ pieces */
    KVS_TINY_TOK_NONE = 2, /* no tokenizer.* metadata at all */
};

struct kvs_tiny_opts {
    const char *arch;          /* "llama" (default) or "qwen2" (adds f32 blk.N.attn_{q,k,v}.bias) */
    const char *name;          /* general.name */
    uint32_t version;          /* GGUF version written: 3 (default) or 2 */
    uint32_t alignment;        /* 0: default 32 and no general.alignment key; else written */
    uint32_t n_layer, n_embd, n_head, n_head_kv, n_ff;
    uint32_t n_vocab;          /* 0: exactly the tokenizer's size; larger: padded with unused tokens */
    uint32_t n_ctx;            /* <arch>.context_length */
    uint32_t wtype;            /* enum kvs_ggml_type of the 2D layer weights */
    uint32_t embd_type;        /* token_embd.weight */
    uint32_t out_type;         /* output.weight when not tied */
    bool tied;                 /* true: no output.weight (the model reuses token_embd) */
    float rope_theta;          /* <arch>.rope.freq_base */
    float rms_eps;             /* <arch>.attention.layer_norm_rms_epsilon */
    /* llama3 RoPE scaling: writes <arch>.rope.scaling.{type="llama3",factor,original_context_length,
     * low_freq_factor,high_freq_factor} and the rope_freqs.weight tensor (f32, head_dim/2 divisors). */
    bool rope_llama3;
    float rope_factor, rope_low_freq, rope_high_freq;
    uint32_t rope_orig_ctx;
    int tokenizer;             /* enum kvs_tiny_tok */
    const char *tok_pre;       /* tokenizer.ggml.pre for BPE: "smollm" (default), "default", … */
    uint32_t n_merges;         /* merges learned from the built-in text (default 96) */
    int add_bos;               /* -1: tokenizer default (BPE false, SPM true); 0/1 forced */
    const char *chat_template; /* NULL: ChatML for BPE, [INST] for SPM; "" writes none */
    float weight_std;          /* 2D weights ~ N(0, weight_std) (default 0.02) */
    float embd_std;            /* token embeddings ~ N(0, embd_std) (default 0.02) */
    float norm_jitter;         /* norm weights ~ 1 + N(0, norm_jitter) (default 0.1) */
    float k_bias_shift;        /* qwen2: added to the first attn_k.bias value of every KV head
                                * (default 0); 1e5 puts one of each head's key pairs beyond the fp16
                                * range (wherever RoPE turns it), as the cache's overflow tests need */
    uint64_t seed;
    /* Q4_0 / Q8_0 2D weights as uniformly random blocks (every nibble or byte from the seed, one
     * scale per tensor giving weight_std) instead of quantized Gaussian rows: about 50x faster, so a
     * Llama-3-8B-shaped file (tests/test_bench.c --write-model) is written in seconds; the
     * values are as random and the bytes the engine moves are the same */
    bool random_blocks;
};

/* Fills O with a small valid llama model: 2 layers, n_embd 64, 4 heads, 2 KV heads, n_ff 128,
 * F32 weights, tied embeddings, BPE tokenizer, seed 1. */
void kvs_tiny_defaults(struct kvs_tiny_opts *o);

/* Builds the GGUF file in memory: *OUT is malloc'd (caller frees), *LEN its size. Returns 0, or -1
 * with kvs_tiny_error() saying why (bad shape for the type, unknown arch, out of memory). */
int kvs_tiny_build(const struct kvs_tiny_opts *o, uint8_t **out, size_t *len);
/* Same, written to PATH. */
int kvs_tiny_write(const char *path, const struct kvs_tiny_opts *o);
/* Number of tokens the tokenizer of O has before padding (what n_vocab 0 selects). */
uint32_t kvs_tiny_vocab_size(const struct kvs_tiny_opts *o);
/* The last error of kvs_tiny_build / kvs_tiny_write (static storage). */
const char *kvs_tiny_error(void);
/* The built-in English text the tokenizers are learned from (NUL-terminated). */
const char *kvs_tiny_corpus(void);

/* ---- raw GGUF writing (for crafted and hostile files) ---- */
struct kvs_gbuf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
};
void kvs_gbuf_free(struct kvs_gbuf *b);
void kvs_gbuf_bytes(struct kvs_gbuf *b, const void *p, size_t n);
void kvs_gbuf_u8(struct kvs_gbuf *b, uint8_t v);
void kvs_gbuf_u32(struct kvs_gbuf *b, uint32_t v);
void kvs_gbuf_u64(struct kvs_gbuf *b, uint64_t v);
void kvs_gbuf_f32(struct kvs_gbuf *b, float v);
void kvs_gbuf_str(struct kvs_gbuf *b, const char *s);          /* u64 length + bytes */
void kvs_gbuf_pad(struct kvs_gbuf *b, size_t align);          /* zero bytes up to a multiple */
/* Header: magic "GGUF", version, tensor count, kv count (u64 each for v2/v3). */
void kvs_gbuf_header(struct kvs_gbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
/* One metadata pair of each common type. */
void kvs_gbuf_kv_u32(struct kvs_gbuf *b, const char *key, uint32_t v);
void kvs_gbuf_kv_f32(struct kvs_gbuf *b, const char *key, float v);
void kvs_gbuf_kv_bool(struct kvs_gbuf *b, const char *key, bool v);
void kvs_gbuf_kv_str(struct kvs_gbuf *b, const char *key, const char *v);
void kvs_gbuf_kv_strs(struct kvs_gbuf *b, const char *key, const char *const *v, uint64_t n);
void kvs_gbuf_kv_i32s(struct kvs_gbuf *b, const char *key, const int32_t *v, uint64_t n);
void kvs_gbuf_kv_f32s(struct kvs_gbuf *b, const char *key, const float *v, uint64_t n);
/* One tensor descriptor: name, n_dims, ne[0..n_dims), type, offset in the data section. */
void kvs_gbuf_tensor(struct kvs_gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                     uint32_t type, uint64_t offset);

#endif
