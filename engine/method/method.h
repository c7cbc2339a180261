/* The method layer: the offline work a press needs (CommonKV/lowrank factors with calibration, SVD
 * and the factor cache; merge weights; the plan for the target, measured or the paper's; how a
 * composition's target is split over its parts) runs here, before the press is created, and
 * kvs_press_new (declared in press.h) lives here. Presses never include this header, so the calls
 * go one way: method -> calibration/forward pass -> presses. */
#ifndef KVS_METHOD_H
#define KVS_METHOD_H

#include "commonkv.h"

/* The paper profile (--profile paper): rank ratio of the shared projection, and the share of the
 * (group, token) slots the released CommonKV code merges (it keeps the 40% least similar apart). */
#define KVS_CKV_PAPER_RANK_RATIO 0.7f
#define KVS_CKV_PAPER_MERGE_SHARE 0.6f

/* Factors and plan of a commonkv/lowrank method CFG (alone or composed with quant and snapkv) at a
 * planning context of N_CTX tokens. *FACTORS: the caller's (kvs_ckv_factors_delete, or hand them to
 * kvs_press_commonkv_create with take). PROGRESS (may be NULL) sees factorization, calibration and
 * the plan search; returning false cancels (KVS_ERR_CANCELLED, nothing kept). */
enum kvs_status kvs_method_prepare(struct kvs_ckv_factors **factors, struct kvs_ckv_plan *plan,
                                   const struct kvs_model *m, const struct kvs_method_config *cfg, int n_ctx,
                                   kvs_progress_fn progress, void *ud, char *err, size_t errlen);

/* ---- the measured plan search (planner.c) ----
 * Calibration text of the search: Python's reference documentation (English technical prose),
 * a different domain from eval's texts (a licence, a C header, Python code, a licence's prose);
 * KVS_CKV_CALIB_TEXT when it is missing. */
#define KVS_PLAN_CALIB_GLOB "/usr/lib/python3*/pydoc_data/topics.py"
#define KVS_PLAN_CAL_PREFIX 256 /* calibration tokens prefilled and compressed once */
#define KVS_PLAN_CAL_SCORED 32  /* then scored teacher-forced against the full cache */

/* Chooses merge share, similarity floor and rank spread for the latent target in LATENT->target_cr
 * (a target in fp16-equivalent latent bytes; LATENT is the method config with the composition's
 * parts) by scoring a handful of candidates on the calibration text, and fills PLAN (ranks, merge
 * fraction, floor, candidates, why) for N_CTX tokens. Results are cached in latent->cache_dir per
 * model, factors and settings; "" disables the cache. BASE: the plan's fixed fields (cr_final,
 * cr_merge, quant_bits, merge_w, merge) that every candidate runs with. */
enum kvs_status kvs_plan_search(struct kvs_ckv_plan *plan, const struct kvs_ckv_plan *base,
                                const struct kvs_model *m, const struct kvs_method_config *latent,
                                const struct kvs_ckv_factors *f, int n_ctx, kvs_progress_fn progress, void *ud,
                                char *err, size_t errlen);

/* Copies what kvs_ckv_plan decides (ranks, merge fraction, reach, note) from SRC into PLAN. */
void kvs_ckv_plan_take(struct kvs_ckv_plan *plan, const struct kvs_ckv_plan *src);

#endif
