/* The quantized K/V pool (DESIGN.md §4, §5 `quant`, §7): per layer an fp16 tier of the newest rows
 * and packed KIVI blocks, plus snapkv's attention mass by position, in the backend's memory and
 * touched only through its kv_* (fp16 tier) and kvq_* entries. Held and allocated bytes are
 * counted here, in one place. Used by press_kv.c (quant, snapkv, streaming and compositions);
 * depends on backend.h only. */
#ifndef KVS_KVQ_POOL_H
#define KVS_KVQ_POOL_H

#include "backend.h"

struct kvs_kvq_pool {
    struct kvs_backend *be;   /* owner of the storage (not owned; NULL: the CPU path) */
    struct kvs_backend *fbe;  /* backend of the fp16 tier: be when it has the kvq entries, else NULL
                               * (host memory, so that the CPU twins can pack its rows) */
    int n_layer, block;       /* the fp16 tier grows in BLOCK rows */
    int n_score;              /* positions of the attention mass (0: no scores) */
    struct kvs_kvq_fmt f;
    struct kvs_kvq_rows *rows; /* (n_layer) */
    struct kvs_buf stage[2];  /* backend buffers for host arrays on a device backend */
    int32_t *pos;             /* host scratch: the positions of a layer's rows (eviction) */
    int pos_cap;
    float *host[2];           /* host copies of backend arrays for a device backend without kvq entries */
    size_t host_cap[2];
    char err[256];
};

/* Creates an empty pool of N_LAYER layers of DKV-wide rows on BE (may be NULL); packed blocks of
 * GROUP tokens at BITS (2, 4, 8); the fp16 tier grows in BLOCK rows; N_SCORE > 0 keeps the attention
 * mass of positions [0, N_SCORE). Nothing is allocated in the backend until the first store. Free
 * with kvs_kvq_pool_delete while BE is alive. */
enum kvs_status kvs_kvq_pool_new(struct kvs_kvq_pool **out, struct kvs_backend *be, int n_layer, int dkv,
                                 uint32_t bits, uint32_t group, int block, int n_score, char *err, size_t errlen);
void kvs_kvq_pool_delete(struct kvs_kvq_pool *p);

/* Appends T rows to LAYER's fp16 tier: k, v (T, dkv) fp32 host (keys after RoPE), pos (T). */
enum kvs_status kvs_kvq_pool_store(struct kvs_kvq_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                   const float *v);
/* The same with k, v in the backend's memory (kvs_buf data): on a backend with the kvq entries
 * nothing crosses to the host. */
enum kvs_status kvs_kvq_pool_store_buf(struct kvs_kvq_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                       const float *v);
/* KIVI: while the fp16 tier holds RESIDUAL + group rows, its oldest GROUP become a packed block. */
enum kvs_status kvs_kvq_pool_quantize(struct kvs_kvq_pool *p, int layer, int residual);
/* out (T, n_head*head_dim) host = attention of q (T, n_head*head_dim) host over LAYER's rows
 * (query t sees positions <= q_pos[t]); with SCORE the rows' attention mass is added to the
 * layer's score by position. */
enum kvs_status kvs_kvq_pool_attend(struct kvs_kvq_pool *p, int layer, int T, const int32_t *q_pos, int n_head,
                                    int n_head_kv, int head_dim, const float *q, float *out, bool score);
/* The same with q and out in the backend's memory (q_pos stays host). */
enum kvs_status kvs_kvq_pool_attend_buf(struct kvs_kvq_pool *p, int layer, int T, const int32_t *q_pos, int n_head,
                                        int n_head_kv, int head_dim, const float *q, float *out, bool score);
/* Eviction scores: POOLED (n_ctx) host = the layer's score max-pooled over KERNEL positions, -inf
 * where the layer holds no row; the score restarts from zero. */
enum kvs_status kvs_kvq_pool_scores(struct kvs_kvq_pool *p, int layer, int n_ctx, int kernel, float *pooled);
/* Drops LAYER's rows (both tiers) whose KEEP_BY_POS[position] (n_ctx) is 0; packed blocks that lose
 * tokens are re-encoded. Positions >= n_ctx are an error. */
enum kvs_status kvs_kvq_pool_drop(struct kvs_kvq_pool *p, int layer, const uint8_t *keep_by_pos, int n_ctx);
/* Forgets every row and zeroes the scores, keeping the storage for the next sequence. */
enum kvs_status kvs_kvq_pool_reset(struct kvs_kvq_pool *p);

/* Rows held by LAYER: all, in packed blocks, in the fp16 tier. */
int kvs_kvq_pool_rows(const struct kvs_kvq_pool *p, int layer);
int kvs_kvq_pool_rows_packed(const struct kvs_kvq_pool *p, int layer);
/* Bytes held: fp16 K+V rows, packed keys and values, and every row's position (4 bytes). */
uint64_t kvs_kvq_pool_bytes_held(const struct kvs_kvq_pool *p, int layer);
/* The packed blocks alone (keys, values, positions). */
uint64_t kvs_kvq_pool_bytes_packed(const struct kvs_kvq_pool *p, int layer);
/* Everything allocated in the backend for LAYER: both tiers' capacity with positions and the
 * score (the host block table, 12 bytes a block, is bookkeeping like the pool struct). */
uint64_t kvs_kvq_pool_bytes_alloc(const struct kvs_kvq_pool *p, int layer);
/* True when the rows live in the backend's own memory. */
bool kvs_kvq_pool_native(const struct kvs_kvq_pool *p);

#endif
