/* CPU twin of kernels/attention.cu. Attention over an fp16 K/V cache (shared by the K/V pools and
 * the presses that keep K/V): scores, softmax and weighted sum for grouped-query heads, threaded
 * over (token, head); the backend's reference attention over latents and fp16 segments (attention
 * over latent segment rows is latent_attend.h's).
 * Depends on backend.h (argument types) and threads.h; SIMD with F16C/FMA when built for it. */
#ifndef KVS_CPU_ATTENTION_H
#define KVS_CPU_ATTENTION_H

#include "backend.h"
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

/* Row conversions fp32 <-> fp16 (vectorised when available). fp32 -> fp16 is the cache's store
 * (DESIGN.md §4; issue 13: fp16 saturation is reported, never silent): a value beyond ±65504, ±inf
 * included, is clamped to ±65504 rather than rounded to ±inf (which the next softmax would turn into
 * NaN); NaN stays NaN; every other value gets IEEE round to nearest even, the bytes it always had.
 * Returns how many values were clamped; the device's stores (kernels/internal.cuh, kvs_dev_f2h_sat)
 * give the same bytes and count the same values. */
uint64_t kvs_f32_to_f16_row(const float *src, uint16_t *dst, int n);
/* One value of kvs_f32_to_f16_row; *CLAMPED is incremented when it was clamped. */
uint16_t kvs_f32_to_f16_sat(float f, uint64_t *clamped);
void kvs_f16_to_f32_row(const uint16_t *src, float *dst, int n);

/* Attention over latents / an fp16 K/V cache (the backend's attn_latent and attn_kv16 entries on
 * the CPU); POOL may be NULL. Returns KVS_ERR_NOMEM when scratch cannot be allocated, KVS_ERR_ARG
 * for inconsistent shapes. */
enum kvs_status kvs_cpu_attn_latent(struct kvs_pool *pool, const struct kvs_attn_latent_args *a, const float *q,
                                    float *out);
enum kvs_status kvs_cpu_attn_kv16(struct kvs_pool *pool, const struct kvs_attn_kv16_args *a, const float *q,
                                  float *out);

#endif
