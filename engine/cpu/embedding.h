/* CPU twin of kernels/embedding.cu: the token embedding lookup.
 * Depends on engine/model/model.h only. */
#ifndef KVS_CPU_EMBEDDING_H
#define KVS_CPU_EMBEDDING_H

#include <stdint.h>

#include "model.h"

/* out (T, table->cols) fp32 = rows TOKENS (T) of TABLE (n_vocab, D), dequantized. Token ids must
 * already be checked against table->rows. */
void kvs_cpu_embedding(const struct kvs_weight *table, const int32_t *tokens, int T, float *out);

#endif
