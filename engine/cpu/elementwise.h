/* CPU twins of kernels/elementwise.cu: bias add, residual add and SwiGLU, the element-wise steps of
 * a transformer layer. Depends on libc only. */
#ifndef KVS_CPU_ELEMENTWISE_H
#define KVS_CPU_ELEMENTWISE_H

#include <stddef.h>

/* y (T, n) += b (n) broadcast over the T rows. */
void kvs_cpu_add_bias(float *y, const float *b, int T, int n);
/* x (n) += y (n): the residual stream. */
void kvs_cpu_add(float *x, const float *y, size_t n);
/* g (n) = silu(g) · u = g / (1 + e^-g) · u (the gated FFN of Llama-family models). */
void kvs_cpu_swiglu(float *g, const float *u, size_t n);

#endif
