/* CPU twins of kernels/kv_pool.cu: the rows of a K/V cache pool (struct kvs_kv_rows,
 * engine/backend/backend.h) in host memory. Depends on backend.h (types) only. */
#ifndef KVS_CPU_KV_POOL_H
#define KVS_CPU_KV_POOL_H

#include "backend.h"

/* The K/V pool twins, host memory; POOL (threads)
 * may be NULL. Same contracts as the vtable entries; KVS_ERR_NOMEM when memory runs out (L keeps
 * its rows and capacity), KVS_ERR_ARG for inconsistent shapes. kv_store saturates at ±65504
 * (kvs_f32_to_f16_row) and adds the values it clamped to L->clamped. */
enum kvs_status kvs_cpu_kv_grow(struct kvs_kv_rows *L, int dkv, int cap);
enum kvs_status kvs_cpu_kv_store(struct kvs_kv_rows *L, int dkv, int T, const int32_t *pos, const float *k,
                                 const float *v);
enum kvs_status kvs_cpu_kv_attend(struct kvs_pool *pool, const struct kvs_kv_rows *L,
                                  const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
enum kvs_status kvs_cpu_kv_compact(struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
enum kvs_status kvs_cpu_kv_read(const struct kvs_kv_rows *L, int dkv, int row0, int n, uint16_t *k, uint16_t *v,
                                int32_t *pos);

#endif
