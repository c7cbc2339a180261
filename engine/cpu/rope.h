/* CPU twin of kernels/rope.cu: rotary position embedding, and the model's inverse frequencies
 * (llama3 / linear scaling) that both sides use.
 * Depends on engine/model/model.h (hyper-parameters) only. */
#ifndef KVS_CPU_ROPE_H
#define KVS_CPU_ROPE_H

#include <stdbool.h>
#include <stdint.h>

struct kvs_hparams;

/* Rotates N_HEADS heads of width HEAD_DIM at position POS in place. FREQS: (head_dim/2) inverse
 * frequencies (llama3 scaling already applied); NEOX: pairs (i, i+d/2) instead of (2i, 2i+1). */
void kvs_cpu_rope(float *x, int n_heads, int head_dim, int32_t pos, const float *freqs, bool neox);
/* The same for T tokens: x (T, n_heads, head_dim), token t at pos[t]. */
void kvs_cpu_rope_rows(float *x, int T, int n_heads, int head_dim, const int32_t *pos, const float *freqs,
                       bool neox);
/* Inverse frequencies for the model (head_dim/2 floats, malloc'd; caller frees; NULL when out of
 * memory). */
float *kvs_rope_freqs(const struct kvs_hparams *hp);

#endif
