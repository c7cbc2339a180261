/* CommonKV offline work (DESIGN.md §3 steps 1-4): layer groups, stacked K/V weights, thin SVD with
 * the sqrt(Sigma) split, optional whitening from calibration activations, rank planning for a
 * target compression ratio, the on-disk factor cache and the spectra records. The online latent
 * cache lives in commonkv_press.c. Depends on model.h, record.h, press.h and LAPACKE; never on
 * the UI. */
#ifndef KVS_COMMONKV_H
#define KVS_COMMONKV_H

#include "press.h"

#define KVS_CKV_MAX_G 16 /* largest group size */

/* Factors of every group at the group's full rank (r_max = min(2*nl*d_kv, D)); a press keeps the
 * leading r columns. Truncating the SVD keeps the best rank-r approximation, so one factorization
 * serves every rank. */
struct kvs_ckv_factors {
    uint32_t n_layer, n_embd, d_kv;   /* N, D, n_kv*d */
    uint32_t group_size, n_groups;    /* G, ceil(N/G) */
    bool whitened;
    uint64_t model_key;               /* identity of the model file (see kvs_ckv_model_key) */
    uint64_t calib_key;               /* identity of the calibration statistics; 0 without */
    uint32_t g_l0[KVS_MAX_GROUPS], g_nl[KVS_MAX_GROUPS]; /* first layer and layers of each group */
    uint32_t r_max[KVS_MAX_GROUPS];
    float *sigma[KVS_MAX_GROUPS];     /* (r_max) singular values, descending */
    float *A[KVS_MAX_GROUPS];         /* (r_max, D) row i = sqrt(s_i) v_i^T (times S^-1 when whitened);
                                       * a press's own factors keep only its first rank rows */
    float *B[KVS_MAX_GROUPS];         /* (2*nl*d_kv, r_max) = U sqrt(S): K rows of l0.., then V rows;
                                       * NULL in a press's own factors (it keeps per-layer copies) */
    double svd_seconds;
    bool from_cache;
};

void kvs_ckv_factors_delete(struct kvs_ckv_factors *f);

/* Thin SVD of one stacked matrix M (rows x D, row-major, fp32) in double precision, with the
 * sqrt(Sigma) split: A (k x D) and B (rows x k), k = min(rows, D), sigma (k). When L (D x D,
 * lower-triangular, row-major, may be NULL) is given, the SVD is of M*L and A = sqrt(S) V^T L^-1
 * (whitening: L L^T = X^T X). All outputs are malloc'd; the caller frees them. */
enum kvs_status kvs_ckv_svd(const float *M, int rows, int D, const double *L, float **A, float **B, float **sigma,
                            char *err, size_t errlen);

/* Cholesky factor L of XtX + eps*trace/D*I (D x D, double, row-major), lower; malloc'd. */
enum kvs_status kvs_ckv_cholesky(const double *xtx, int D, double eps, double **L, char *err, size_t errlen);

/* Factorizes every group of MODEL with group size G. XTX: NULL, or per group a (D x D) sum of
 * x x^T over calibration inputs of the group's layers (whitening). Reports progress before each
 * group; a PROGRESS that returns false cancels (KVS_ERR_CANCELLED, nothing built). */
enum kvs_status kvs_ckv_factors_build(struct kvs_ckv_factors **out, const struct kvs_model *m, uint32_t G,
                                      double *const *xtx, uint64_t calib_key, kvs_progress_fn progress,
                                      void *ud, char *err, size_t errlen);

/* Identity of a model file: its size, its mtime and an FNV-1a hash of 64 KiB sampled at 16 evenly
 * spaced offsets of the mapping (the whole file when smaller). */
uint64_t kvs_ckv_model_key(const struct kvs_model *m);

/* Default cache folder: $XDG_CACHE_HOME/kvscope, else $HOME/.cache/kvscope (written into buf). */
void kvs_ckv_cache_dir_default(char *buf, size_t cap);

/* Factor cache on disk (factors_cache.c). A file holds one factorization: header (magic, version,
 * shapes, keys), payload, CRC32 of both. Load returns KVS_ERR_FORMAT for a corrupt or truncated
 * file and KVS_ERR_STATE for a stale one (keys or shapes differ); both mean "rebuild". */
void kvs_ckv_cache_path(char *buf, size_t cap, const char *dir, uint64_t model_key, uint32_t G, bool whiten,
                        uint64_t calib_key);
enum kvs_status kvs_ckv_cache_save(const struct kvs_ckv_factors *f, const char *path, char *err, size_t errlen);
enum kvs_status kvs_ckv_cache_load(struct kvs_ckv_factors **out, const char *path, uint64_t model_key, uint32_t G,
                                   bool whiten, uint64_t calib_key, uint32_t n_layer, uint32_t D, uint32_t d_kv,
                                   char *err, size_t errlen);

/* Loads the factors from CACHE_DIR ("" disables) or builds and saves them. A corrupt or stale file
 * is rebuilt and overwritten. WHITEN: calibrate on KVS_CKV_CALIB_TEXT first (only when the cache
 * misses; the key covers the calibration tokens). WARN (may be NULL) receives a note when the cache
 * could not be used. */
enum kvs_status kvs_ckv_factors_get(struct kvs_ckv_factors **out, const struct kvs_model *m, uint32_t G, bool whiten,
                                    const char *cache_dir, kvs_progress_fn progress, void *ud, char *warn,
                                    size_t warnlen, char *err, size_t errlen);

/* ---- calibration on the loaded model (commonkv_calib.c) ----
 * The calibration text is another document than the default evaluation text (GPL-3). */
#define KVS_CKV_CALIB_TEXT "/usr/share/common-licenses/Apache-2.0"
#define KVS_CKV_CALIB_TOKENS 512
/* Tokens of the text at PATH (BOS first when the model adds one), at most N_MAX; malloc'd. */
enum kvs_status kvs_ckv_calib_tokens(const struct kvs_model *m, const char *path, int n_max, int32_t **ids, int *n,
                                     char *err, size_t errlen);
uint64_t kvs_ckv_calib_key(const int32_t *ids, int n);
/* Per group, the (D x D) sum of xn xn^T over the tokens and the group's layers (double). Free with
 * kvs_ckv_calib_free. PROGRESS (may be NULL) between batch-size chunks; false cancels
 * (KVS_ERR_CANCELLED). */
enum kvs_status kvs_ckv_calib_xtx(const struct kvs_model *m, uint32_t G, const int32_t *ids, int n, double ***out,
                                  kvs_progress_fn progress, void *ud, char *err, size_t errlen);
void kvs_ckv_calib_free(double **xtx, uint32_t n_groups);
/* Per-layer key sensitivity: perplexity rise on IDS when that layer's keys get Gaussian noise of
 * NOISE times their rms (floored at 0.1% of the base perplexity). SENS: n_layer floats. N_THREADS:
 * as kvs_ctx_params (0: every core); the result does not depend on it. */
enum kvs_status kvs_ckv_sensitivity(const struct kvs_model *m, const int32_t *ids, int n, float noise, int n_threads,
                                    float *sens, double *ppl_base, kvs_progress_fn progress, void *ud, char *err, size_t errlen);

/* One MATRIX record (KVS_MAT_SPECTRUM, rows = 1) per group with its singular values. Returns the
 * number of records written into recs (at most cap); each carries one reference for the caller. */
int kvs_ckv_spectrum_records(const struct kvs_ckv_factors *f, struct kvs_record **recs, int cap);

/* Share of the mergeable slots a target-CR plan merges by default (see kvs_ckv_plan); --merge-share
 * overrides it. Measured with `kvscope eval --methods commonkv --cr 0.5,0.7` on SmolLM2-135M (G=4,
 * GPL-3, 1024 tokens, floor 0.45, per-step cap), ppl / KL (achieved CR) at CR 0.5 ; 0.7:
 *   0.25: 34.79 / 0.739 (0.474) ; 57.24 / 1.280 (0.685)    0.4: 32.47 / 0.667 ; 47.96 / 1.109
 *   0.6:  26.12 / 0.421 (0.481) ; 39.42 / 0.893 (0.689)    0.8: 22.48 / 0.194 (0.488) ; 36.18 / 0.779 (0.693)
 *   0.9:  20.84 / 0.119 but the floor stops it at CR 0.450 ; 0.675
 * (lowrank: 24.19 / 0.319 ; 38.25 / 0.856). Before the cap and floor, 0.5 was a cliff (ppl 105). */
#define KVS_CKV_MERGE_SHARE 0.8

/* Default similarity floor: a (group, token) slot whose similarity score is below it is never
 * merged, whatever the budget asks (--merge-floor overrides). */
#define KVS_CKV_MERGE_FLOOR 0.45

/* Rank and merge plan for a target compression ratio. Bytes per (group, token): unmerged
 * nl*r*2 (+4 position), merged r*2 (+4), full nl*2*d_kv*2. The method layer (engine/method/) fills
 * the whole plan before the press exists; the press only reads it. */
#define KVS_CKV_PLAN_MAX_CAND 8
struct kvs_ckv_plan {
    uint32_t rank[KVS_MAX_GROUPS];
    float merge_frac;           /* fraction of mergeable (group, token) slots to merge, 0..1 */
    float cr_rank_only;         /* CR with nothing merged */
    float cr_max;               /* CR with every mergeable slot merged (at the planning length) */
    bool reachable;
    char note[200];             /* why a target cannot be met, else empty */
    /* set by the method layer (kvs_method_prepare), read by the press constructor */
    bool merge;                 /* merging on (commonkv with G > 1 and something to merge) */
    float floor;                /* similarity floor of the merge step (-1: none) */
    float cr_final;             /* target on real bytes (<0: none) */
    float cr_merge;             /* target of the merge budget in fp16-equivalent latent bytes (<0: none) */
    uint32_t quant_bits;        /* bits of the packed latents in a composition with quant */
    float merge_w[KVS_MAX_LAYERS]; /* per-layer merge weights (1: uniform) */
    /* the measured search (planner.c); n_cand = 0 when the plan was not searched */
    uint32_t profile;           /* enum kvs_ckv_profile it was made under */
    int n_cand, chosen;         /* candidates scored and the index of the chosen one */
    struct kvs_ckv_cand {
        float share, floor;     /* merge share of the mergeable slots, similarity floor */
        bool by_sim;            /* rank spread over groups by singular energy */
        float kl;               /* mean KL vs full on the calibration continuation (NaN: not run) */
        float cr;               /* CR (real bytes) the scored calibration tokens attended over */
    } cand[KVS_CKV_PLAN_MAX_CAND];
    int cal_tokens, cal_scored; /* calibration prefix and scored tokens of the search */
    bool from_cache;            /* the search's result came from the plan cache */
    char why[240];              /* one line: the candidates and their KL, or why none were measured */
};
/* Plans ranks for CFG (explicit rank, rank ratio, or derived from target_cr) at a context of
 * N_CTX tokens (the protected sinks and recent window limit merging). When cfg->rank_by_similarity
 * the total rank is spread over groups by water-filling their normalised singular energies. Fills
 * the rank and merge fields only; the method layer sets the rest. */
void kvs_ckv_plan(const struct kvs_ckv_factors *f, const struct kvs_method_config *cfg, int n_ctx,
                  struct kvs_ckv_plan *plan);

/* Per-layer merge weights (sensitivities from `kvscope calibrate`): a text file of "layer value"
 * lines (# comments). Missing layers get 1. Returns KVS_ERR_IO/KVS_ERR_FORMAT with a message. */
enum kvs_status kvs_ckv_weights_load(const char *path, float *w, int n_layer, char *err, size_t errlen);
enum kvs_status kvs_ckv_weights_save(const char *path, const float *w, int n_layer, const char *model_name,
                                     char *err, size_t errlen);

/* Creates the commonkv press (also the latent part of compositions with quant and snapkv) and the
 * lowrank press (G = 1, no merging) from FACTORS and PLAN made beforehand by the method layer
 * (kvs_method_prepare): the constructor only allocates and copies, it runs no calibration, SVD or
 * file I/O. TAKE: the press owns FACTORS (and trims them to what decoding needs); else they are
 * borrowed and must outlive the press. On failure a taken FACTORS is freed too. */
enum kvs_status kvs_press_commonkv_create(struct kvs_press **out, const struct kvs_model *m,
                                          const struct kvs_method_config *cfg, int n_ctx_max,
                                          struct kvs_ckv_factors *factors, bool take,
                                          const struct kvs_ckv_plan *plan, char *err, size_t errlen);
/* The plan the press runs with (ranks, merge fraction, reachability note). */
const struct kvs_ckv_plan *kvs_press_commonkv_plan(const struct kvs_press *p);
/* The grouped factors a CommonKV press (alone or in a composition) runs with; NULL for any other
 * press. Owned by the press. */
const struct kvs_ckv_factors *kvs_press_commonkv_factors(const struct kvs_press *p);

/* Fills the plan fields of a RUN record (merge share, floor, note) from a commonkv/lowrank press;
 * NaN and "" for any other press. */
void kvs_press_commonkv_run_fields(const struct kvs_press *p, struct kvs_rec_run *run);

/* Why a press cannot reach its target CR (or another caveat of its plan); "" when none. */
const char *kvs_press_note(const struct kvs_press *p);

#endif
