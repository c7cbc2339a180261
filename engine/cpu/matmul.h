/* CPU twin of kernels/matmul.cu: Y = X · Wᵀ for quantized or float weights, threaded over rows.
 * Depends on engine/model/model.h and engine/core/threads.h. */
#ifndef KVS_CPU_MATMUL_H
#define KVS_CPU_MATMUL_H

#include <stdbool.h>

#include "model.h"
#include "threads.h"

/* Y (T, rows) = X (T, cols) · Wᵀ for a quantized or float weight; threads over rows. Up to 4 rows
 * of X are quantized to 8 bits and dotted with the packed weights (fast, less accurate) unless
 * PRECISE; longer X, or PRECISE, dequantize the weights and run sgemm in fp32. The result does not
 * depend on the pool's thread count. kvs_cpu_matmul is kvs_cpu_matmul_ex without PRECISE. */
void kvs_cpu_matmul(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T);
void kvs_cpu_matmul_ex(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T,
                       bool precise);

#endif
