/* Embedding lookup on the CPU (twin of kernels/embedding.cu): each token's row of the (possibly
 * quantized) table, dequantized to fp32. Depends on model.h (row dequantization). */
#include "embedding.h"

#include <stddef.h>

void kvs_cpu_embedding(const struct kvs_weight *table, const int32_t *tokens, int T, float *out)
{
    for (int t = 0; t < T; t++) kvs_weight_row_f32(table, tokens[t], out + (size_t)t * (size_t)table->cols);
}
