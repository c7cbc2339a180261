/* CPU twin of kernels/norm.cu: RMSNorm, the oracle the CUDA kernel is checked against.
 * Depends on libc only. */
#ifndef KVS_CPU_NORM_H
#define KVS_CPU_NORM_H

/* out (n) = x (n) · rsqrt(mean(x²) + eps) · w (n); the sum of squares in double. OUT may be X. */
void kvs_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* The same for T rows: out (T, n), x (T, n), w (n). */
void kvs_cpu_rmsnorm_rows(float *out, const float *x, const float *w, int T, int n, float eps);

#endif
