/* Attention over an fp16 K/V cache (shared by the full press and the methods that keep K/V):
 * scores, softmax and weighted sum for grouped-query heads, threaded over (token, head).
 * Depends on threads and libc; SIMD with F16C/FMA when built for it. */
#ifndef KVS_ATTN_H
#define KVS_ATTN_H

#include "threads.h"

struct kvs_attn_args {
    int T;                  /* query tokens */
    int n_head, n_head_kv, head_dim;
    const float *q;         /* (T, n_head*head_dim), after RoPE */
    float *out;             /* (T, n_head*head_dim) */
    const int32_t *qpos;    /* (T) query positions */
    int n_keys;             /* cached tokens */
    const uint16_t *k, *v;  /* (n_keys, n_head_kv*head_dim) fp16, keys after RoPE */
    const int32_t *kpos;    /* (n_keys) positions, or NULL when key j sits at position j */
    float *probs;           /* optional (T, n_head, n_keys) attention weights out (eviction scores) */
};

/* out = softmax(q·kᵀ/√d with a causal mask on positions)·v. Returns false on allocation failure. */
bool kvs_attn_f16(struct kvs_pool *pool, const struct kvs_attn_args *a);

/* ROW[x] = exp(ROW[x] - MX) over N entries (0 where ROW[x] is -inf); returns their sum. Vectorised
 * exp (relative error below 4e-6) where the build has AVX2/FMA. */
double kvs_exp_row(float *row, int n, float mx);

/* Row conversions fp32 <-> fp16 (vectorised when available). */
void kvs_f32_to_f16_row(const float *src, uint16_t *dst, int n);
void kvs_f16_to_f32_row(const uint16_t *src, float *dst, int n);

#endif
