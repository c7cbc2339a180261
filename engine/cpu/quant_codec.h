/* CPU twin of kernels/quant_codec.cuh: KIVI-style packed asymmetric quantization (DESIGN.md §5
 * `quant`). Rows are quantized per token in channel groups (values, CommonKV latents); key blocks of
 * T tokens per channel. Codes are packed LSB-first at 2, 4 or 8 bits, each group led by its fp16
 * scale and fp16 minimum. The device functions of the same names (kvs_dev_*) produce the same bytes
 * and values. Depends on engine/model/quant.h (fp16 conversion) only. */
#ifndef KVS_CPU_QUANT_CODEC_H
#define KVS_CPU_QUANT_CODEC_H

#include <stdint.h>

/* ---- packed asymmetric quantization of one row ----
 * N elements in groups of GROUP; each group: fp16 scale, fp16 minimum, then its codes packed
 * LSB-first at BITS (2, 4 or 8) per element, rounded up to whole bytes. */
uint32_t kvs_qrow_bytes(uint32_t n, uint32_t bits, uint32_t group);
void kvs_qrow_encode(const float *x, uint32_t n, uint32_t bits, uint32_t group, uint8_t *dst);
void kvs_qrow_decode(const uint8_t *src, uint32_t n, uint32_t bits, uint32_t group, float *dst);

/* KIVI key block: T tokens x C channels quantized per channel (each channel's T values share a
 * scale and minimum). Bytes: C * (4 + ceil(T*bits/8)). Layout: channel-major. */
uint32_t kvs_qcol_bytes(uint32_t T, uint32_t C, uint32_t bits);
void kvs_qcol_encode(const float *x, uint32_t T, uint32_t C, uint32_t bits, uint8_t *dst);
/* Decodes token t (C values) of a block. */
void kvs_qcol_decode_row(const uint8_t *src, uint32_t T, uint32_t C, uint32_t bits, uint32_t t, float *dst);
/* All T tokens of a column-quantized block, as (T, C) floats (the same values as decode_row). */
void kvs_qcol_decode(const uint8_t *src, uint32_t T, uint32_t C, uint32_t bits, float *dst);

#endif
