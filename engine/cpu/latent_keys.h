/* CPU latent-key kernels (the key rebuild of the CPU's lat_attend, latent_attend.c, which every
 * CommonKV and lowrank attention on the CPU runs; the device rebuilds keys inside its own kernels,
 * kernels/latent_attend.cu for decode): K = C B^T with bf16 pairs and fp32 accumulation
 * (AVX512_BF16 vdpbf16ps) or int8 quads (VNNI) when the build targets a CPU that has them, RoPE
 * over rows at their own positions, scores and the P·C accumulation of the fused decode. B is
 * packed once per layer (weights); latent rows are converted per call. Depends on kvs.h only (no
 * BLAS, no press state): the fp32 path (BLAS) is latent_attend.c's, the reference. */
#ifndef KVS_CPU_LATENT_KEYS_H
#define KVS_CPU_LATENT_KEYS_H

#include "kvs.h"

/* B (n_out, k) as bf16 pairs in panels of up to KVS_CKV_BF16_NV x 16 outputs: panel P holds, for
 * each pair p < k_pad/2 and each of its vectors v, 16 outputs x (B[o][2p], B[o][2p+1]). */
#define KVS_CKV_BF16_NV 6
struct kvs_ckv_bf16_mat {
    uint16_t *w;        /* (k_pad/2, n_out_pad, 2) in panels, bf16; 64-byte aligned */
    int n_out, k, k_pad, n_out_pad;
};

/* True when this build has the bf16 kernel (compiled with __AVX512BF16__). */
bool kvs_ckv_bf16_available(void);

/* Packs B (n_out, k) row-major with leading dimension ldb into M (k padded to even, outputs to a
 * multiple of 16, pads zero). Returns KVS_ERR_NOMEM or KVS_ERR_ARG; free with kvs_ckv_bf16_free. */
enum kvs_status kvs_ckv_bf16_pack(struct kvs_ckv_bf16_mat *m, const float *B, int n_out, int k, int ldb);
void kvs_ckv_bf16_free(struct kvs_ckv_bf16_mat *m);

/* Rounds fp32 to bf16, nearest even (NaN stays NaN). */
uint16_t kvs_f32_to_bf16(float x);

/* Converts ROWS rows of K floats (leading dimension ldx) to bf16 rows of M->k_pad (zero pad),
 * leading dimension M->k_pad, into DST. */
void kvs_ckv_bf16_rows(const struct kvs_ckv_bf16_mat *m, const float *x, int rows, int ldx, uint16_t *dst);

/* OUT (rows, n_out; leading dimension ldo) = A (rows, k_pad bf16 from kvs_ckv_bf16_rows) B^T, fp32
 * accumulation. Only when kvs_ckv_bf16_available(); otherwise it does nothing and returns false. */
bool kvs_ckv_bf16_gemm(const struct kvs_ckv_bf16_mat *m, const uint16_t *a, int rows, float *out, int ldo);

/* The int8 key kernel (AVX512-VNNI vpdpbusd: 64 multiply-adds an instruction, twice bf16's).
 * B (n_out, k) with column i multiplied by G[i] is quantized to int8 per output with a scale;
 * each latent row, divided by G, is quantized to int8 with one scale per row and stored offset by
 * 128 as unsigned bytes. Keys = (acc - 128 sum_k Bq) * row scale * output scale. Panels as the
 * bf16 matrix, with quads of k. */
struct kvs_ckv_i8_mat {
    int8_t *w;          /* (k_pad/4, n_out_pad, 4) in panels of KVS_CKV_BF16_NV vectors */
    float *scale;       /* (n_out_pad) per-output scale */
    int32_t *corr;      /* (n_out_pad) 128 * sum over k of the output's quantized weights */
    float *ginv;        /* (k) 1 / G (0 where G is not positive: that dimension is dropped) */
    int n_out, k, k_pad, n_out_pad;
};
bool kvs_ckv_i8_available(void);
/* G may be NULL (no prescale). K is at most 65536 (int32 accumulators). Returns KVS_ERR_NOMEM or
 * KVS_ERR_ARG. */
enum kvs_status kvs_ckv_i8_pack(struct kvs_ckv_i8_mat *m, const float *B, int n_out, int k, int ldb, const float *g);
void kvs_ckv_i8_free(struct kvs_ckv_i8_mat *m);
/* ROWS latent rows (K floats, leading dimension ldx) to offset bytes, rows of m->k_pad, in DST and
 * their scales in SCALE. */
void kvs_ckv_i8_rows(const struct kvs_ckv_i8_mat *m, const float *x, int rows, int ldx, uint8_t *dst, float *scale);
/* OUT (rows, n_out; ldo) = the dequantized A B^T. False (and nothing done) without VNNI. */
bool kvs_ckv_i8_gemm(const struct kvs_ckv_i8_mat *m, const uint8_t *a, const float *ascale, int rows, float *out,
                     int ldo);

/* The fused decode path's pieces (AVX-512F where the build has it, else the scalar loops that are
 * their reference). */

/* Rotates N_HEADS heads of width 2*HALF in each of ROWS rows of X (leading dimension LDX), row i at
 * position POS[i]; CS is a RoPE table (n_pos, half, 2) of cos, sin. NEOX pairs i with i+half,
 * otherwise 2i with 2i+1. */
void kvs_ckv_rope_rows(const float *cs, int half, bool neox, float *x, int rows, int ldx, int n_heads,
                       const int32_t *pos);

/* S[i*lds + t] = Q_i . K_t for NQ query rows (leading dimension ldq) and ROWS key rows (ldk), width D. */
void kvs_ckv_scores(const float *k, int rows, int ldk, const float *q, int nq, int ldq, int d, float *s, int lds);

/* Y[0:r] += sum_t P[t] C[t][0:r] over ROWS rows of C (leading dimension ldc): the attention-weighted
 * sum of latents (values by re-association). Rows with P[t] == 0 are skipped. */
void kvs_ckv_accum(float *y, const float *p, const float *c, int rows, int ldc, int r);

#endif
