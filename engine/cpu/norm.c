/* RMSNorm on the CPU (twin of kernels/norm.cu). The scale is computed in double so that the result
 * does not depend on the order of a parallel reduction. Depends on libc only. */
#include "norm.h"

#include <math.h>
#include <stddef.h>

void kvs_cpu_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void kvs_cpu_rmsnorm_rows(float *out, const float *x, const float *w, int T, int n, float eps)
{
    for (int t = 0; t < T; t++) kvs_cpu_rmsnorm(out + (size_t)t * n, x + (size_t)t * n, w, n, eps);
}
