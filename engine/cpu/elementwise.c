/* Element-wise layer steps on the CPU (twins of kernels/elementwise.cu): one pass each, in the
 * order and precision the forward pass has always used (the CPU output bytes are the reference).
 * Depends on libc/libm only. */
#include "elementwise.h"

#include <math.h>

void kvs_cpu_add_bias(float *y, const float *b, int T, int n)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++) y[(size_t)t * n + i] += b[i];
}

void kvs_cpu_add(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

void kvs_cpu_swiglu(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
