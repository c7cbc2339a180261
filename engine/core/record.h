/* Step records: the immutable facts the engine publishes (DESIGN.md §1). Views, the trace writer
 * and batch output consume them; the trace reader produces them. Plain structs, no pointers into
 * engine state, so this header is all views/ and traces/ need from the engine.
 * Records are heap objects with a reference count: the producer hands one reference to each
 * consumer; the last unref frees. */
#ifndef KVS_RECORD_H
#define KVS_RECORD_H

#include "kvs.h"

#define KVS_MAX_LAYERS 128
#define KVS_MAX_GROUPS 128
#define KVS_REC_PIECE_MAX 32
#define KVS_REC_NAME_MAX 64

enum kvs_rec_type {
    KVS_REC_RUN = 1,     /* run-level: model, method config, backend (starts every run) */
    KVS_REC_STEP = 2,    /* one prefill chunk or one decoded token */
    KVS_REC_MATRIX = 3,  /* similarity matrix or SVD spectrum */
    KVS_REC_QUALITY = 4, /* quality against the full run (eval, A/B) */
    KVS_REC_KERNEL = 5,  /* one GPU activity (CUPTI) */
    KVS_REC_END = 6,     /* run finished (summary) */
    KVS_REC_LOG = 7,     /* status message (progress, degraded profiler, …) */
};

/* Internal per-op counters (always available, CPU and GPU). */
enum kvs_op {
    KVS_OP_MATMUL = 0, /* projections and FFN */
    KVS_OP_ATTN,       /* attention over the cache (incl. key reconstruction) */
    KVS_OP_NORM,       /* RMSNorm */
    KVS_OP_ROPE,
    KVS_OP_STORE,      /* writing K/V or latents into the cache */
    KVS_OP_MERGE,      /* similarity, budget, merge, compaction */
    KVS_OP_QUANT,      /* cache quantization */
    KVS_OP_EVICT,
    KVS_OP_LOGITS,     /* output head */
    KVS_OP_SAMPLE,
    KVS_OP_SVD,        /* offline factorization */
    KVS_OP_FALLBACK,   /* optional backend entries the backend lacks, run on the CPU instead */
    KVS_OP_COUNT
};
const char *kvs_op_name(enum kvs_op op);

/* How CommonKV and lowrank rebuild keys from latents (the method config's ckv_keys, recorded in the
 * RUN record as the kernel that ran). AUTO: bf16 where the build has the kernel, else fp32. */
enum kvs_ckv_keys { KVS_CKV_KEYS_AUTO = 0, KVS_CKV_KEYS_FP32 = 1, KVS_CKV_KEYS_BF16 = 2, KVS_CKV_KEYS_INT8 = 3 };
/* "auto", "fp32", "bf16", "int8"; NULL for a value outside the enum. */
const char *kvs_ckv_keys_name(uint32_t k);
/* Parses one of those names into *OUT; false for anything else. */
bool kvs_ckv_keys_parse(const char *name, uint32_t *out);

struct kvs_op_counter {
    uint64_t ns;    /* wall time */
    uint64_t bytes; /* bytes read + written (estimate from shapes) */
    uint64_t flops;
    uint32_t calls;
};

/* Validity bits: a metric whose bit is clear is shown as n/a, never 0. */
enum {
    KVS_VALID_LAYER_SIM = 1u << 0,
    KVS_VALID_GROUP_SIM = 1u << 1,
    KVS_VALID_BUDGET = 1u << 2,
    KVS_VALID_BYTES = 1u << 3,
    KVS_VALID_QUALITY = 1u << 4,
    KVS_VALID_LOGPROB = 1u << 5,
    KVS_VALID_OPS = 1u << 6,
    KVS_VALID_SPLIT = 1u << 7, /* saved_rank .. saved_evict */
};

struct kvs_rec_run {
    uint32_t run_id;
    char model[KVS_REC_NAME_MAX];    /* general.name or file name */
    char arch[16];                   /* llama, qwen2 */
    char backend[32];                /* cpu, cuda */
    char device[KVS_REC_NAME_MAX];   /* CPU model or GPU name */
    char method[KVS_REC_NAME_MAX];   /* e.g. "commonkv+quant" */
    uint32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_max;
    uint64_t model_bytes;
    /* method configuration (fields irrelevant to the method are 0) */
    float target_cr;                 /* <0: none */
    float rank_ratio;
    uint32_t group_size, n_groups, sinks, recent;
    uint32_t quant_bits, evict_capacity;
    uint32_t group_rank[KVS_MAX_GROUPS];
    uint32_t n_threads;
    uint64_t unix_ns;                /* wall-clock start */
    uint32_t precise;                /* 1: CPU decode on the accurate path (--precise), 0: quantized dots */
    /* the CommonKV plan (NaN / "" for other methods): share of the mergeable slots' bytes merged
     * at most, similarity floor (-1: none), and why the plan is what it is */
    float plan_merge_share, plan_merge_floor;
    char plan_note[200];
    /* the kernel CommonKV/lowrank rebuilt keys with (enum kvs_ckv_keys; KVS_CKV_KEYS_AUTO = 0 for
     * other methods and in older traces) */
    uint32_t ckv_keys;
    /* the weights' device copies: type ("bf16", "fp16"; "" when the backend reads the model's own,
     * as the CPU does) and how many values an fp16 upload clamped to ±65504 */
    char weights[8];
    uint64_t weights_saturated;
    /* how the CommonKV plan was made (NaN-free; "" / 0 for other methods): the profile (0 tuned:
     * measured on calibration text, 1 paper: the paper's fixed split) and why this plan (the
     * candidates scored and their KL, or why none were) */
    uint32_t plan_profile;
    char plan_why[240];
};

enum kvs_step_kind { KVS_STEP_PREFILL = 1, KVS_STEP_DECODE = 2 };

struct kvs_rec_step {
    uint64_t step;          /* 0-based within the run */
    uint32_t kind;          /* enum kvs_step_kind */
    uint32_t n_new;         /* tokens processed in this step */
    uint32_t n_ctx;         /* context length after the step */
    int32_t token;          /* decode: sampled id; prefill: last prompt id */
    char piece[KVS_REC_PIECE_MAX]; /* UTF-8 text of token (decode), NUL-terminated, may be cut */
    uint64_t t_start_ns, t_end_ns; /* monotonic, relative to the run start */
    uint32_t valid;         /* KVS_VALID_* */
    uint32_t n_layer, n_groups;
    /* similarity of the newest tokens' cache entries between layer l and l+1 (cosine, -1..1) */
    float layer_sim[KVS_MAX_LAYERS];
    /* per group: similarity score (mean over held tokens), rank, merged fraction of its tokens */
    float group_sim[KVS_MAX_GROUPS];
    uint32_t group_rank[KVS_MAX_GROUPS];
    float group_merged[KVS_MAX_GROUPS];
    /* per layer: tokens the layer attends to (private + shared - evicted), bytes it holds */
    uint32_t layer_kept[KVS_MAX_LAYERS];
    uint64_t layer_bytes_held[KVS_MAX_LAYERS];
    /* whole cache: full fp16 bytes of the same tokens, bytes held, bytes allocated */
    uint64_t bytes_full, bytes_held, bytes_alloc;
    /* offline factors the press keeps for decoding (CommonKV/lowrank A, B): not cache, but memory
     * the method costs; 0 for presses without */
    uint64_t bytes_factors;
    float cr_target, cr_achieved; /* CR = 1 - held/full */
    float logprob;          /* log p(token) under the run's model */
    float ppl, kl, top1;    /* quality vs full so far, when KVS_VALID_QUALITY */
    struct kvs_op_counter ops[KVS_OP_COUNT];
    /* where the saved bytes came from (KVS_VALID_SPLIT; every compressing press): bytes_full - bytes_held
     * split by stage, undoing them last to first: evict (held slots' fp16 cost of the evicted
     * slots), quant (packed rows against the same rows in fp16), merge (each merged slot's other
     * layers' rows), rank (full fp16 K+V against one unmerged latent row per layer and token,
     * positions included: negative when the latents are the larger). K/V presses (quant, snapkv,
     * streaming): rank and merge 0, the kept tokens' positions charged to evict, else quant */
    int64_t saved_rank, saved_merge, saved_quant, saved_evict;
    /* the card the run computes on (all 0 on the CPU and in older traces; dev_mem_total 0: not
     * measured), at the end of the step: its memory in use by every process and its size; the cache
     * storage this run's backend holds in device memory (pools grown by its own entries, positions
     * included; pools left in host memory are not in it); activation values fp16 products clamped
     * to ±65504 since the run started (0 with bf16 weights) */
    uint64_t dev_mem_used, dev_mem_total, dev_pool_bytes;
    uint64_t acts_saturated;
    /* values the fp16 caches (K/V rows, fp16 latents, MiniCache's merged rows) clamped to ±65504
     * instead of storing ±inf, since the run started, on any backend (0 in older traces) */
    uint64_t cache_saturated;
};

enum kvs_matrix_kind {
    KVS_MAT_SIM_HIDDEN = 1, /* layer x layer cosine similarity of hidden states */
    KVS_MAT_SIM_KEYS = 2,   /* of raw (pre-RoPE) keys */
    KVS_MAT_SIM_LATENT = 3, /* of CommonKV latents (within groups; others NaN) */
    KVS_MAT_SPECTRUM = 4,   /* singular values of a group's stacked weights: rows=1 */
};

struct kvs_rec_matrix {
    uint32_t kind;      /* enum kvs_matrix_kind */
    uint32_t group;     /* spectrum: group index */
    uint32_t rows, cols;
    float v[];          /* rows*cols, row-major */
};

struct kvs_rec_quality {
    char method[KVS_REC_NAME_MAX];
    float target_cr, achieved_cr;
    float ppl, ppl_full, kl, top1;
    float passkey_acc;      /* NaN when not measured */
    float decode_tps;
    uint32_t n_tokens;
};

struct kvs_rec_kernel {
    char name[KVS_REC_NAME_MAX];
    uint32_t kind;          /* 1 kernel, 2 memcpy, 3 memset, 4 runtime API */
    uint32_t stream;
    uint64_t start_ns, end_ns;
    uint64_t bytes;
};

struct kvs_rec_end {
    uint64_t n_steps;
    uint32_t n_prompt, n_gen;
    float prefill_tps, decode_tps;
    uint64_t dropped_records; /* records a full queue dropped */
};

struct kvs_rec_log {
    uint32_t level;         /* 0 info, 1 warn, 2 error */
    char text[160];
};

struct kvs_record {
    uint32_t type;          /* enum kvs_rec_type */
    uint32_t bytes;         /* size of this allocation */
    uint64_t seq;           /* producer sequence number */
    int refs;               /* atomic reference count */
    union {
        struct kvs_rec_run run;
        struct kvs_rec_step step;
        struct kvs_rec_quality quality;
        struct kvs_rec_kernel kernel;
        struct kvs_rec_end end;
        struct kvs_rec_log log;
        struct kvs_rec_matrix matrix; /* flexible: allocated with room for its floats */
    } u;
};

/* Allocates a zeroed record of TYPE with one reference; MATRIX_FLOATS is the number of floats for
 * a matrix record (0 otherwise). Returns NULL on allocation failure. */
struct kvs_record *kvs_record_new(uint32_t type, uint32_t matrix_floats);
/* Deep copy with one reference (NULL on failure). */
struct kvs_record *kvs_record_clone(const struct kvs_record *r);
struct kvs_record *kvs_record_ref(struct kvs_record *r);
void kvs_record_unref(struct kvs_record *r);

#endif
