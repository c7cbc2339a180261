/* CPU twin of kernels/latent_attend.cu: the backend's lat_attend on the CPU (struct
 * kvs_lat_attend_args, engine/backend/backend.h), the attention every live CPU run of commonkv and
 * lowrank uses: fp16 and packed rows, keys rebuilt by the fp32, bf16 or int8 kernel the args name,
 * a fused online-softmax decode and a materialising path for query chunks, the attention mass.
 * Depends on backend.h and threads.h; never prints. */
#ifndef KVS_CPU_LATENT_ATTEND_H
#define KVS_CPU_LATENT_ATTEND_H

#include "backend.h"
#include "threads.h"

/* Queries per call up to which attention runs fused (one pass over the rows, nothing the size of
 * the context materialised); longer chunks rebuild every row's keys once and reuse them. */
#define KVS_LAT_FUSED_T 4

/* Attention over latent segment rows in host memory, threaded on POOL (may be NULL). Q, OUT (T,
 * n_head*head_dim) host; MASS (rows of all segments, in order) host or NULL, overwritten. The
 * result does not depend on POOL's thread count. Returns KVS_ERR_ARG for inconsistent shapes,
 * KVS_ERR_NOMEM when scratch cannot be allocated (OUT then unspecified). */
enum kvs_status kvs_cpu_lat_attend(struct kvs_pool *pool, const struct kvs_lat_attend_args *a, const float *q,
                                   float *out, float *mass);

#endif
