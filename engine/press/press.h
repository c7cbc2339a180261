/* KV-cache methods ("presses", DESIGN.md §5) on one interface. The forward pass hands each layer's
 * new tokens to the press and asks it for attention; the press owns all cache memory and counts
 * its bytes. Depends on engine/model/model.h, engine/core/record.h. */
#ifndef KVS_PRESS_H
#define KVS_PRESS_H

#include "model.h"
#include "record.h"

enum kvs_method_bit {
    KVS_M_FULL = 1u << 0,
    KVS_M_COMMONKV = 1u << 1,
    KVS_M_LOWRANK = 1u << 2,
    KVS_M_MINICACHE = 1u << 3,
    KVS_M_QUANT = 1u << 4,
    KVS_M_SNAPKV = 1u << 5,
    KVS_M_STREAMING = 1u << 6,
};

#define KVS_CR_NONE (-2.0f) /* target_cr: explicitly no target (rank and merge share alone decide) */

enum kvs_sim_mode { KVS_SIM_FIRST_LAST = 0, KVS_SIM_ADJ_MEAN = 1 };
enum kvs_merge_weights { KVS_MERGE_UNIFORM = 0, KVS_MERGE_SENSITIVITY = 1 };

struct kvs_method_config {
    char spec[64];          /* as given, e.g. "commonkv+quant+snapkv" */
    uint32_t methods;       /* kvs_method_bit mask */
    float target_cr;        /* fraction of full fp16 KV bytes removed; <0: unset (a bare commonkv
                             * then aims at 0.5), KVS_CR_NONE: no target at all */
    /* commonkv / lowrank */
    uint32_t group_size;    /* G, default 4 */
    float rank_ratio;       /* rank = ratio * D when rank == 0; 0: derived from target_cr */
    uint32_t rank;          /* explicit rank per group; 0: use rank_ratio */
    uint32_t sinks, recent; /* never merged: first SINKS, last RECENT tokens (4, 128) */
    uint32_t sim_mode;      /* enum kvs_sim_mode */
    uint32_t merge_weights; /* enum kvs_merge_weights */
    bool whiten;
    bool rank_by_similarity;
    float merge_share;      /* share of the mergeable (group, token) slots merged at most: with a
                             * target and no rank it also sets the rank (the rest of the saving);
                             * with a rank it caps merging, with or without a target; <0: default */
    float merge_floor;      /* a (group, token) slot whose similarity score (cosine, -1..1) is below
                             * this is never merged; -1: no floor; NaN (default): the plan's
                             * choice (KVS_CKV_MERGE_FLOOR unless the planner measured another) */
    uint32_t ckv_keys;      /* enum kvs_ckv_keys: the key-rebuild kernel (AUTO: bf16 where built,
                             * else fp32; a kernel this build lacks falls back the same way) */
    /* quant */
    uint32_t quant_bits;    /* 2, 4, 8 */
    uint32_t quant_group;   /* elements per quantization group (32) */
    uint32_t quant_residual;/* fp16 recent tokens (128) */
    /* snapkv */
    uint32_t snap_capacity; /* tokens kept per layer (or per (group, token) slot) */
    uint32_t snap_window;   /* observation window (32) */
    uint32_t snap_kernel;   /* pooling kernel (7) */
    /* streaming */
    uint32_t stream_sinks, stream_window;
    /* minicache */
    uint32_t mc_start_layer; /* 0: n_layer/2 */
    float mc_t, mc_threshold;
    /* where offline factors are cached ("" disables the cache) */
    char cache_dir[256];
    /* per-layer merge weights measured by `kvscope calibrate` (merge_weights = SENSITIVITY) */
    char merge_weights_file[256];
    /* commonkv / lowrank: how the plan is made (enum kvs_ckv_profile): measured on calibration
     * text (tuned, the default) or the paper's fixed split (--profile paper) */
    uint32_t profile;
    /* tokens the plan is made for (prompt + tokens to generate); 0: the press's capacity */
    int32_t plan_ctx;
};

enum kvs_ckv_profile { KVS_PROFILE_TUNED = 0, KVS_PROFILE_PAPER = 1 };

/* Fills C with defaults for the method SPEC ("full", "commonkv+quant", …; NULL means "full").
 * Returns KVS_ERR_ARG with a message in err for an empty or over-long spec (63 bytes at most), an
 * empty, unknown or repeated component, or a combination kvs_press_new cannot build — all
 * decided from the names alone, so callers check a spec before loading a model. */
enum kvs_status kvs_method_parse(struct kvs_method_config *c, const char *spec, char *err, size_t errlen);

/* Flags a press sets to tell the forward pass what it needs computed. BACKEND_IO: store's xn, k, v
 * and attend's q, out are in the backend's memory (kvs_buf data, device memory for CUDA) and the
 * press hands them to backend entries untouched; without it they are host arrays. */
enum { KVS_PRESS_NEEDS_KV = 1u << 0, KVS_PRESS_NEEDS_XN = 1u << 1, KVS_PRESS_BACKEND_IO = 1u << 2 };

struct kvs_press;
struct kvs_pool;
struct kvs_backend;

struct kvs_press_ops {
    const char *name;
    /* Stores T new tokens of LAYER. pos: (T) absolute positions; xn: (T, D) the layer's normed
     * input; k: (T, n_kv*d) keys after RoPE (NULL unless NEEDS_KV); v: (T, n_kv*d) values. */
    enum kvs_status (*store)(struct kvs_press *p, int layer, int T, const int32_t *pos,
                             const float *xn, const float *k, const float *v);
    /* Attention of T query tokens (already stored) of LAYER: q: (T, n_head*d) after RoPE;
     * out: (T, n_head*d). Token i sees cached tokens with position <= pos[i]. */
    enum kvs_status (*attend)(struct kvs_press *p, int layer, int T, const int32_t *pos,
                              const float *q, float *out);
    /* Called once all layers processed a step (merging, eviction, quantization happen here). */
    enum kvs_status (*end_step)(struct kvs_press *p, int n_ctx);
    /* Fills the cache fields of a step record (bytes, kept, budgets, similarity). */
    void (*fill_record)(const struct kvs_press *p, struct kvs_rec_step *rec);
    /* optional: NULL -> nothing. Publishes run-level records (SVD spectra, latent similarity
     * matrix of the tokens seen so far) through EMIT, which takes over each reference. Called by
     * the session after prefill. */
    void (*run_records)(struct kvs_press *p, void (*emit)(void *ud, struct kvs_record *r), void *ud);
    /* Forgets every token (new sequence); keeps factors. */
    void (*reset)(struct kvs_press *p);
    void (*destroy)(struct kvs_press *p);
    /* optional: NULL -> nothing. Frees what the press keeps in p->be's memory before that backend
     * goes away (the context calls it on delete); the press forgets its tokens. */
    void (*detach)(struct kvs_press *p);
};

struct kvs_press {
    const struct kvs_press_ops *ops;
    const struct kvs_model *model;
    struct kvs_method_config cfg;
    uint32_t needs;                 /* KVS_PRESS_NEEDS_* */
    struct kvs_op_counter *ops_ctr; /* the context's counters (KVS_OP_COUNT), may be NULL */
    struct kvs_pool *pool;          /* the context's thread pool (set by kvs_ctx_new), may be NULL */
    struct kvs_backend *be;         /* the context's backend, owner of the cache pools (set by
                                     * kvs_ctx_new); NULL: the CPU path */
    char err[256];
};

/* Creates the press for CFG over MODEL with room for N_CTX_MAX tokens. Implemented by the method
 * layer (engine/method/method.c): it first runs the offline work (SVD factorization, calibration,
 * the measured plan), reporting progress through PROGRESS (may be NULL), then calls the press's
 * pure constructor. On failure
 * returns an error with a message in err and *out stays NULL. Free with kvs_press_delete.
 * PROGRESS is called between units of offline work (groups, calibration chunks, layers); when it
 * returns false the work stops there and the call returns KVS_ERR_CANCELLED ("cancelled"). */
typedef bool (*kvs_progress_fn)(void *ctx, const char *what, float frac);
enum kvs_status kvs_press_new(struct kvs_press **out, const struct kvs_model *model,
                              const struct kvs_method_config *cfg, int n_ctx_max,
                              kvs_progress_fn progress, void *progress_ctx, char *err, size_t errlen);
void kvs_press_delete(struct kvs_press *p);

#endif
