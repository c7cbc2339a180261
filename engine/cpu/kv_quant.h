/* CPU twins of kernels/kv_quant.cu: the quantized K/V pool (struct kvs_kvq_rows, engine/backend/backend.h)
 * in host memory: KIVI packing of the oldest fp16 rows into a block, attention over packed blocks
 * and the fp16 tier with the attention mass by position, eviction with re-encoding of blocks that
 * lose tokens, and the snapkv eviction scores. Depends on backend.h (types) only. */
#ifndef KVS_CPU_KV_QUANT_H
#define KVS_CPU_KV_QUANT_H

#include "backend.h"

/* Same contracts as the vtable entries (kvq_*); POOL (threads) may be NULL. KVS_ERR_NOMEM when
 * memory runs out (L keeps its contents), KVS_ERR_ARG for inconsistent shapes or room. */
enum kvs_status kvs_cpu_kvq_grow(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, int tq_cap, size_t kq_cap,
                                 int n_score);
enum kvs_status kvs_cpu_kvq_quantize(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f);
enum kvs_status kvs_cpu_kvq_attend(struct kvs_pool *pool, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                   const struct kvs_kv_attend_args *a, const float *q, float *out, bool score);
enum kvs_status kvs_cpu_kvq_compact(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, const uint8_t *keep);
enum kvs_status kvs_cpu_kvq_read(const struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, uint8_t *kq, uint8_t *vq,
                                 int32_t *pq);
enum kvs_status kvs_cpu_kvq_scores(struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f, int n_ctx, int kernel,
                                   float *pooled);

#endif
