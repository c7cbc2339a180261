/* Tensor element types: block layouts, dequantization, and the matrix products the forward pass
 * uses (quantized weights times fp32 activations). Depends on libc (and SIMD intrinsics). */
#ifndef KVS_QUANT_H
#define KVS_QUANT_H

#include "kvs.h"

/* Elements per block (1 for F32/F16/BF16) and bytes per block; 0 for an unsupported type. */
uint32_t kvs_type_block_elems(uint32_t type);
uint32_t kvs_type_block_bytes(uint32_t type);
bool kvs_type_supported(uint32_t type);

/* Bytes of N elements of TYPE; false when N is not a whole number of blocks or on overflow. */
bool kvs_type_row_bytes(uint32_t type, uint64_t n, uint64_t *out);

/* Dequantizes N elements (a whole number of blocks) from SRC into DST (fp32). */
void kvs_dequant_row(uint32_t type, const void *src, float *dst, int64_t n);
/* The portable version of kvs_dequant_row (the oracle for the SIMD one); bit-identical results. */
void kvs_dequant_row_scalar(uint32_t type, const void *src, float *dst, int64_t n);

/* fp16/bf16 <-> fp32 scalar conversions (IEEE, round to nearest even). */
float kvs_fp16_to_fp32(uint16_t h);
uint16_t kvs_fp32_to_fp16(float f);
float kvs_bf16_to_fp32(uint16_t h);

/* y[r] = dot(W row r, x) for r in [r0, r1): W has ROWS rows of COLS elements of TYPE.
 * X is fp32 (COLS). Fast path: quantize x once (see kvs_quant_prepare) and use integer dots. */
struct kvs_qvec {
    uint32_t type;      /* activation format matching the weight type (q8_0, q8_k or f32) */
    int64_t n;          /* elements */
    void *data;         /* owned */
    size_t cap;
};
/* Prepares X (n floats) for dots against weights of WTYPE; reuses q->data when large enough.
 * Returns KVS_ERR_NOMEM on allocation failure. */
enum kvs_status kvs_quant_prepare(struct kvs_qvec *q, uint32_t wtype, const float *x, int64_t n);
void kvs_qvec_free(struct kvs_qvec *q);
/* Dot of one weight row (TYPE, n elements) with a prepared vector. */
float kvs_vec_dot(uint32_t wtype, const void *wrow, const struct kvs_qvec *q);
/* The portable kernel behind kvs_vec_dot (the oracle for the SIMD one); same contract. */
float kvs_vec_dot_scalar(uint32_t wtype, const void *wrow, const struct kvs_qvec *q);
/* SIMD level of kvs_vec_dot in this build: "avx512-vnni", "avx2" or "scalar". Static string. */
const char *kvs_quant_simd(void);

/* Quantizes N floats (a whole number of blocks) from SRC into DST in TYPE's ggml layout (round to
 * nearest, no importance weighting). Returns KVS_ERR_ARG for a partial block or a type without a
 * quantizer. DST needs kvs_type_row_bytes(TYPE, N) bytes. */
enum kvs_status kvs_quant_row(uint32_t type, const float *src, void *dst, int64_t n);

#endif
