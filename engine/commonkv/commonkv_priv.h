/* Internal pieces shared by the presses other than `full` (commonkv, lowrank, quant, snapkv,
 * streaming, minicache): packed quantization of rows, a RoPE table, and constructors that
 * press.c dispatches to. Not a public interface. Depends on press.h only. */
#ifndef KVS_COMMONKV_PRIV_H
#define KVS_COMMONKV_PRIV_H

#include "commonkv.h"
#include "quant_codec.h"

/* ---- RoPE with a precomputed table (same angles as kvs_cpu_rope) ---- */
struct kvs_rope_table {
    int n_pos, half;
    bool neox;
    float *cs;              /* (n_pos, half, 2): cos, sin */
    float *freqs;           /* (half) inverse frequencies, for growing the table */
};
/* Builds the table for the first N_POS positions; kvs_rope_table_reserve extends it on demand so a
 * huge context capacity costs nothing until it is used. */
enum kvs_status kvs_rope_table_init(struct kvs_rope_table *t, const struct kvs_hparams *hp, int n_pos);
enum kvs_status kvs_rope_table_reserve(struct kvs_rope_table *t, int n_pos);
void kvs_rope_table_free(struct kvs_rope_table *t);
/* Rotates N_HEADS heads of width 2*half at position POS (0 <= pos < n_pos). */
void kvs_rope_table_apply(const struct kvs_rope_table *t, float *x, int n_heads, int32_t pos);

/* The eviction scores (attention mass by position) of GROUP of a commonkv/lowrank press that
 * evicts; NULL otherwise. For tests. */
const float *kvs_press_commonkv_scores(const struct kvs_press *p, int group);

/* ---- constructors (the method layer, engine/method/method.c, dispatches) ---- */
/* The combinations kvs_press_new can build (press.c); KVS_ERR_ARG with a message otherwise. */
enum kvs_status kvs_method_check_combination(uint32_t methods, const char *spec, char *err, size_t errlen);
enum kvs_status kvs_press_full_create(struct kvs_press **out, const struct kvs_model *m,
                                      const struct kvs_method_config *cfg, int n_ctx_max, char *err, size_t errlen);
enum kvs_status kvs_press_kv_create(struct kvs_press **out, const struct kvs_model *m,
                                    const struct kvs_method_config *cfg, int n_ctx_max, char *err, size_t errlen);
enum kvs_status kvs_press_minicache_create(struct kvs_press **out, const struct kvs_model *m,
                                           const struct kvs_method_config *cfg, int n_ctx_max, char *err,
                                           size_t errlen);

const char *kvs_press_minicache_note(const struct kvs_press *p); /* NULL: not minicache */
const char *kvs_press_kv_note(const struct kvs_press *p);        /* NULL: not a K/V press */

/* ---- SnapKV scoring helpers (press_snapkv.c) ----
 * Max-pools SCORE (n, indexed by position) with a window of KERNEL positions into OUT. */
void kvs_snap_pool(const float *score, int n, int kernel, float *out);
/* Chooses which of N candidates to keep: the KEEP largest POOLED scores (ties: later positions).
 * KEEP_MASK (n) receives 1 for kept. */
void kvs_snap_select(const float *pooled, int n, int keep, uint8_t *keep_mask);

/* ---- streaming (press_streaming.c): is position P kept with N tokens seen? ---- */
bool kvs_stream_keep(int32_t p, int n, int sinks, int window);

#endif
