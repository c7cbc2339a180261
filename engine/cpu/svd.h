/* CPU reference of the thin SVD (LAPACK sgesdd), twin of kernels/svd.cu (kvs_cuda_svd, cuSOLVER
 * gesvdj). The CPU backend's vtable (engine/backend/backend.c) calls it. Depends on engine/core. */
#ifndef KVS_CPU_SVD_H
#define KVS_CPU_SVD_H

#include "kvs.h"

/* Thin SVD of row-major A (m, n), left untouched: u (m, k), s (k), vt (k, n) row-major, k = min(m, n),
 * s descending. Returns KVS_ERR_ARG for a non-positive or overflowing shape, KVS_ERR_NOMEM when the
 * scratch copy cannot be allocated, KVS_ERR_BACKEND when LAPACK reports a failure. */
enum kvs_status kvs_cpu_svd(const float *a, int m, int n, float *u, float *s, float *vt);

#endif
