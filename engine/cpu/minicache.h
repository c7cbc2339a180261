/* CPU twins of kernels/minicache.cu: MiniCache's merged layer pairs (struct kvs_mc_rows,
 * engine/backend/backend.h) in host memory beside the unmerged rows of a K/V cache pool: growth,
 * per-token distance of two layers' rows, SLERP merge, attention over unmerged and merged rows,
 * reads. Same contracts as the backend's mc_* entries; KVS_ERR_NOMEM when memory runs out (P
 * keeps its rows and capacity), KVS_ERR_ARG for inconsistent shapes. mc_merge saturates its fp16
 * directions and norms at ±65504 and adds the values it clamped to P->clamped. Depends on
 * backend.h only. */
#ifndef KVS_CPU_MINICACHE_H
#define KVS_CPU_MINICACHE_H

#include "backend.h"

enum kvs_status kvs_cpu_mc_grow(struct kvs_mc_rows *P, int nkv, int d, int cap);
enum kvs_status kvs_cpu_mc_score(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, int nkv, int d,
                                 const int32_t *idx, int m, float *dist, double *dots);
enum kvs_status kvs_cpu_mc_merge(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, struct kvs_mc_rows *P,
                                 int nkv, int d, float t, const int32_t *idx, int m, int keep);
/* POOL (threads) may be NULL. */
enum kvs_status kvs_cpu_mc_attend(struct kvs_pool *pool, const struct kvs_kv_rows *L, const struct kvs_mc_rows *P,
                                  int side, const struct kvs_kv_attend_args *a, const float *q, float *out);
enum kvs_status kvs_cpu_mc_read(const struct kvs_mc_rows *P, int nkv, int d, int row0, int n, uint16_t *ek,
                                uint16_t *ev, uint16_t *nrm, int32_t *pos);

#endif
