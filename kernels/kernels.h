/* The only boundary between the C engine and the CUDA backend (DESIGN.md §2, §7): plain C types,
 * a versioned function table that libkvscope_cuda.so returns from kvs_cuda_get_api(), and the
 * generic check macro shared by the CUDA side and the CUPTI profiler.
 * Every pointer handed to a table entry that names "device" is CUDA device memory.
 * Must not include CUDA headers: engine/ compiles it with a plain C compiler. */
#ifndef KVS_KERNELS_H
#define KVS_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever struct kvs_cuda_api or an argument struct changes layout or meaning. */
#define KVS_CUDA_ABI_VERSION 12u /* 2: K/V pool entries (copy, kv_store, kv_compact), attn_kv16 mass;
                                 * 3: CommonKV latent segments (lat_store, lat_compact, lat_merge),
                                 *    pinned host memory, embed, add_bias, add, swiglu,
                                 *    compute_capability, NVTX ranges;
                                 * 4: lat_attend (attention over latent segment rows);
                                 * 5: lat_attend's fused decode (bk16, splits);
                                 * 6: mem_info (the card's used/total memory), acts_saturated;
                                 * 7: MiniCache pairs (mc_score, mc_merge, mc_attend);
                                 * 8: quantized K/V pool (kvq_quantize, kvq_attend, kvq_compact,
                                 *    kvq_scores);
                                 * 9: packed latent rows (lat_codecs, lat_qstore, lat_qload,
                                 *    lat_qcompact, lat_qmerge);
                                 * 10: lat_cosine (cosine scores between latent arrays);
                                 * 11: cache_saturated (fp16 cache stores clamp at ±65504,
                                 *     counted; lat_qload's fp16 output saturates too);
                                 * 12: lat_load (fp16 latent rows to fp32 on the device),
                                 *     lat_mass_add (eviction scores by position on the device),
                                 *     fp32 weights (KVS_CUDA_F32) */
/* Name of the exported entry point (for dlsym). */
#define KVS_CUDA_ENTRY "kvs_cuda_get_api"
/* Largest head width the attention kernels accept (per-warp key in shared memory). */
#define KVS_CUDA_MAX_HEAD_DIM 256

/* ---- generic check macro family (CUDA, cuBLAS, cuSOLVER on the CUDA side; CUPTI in engine/) ----
 * KVS_CHECK_GEN evaluates EXPR once; when the result differs from OK it records the library, the
 * expression, the code and its text (STRFN(code)), the function, file and line into ERRBUF (CAP
 * bytes) and jumps to the enclosing function's single `fail:` label. In C++ every local must be
 * declared before the first check (goto may not cross an initialisation). */
static inline void kvs_check_record(char *errbuf, size_t cap, const char *lib, const char *expr, long code,
                                    const char *text, const char *func, const char *file, int line)
{
    if (errbuf && cap) snprintf(errbuf, cap, "%s error %ld (%s) in %s() at %s:%d: %s", lib, code,
                                text ? text : "?", func, file, line, expr);
}
#ifdef __cplusplus
#define KVS_CHECK_TYPEOF(x) decltype(x)
#else
#define KVS_CHECK_TYPEOF(x) __typeof__(x)
#endif
#define KVS_CHECK_GEN(errbuf, cap, lib, expr, ok, strfn)                                              \
    do {                                                                                             \
        KVS_CHECK_TYPEOF(expr) kvs_check_rc_ = (expr);                                                     \
        if (kvs_check_rc_ != (ok)) {                                                                 \
            kvs_check_record((errbuf), (cap), (lib), #expr, (long)kvs_check_rc_, strfn(kvs_check_rc_), \
                             __func__, __FILE__, __LINE__);                                          \
            goto fail;                                                                               \
        }                                                                                            \
    } while (0)

/* ---- types ---- */

/* Return codes of every int-returning table entry. */
enum kvs_cuda_rc { KVS_CUDA_OK = 0, KVS_CUDA_FAIL = -1 /* message in last_error() */ };

/* Device storage of uploaded weights (tensor-core GEMM inputs). */
/* F32: a small factor kept exact (CommonKV's latent projection A), its products by plain fp32 GEMMs */
enum kvs_cuda_dtype { KVS_CUDA_F16 = 1, KVS_CUDA_BF16 = 2, KVS_CUDA_F32 = 3 };

/* What probe() found, from the most to the least fundamental failure. */
enum kvs_cuda_probe_status {
    KVS_CUDA_PROBE_OK = 0,
    KVS_CUDA_PROBE_NO_DRIVER = 1,  /* cudart found no driver (libcuda missing) */
    KVS_CUDA_PROBE_OLD_DRIVER = 2, /* driver older than the runtime the library was built with */
    KVS_CUDA_PROBE_NO_GPU = 3,     /* driver present, no usable device */
    KVS_CUDA_PROBE_ERROR = 4,      /* any other runtime error (message says which) */
};

struct kvs_cuda_probe {
    int status;               /* enum kvs_cuda_probe_status */
    int runtime_error;        /* cudaError_t of cudaGetDeviceCount (0 when fine) */
    int device_count;
    int runtime_version;      /* e.g. 13000 */
    int driver_version;       /* 0 when no driver */
    int cc_major, cc_minor;   /* device 0 */
    uint64_t total_mem;       /* device 0, bytes */
    char name[96];            /* device 0, e.g. "NVIDIA H100 80GB HBM3" */
    char message[160];        /* runtime's text for runtime_error */
};

struct kvs_cuda_ctx;    /* one device, one stream, cuBLAS and cuSOLVER handles, scratch, last error */
struct kvs_cuda_weight; /* a (rows, cols) row-major matrix resident on the device as fp16 or bf16 */

/* Attention of T queries over one layer's CommonKV latents (DESIGN.md §3 steps 5–6), all device:
 *   scores[t,h,j] = scale · q[t,h] · RoPE_{pos[j]}(B_k[g] c_j)     (fused, K never stored)
 *   out[t,h]      = (softmax_j(scores[t,h,:]) · C) · B_v[g]ᵀ       (re-association, V never stored)
 * with g = h / (n_head / n_head_kv); query t sees latent j only when pos[j] <= q_pos[t]. */
struct kvs_cuda_attn_latent {
    int T, n;                 /* queries, cached latents (n may be 0: out becomes 0) */
    int n_head, n_head_kv, head_dim, rank;
    const float *q;           /* (T, n_head*head_dim) after RoPE */
    const int32_t *q_pos;     /* (T) */
    const float *c;           /* (n, rank) latents, pre-RoPE */
    const int32_t *pos;       /* (n) original positions of the latents */
    const float *bk, *bv;     /* (n_head_kv*head_dim, rank) the layer's B_k, B_v */
    const float *freqs;       /* (head_dim/2) RoPE inverse frequencies */
    int neox;                 /* pairs (i, i+d/2) instead of (2i, 2i+1) */
    float scale;              /* usually 1/sqrt(head_dim) */
    float *out;               /* (T, n_head*head_dim) */
};

/* Attention of T queries over a plain fp16 K/V cache (the `full` press), all device. */
struct kvs_cuda_attn_kv16 {
    int T, n;
    int n_head, n_head_kv, head_dim;
    const float *q;           /* (T, n_head*head_dim) after RoPE */
    const int32_t *q_pos;     /* (T) */
    const uint16_t *k, *v;    /* (n, n_head_kv*head_dim) IEEE fp16 bits; k after RoPE */
    const int32_t *pos;       /* (n) */
    float scale;
    float *out;               /* (T, n_head*head_dim) */
    float *mass;              /* NULL or (n): Σ over queries and heads of the attention weights */
};

/* The merge of CommonKV latent rows (lat_merge): M rows appended to a shared segment, each the
 * weighted sum of one token's latents over the N_ARR layers of a private segment, all device
 * except the weights. fp16 rows saturate at ±65504, counted (cache_saturated). */
#define KVS_CUDA_LAT_MAX_ARR 16
struct kvs_cuda_lat_merge {
    int n_arr, width, m, row0;
    const uint16_t *src[KVS_CUDA_LAT_MAX_ARR]; /* n_arr x (n_src, width) fp16 bits */
    const int32_t *src_pos;   /* (n_src) */
    const int32_t *idx;       /* (m) source rows */
    float w[KVS_CUDA_LAT_MAX_ARR]; /* (n_arr) merge weights */
    uint16_t *dst;            /* (cap, width) fp16; rows [row0, row0+m) written */
    int32_t *dst_pos;         /* (cap) */
};

/* Attention of T queries over one layer's CommonKV latent rows as the segments hold them (fp16,
 * positions in any order), all device: as kvs_cuda_attn_latent with k_j = RoPE_{pos_j}(B_k[g] c_j
 * + b_k[g]) and out += b_v[g] (biases may be NULL); MASS (n, rows of all segments in order) or
 * NULL gets Σ over queries t >= mass_from and heads of the attention weights. With BK16 and T <= 4
 * (decode) one fused kernel rebuilds the keys tile by tile on tensor cores from BK16 (fp16 or bf16
 * inputs, fp32 accumulation) with an online softmax, split over the context; otherwise (prefill
 * chunks) the rows are gathered to fp32 and attended through a score matrix with B_k in fp32. */
#define KVS_CUDA_LAT_ATTEND_MAX_SEGS 4
struct kvs_cuda_lat_attend {
    int T, n_head, n_head_kv, head_dim, rank;
    int n_segs;
    const uint16_t *rows[KVS_CUDA_LAT_ATTEND_MAX_SEGS]; /* (n[s], rank) fp16 bits */
    const int32_t *pos[KVS_CUDA_LAT_ATTEND_MAX_SEGS];   /* (n[s]) */
    int n[KVS_CUDA_LAT_ATTEND_MAX_SEGS];
    const float *q;           /* (T, n_head*head_dim) after RoPE */
    const int32_t *q_pos;     /* (T) */
    const float *bk, *bv;     /* (n_head_kv*head_dim, rank) */
    const float *bk_bias, *bv_bias; /* (n_head_kv*head_dim) or NULL */
    const float *freqs;       /* (head_dim/2) */
    int neox;
    float scale;
    float *out;               /* (T, n_head*head_dim) */
    float *mass;              /* NULL or (Σ n) */
    int mass_from;
    /* ABI 5: the fused decode path */
    const struct kvs_cuda_weight *bk16; /* NULL, or B_k as (n_head_kv*head_dim, rank rounded up to 16)
                                         * fp16/bf16 with zero columns past the rank, made once per layer */
    int splits;               /* context splits of the fused kernel; 0: from the SM count (or
                               * $KVS_CUDA_LAT_SPLITS) */
};

/* MiniCache's merge of two layers' fp16 K/V rows (twins in engine/cpu/minicache.c), all device:
 * mc_score writes, for the M rows IDX of layers a and b, DIST (m) = acos(û_a·û_b)/π averaged over
 * the heads of keys then values and DOTS (m, 2*nkv) or NULL = the cosines; mc_merge appends, for
 * r in [KEEP, M), the SLERP at T of row IDX[r]'s unit directions per head (renormalised) to EK, EV
 * at row ROW0 + r - KEEP, both layers' norms to NRM (|k_a|, |k_b|, |v_a|, |v_b| per head) and
 * POS_A[IDX[r]] to POS. The first KEEP rows of IDX are retained, not merged. Directions and norms
 * saturate at ±65504, counted (cache_saturated): a norm can overflow where no element does. */
struct kvs_cuda_mc_pair {
    int nkv, d, m, keep, row0;
    float t;
    const uint16_t *ka, *va, *kb, *vb; /* (n, nkv*d) fp16 bits: the two layers' rows */
    const int32_t *pos_a;     /* (n) */
    const int32_t *idx;       /* (m) */
    float *dist;              /* mc_score: (m) */
    double *dots;             /* mc_score: (m, 2*nkv) or NULL */
    uint16_t *ek, *ev;        /* mc_merge: (cap, nkv*d) */
    uint16_t *nrm;            /* mc_merge: (cap, 4*nkv) */
    int32_t *pos;             /* mc_merge: (cap) */
};

/* Attention of T queries over a layer's N unmerged fp16 rows and NM merged rows rebuilt as this
 * layer's (SIDE 0: the pair's first layer, 1: its second): k = half(|k_side| · dir_k) per head,
 * v likewise, then as kvs_cuda_attn_kv16; all device. */
struct kvs_cuda_mc_attend {
    int T, n_head, n_head_kv, head_dim;
    const float *q;           /* (T, n_head*head_dim) after RoPE */
    const int32_t *q_pos;     /* (T) */
    int n;                    /* unmerged rows */
    const uint16_t *k, *v;    /* (n, n_head_kv*head_dim) */
    const int32_t *pos;       /* (n) */
    int nm, side;             /* merged rows */
    const uint16_t *ek, *ev;  /* (nm, n_head_kv*head_dim) unit directions */
    const uint16_t *nrm;      /* (nm, 4*n_head_kv) */
    const int32_t *mpos;      /* (nm) */
    float *out;               /* (T, n_head*head_dim) */
};

/* One layer of the quantized K/V pool as the kernels see it (struct kvs_kvq_rows), all device:
 * packed key blocks back to back (engine/cpu/quant_codec.h layout), packed value rows and positions
 * of the TQ packed tokens, then the fp16 tier. BLK (nblk, 3) int32: tokens, key byte offset and
 * first token row of each block. */
struct kvs_cuda_kvq {
    int dkv, bits, group, vrow;
    int nblk, tq, n16;
    const int32_t *blk;
    const uint8_t *kq, *vq;
    const int32_t *pq;
    const uint16_t *k16, *v16; /* (n16, dkv) fp16 bits */
    const int32_t *p16;
};

/* Packs the first GROUP fp16 rows K16, V16 (dkv wide) into one block: keys per channel at KDST
 * (kvs_qcol_bytes(group, dkv, bits)), values per token in channel groups at VDST (group, vrow). */
struct kvs_cuda_kvq_quantize {
    int dkv, bits, group, vrow;
    const uint16_t *k16, *v16;
    uint8_t *kdst, *vdst;
};

/* Attention of T queries over every row of L (packed rows decoded, rounded to fp16 as stored rows
 * are), as kvs_cuda_attn_kv16 with scale 1/sqrt(head_dim); SCORE (positions) or NULL: each row's
 * mass (Σ over queries and heads, rows in order) added at its position. */
struct kvs_cuda_kvq_attend {
    struct kvs_cuda_kvq L;
    int T, n_head, n_head_kv, head_dim;
    const float *q;           /* (T, n_head*head_dim) */
    const int32_t *q_pos;     /* (T) */
    float *out;               /* (T, n_head*head_dim) */
    float *score;
};

/* Eviction of packed tokens: NB_NEW new blocks from PLAN (nb_new, 6) int32: source block's token
 * count, key byte offset and first row, kept tokens, new key byte offset, new first row; and
 * SRC (tq_new, 4) int32: each kept token's old row, its source block's token count, key byte
 * offset and first row. A new block whose kept count equals its source's
 * keeps its key bytes; the others are re-encoded from their kept tokens' decoded keys. Values and
 * positions move by row. The arrays of L are rewritten in place (through scratch). */
struct kvs_cuda_kvq_compact {
    int dkv, bits, group, vrow;
    int nb_new, tq_new;
    size_t kq_new;            /* key bytes after */
    const int32_t *plan, *src;
    uint8_t *kq, *vq;
    int32_t *pq;
};

/* Eviction scores: POOLED (n_ctx) = SCORE max-pooled over KERNEL positions (kernel/2 each side),
 * -inf at positions held by neither PQ (tq) nor P16 (n16); then SCORE (n_score) is zeroed. POOLED
 * may be NULL (only the zeroing). */
struct kvs_cuda_kvq_scores {
    float *score;
    int n_score, n_ctx, kernel;
    const int32_t *pq, *p16;
    int tq, n16;
    float *pooled;
};

/* A packed latent row format (the row codec of quant_codec.cuh, engine/cpu/quant_codec.h): WIDTH
 * values in groups of GROUP, each group an fp16 scale, an fp16 minimum and its codes at BITS (2, 4,
 * 8) packed LSB-first, ROW_BYTES = kvs_dev_qrow_bytes(width, bits, group) per row. */
struct kvs_cuda_qrow {
    int width, row_bytes, bits, group;
};
/* Bits of lat_codecs(): the row formats the lat_* entries take, bit (1 << c) for the engine's
 * codec number c (enum kvs_lat_codec in engine/backend/backend.h: 0 fp16, 1 packed rows). */
#define KVS_CUDA_LAT_CODEC_FP16 (1u << 0)
#define KVS_CUDA_LAT_CODEC_QROW (1u << 1)

/* Cosine scores of rows [row0, row0+n) between the arrays ROWS[0..n_arr) of one latent segment
 * (fp16): out[i] = cos(rows[0][i], rows[n_arr-1][i]) (adj 0), or the mean over a < n_arr-1 of
 * cos(rows[a][i], rows[a+1][i]) (adj 1); one thread per row, fp64 sums in element order (the CPU
 * twin's order: the same bits). */
struct kvs_cuda_lat_cosine {
    int n_arr, width, row0, n, adj;
    const uint16_t *rows[KVS_CUDA_LAT_MAX_ARR]; /* n_arr x (cap, width) fp16 bits, or packed rows */
    float *out;               /* (n) */
    int bits, group, row_bytes; /* bits 0: fp16 rows; else packed by the row codec (quant_codec.cuh) */
};

/* The function table. Entries returning int give KVS_CUDA_OK or KVS_CUDA_FAIL with the reason in
 * last_error(ctx). Calls on one context must come from one thread at a time. */
struct kvs_cuda_api {
    uint32_t abi_version;     /* KVS_CUDA_ABI_VERSION of the library */
    uint32_t struct_size;     /* sizeof(struct kvs_cuda_api) in the library */

    /* Asks the CUDA runtime for devices without creating a context; never fails hard. */
    void (*probe)(struct kvs_cuda_probe *out);
    /* Creates a context on DEVICE. On failure returns KVS_CUDA_FAIL with a message in err and
     * *out NULL. Free with shutdown (frees every allocation and weight made through it). */
    int (*init)(struct kvs_cuda_ctx **out, int device, char *err, size_t errlen);
    void (*shutdown)(struct kvs_cuda_ctx *c);
    const char *(*device_name)(const struct kvs_cuda_ctx *c); /* "NVIDIA H100 80GB HBM3" */
    const char *(*last_error)(const struct kvs_cuda_ctx *c);

    /* Device memory. upload returns once SRC may be reused; download waits for all prior work. */
    int (*alloc)(struct kvs_cuda_ctx *c, void **dptr, size_t bytes);
    void (*free)(struct kvs_cuda_ctx *c, void *dptr);
    int (*upload)(struct kvs_cuda_ctx *c, void *dst_dev, const void *src_host, size_t bytes);
    int (*download)(struct kvs_cuda_ctx *c, void *dst_host, const void *src_dev, size_t bytes);
    int (*sync)(struct kvs_cuda_ctx *c);
    /* Device-to-device copy of BYTES (regions must not overlap), ordered on the stream. */
    int (*copy)(struct kvs_cuda_ctx *c, void *dst_dev, const void *src_dev, size_t bytes);

    /* Weights: create, fill rows [row0, row0+n) from fp32 host rows (converted on the device),
     * free. A weight belongs to its context. */
    int (*weight_new)(struct kvs_cuda_ctx *c, struct kvs_cuda_weight **out, int64_t rows, int64_t cols, int dtype);
    int (*weight_set_rows)(struct kvs_cuda_ctx *c, struct kvs_cuda_weight *w, int64_t row0, int64_t n,
                           const float *src_host);
    void (*weight_free)(struct kvs_cuda_ctx *c, struct kvs_cuda_weight *w);

    /* Operations on device pointers; twins of the CPU functions of the same suffix. */
    int (*rmsnorm)(struct kvs_cuda_ctx *c, float *out, const float *x, const float *w, int T, int n, float eps);
    int (*rope)(struct kvs_cuda_ctx *c, float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                const float *freqs, int neox);
    int (*matmul)(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const float *x, float *y, int T);
    int (*attn_latent)(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a);
    int (*attn_kv16)(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_kv16 *a);
    int (*svd)(struct kvs_cuda_ctx *c, const float *a, int m, int n, float *u, float *s, float *vt);
    int (*kv_store)(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int dkv, int row0, int T, const float *ks,
                    const float *vs);
    int (*kv_compact)(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int32_t *pos, int dkv, const int32_t *src,
                      int n_keep);
    int (*lat_store)(struct kvs_cuda_ctx *c, uint16_t *rows, int width, int row0, int T, const float *x);
    int (*lat_compact)(struct kvs_cuda_ctx *c, uint16_t *const *rows, int n_arr, int32_t *pos, int width,
                       const int32_t *src, int n_keep);
    int (*lat_merge)(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_merge *a);

    /* Page-locked host memory (cudaMallocHost) for staging: copies from and to it run at full
     * speed and asynchronously (an upload from it may still run when upload returns). */
    int (*host_alloc)(struct kvs_cuda_ctx *c, void **hptr, size_t bytes);
    void (*host_free)(struct kvs_cuda_ctx *c, void *hptr);
    /* The element-wise steps of a token (twins in engine/cpu/embedding.c, elementwise.c). */
    int (*embed)(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const int32_t *tokens, int T, float *out);
    int (*add_bias)(struct kvs_cuda_ctx *c, float *y, const float *b, int T, int n);
    int (*add)(struct kvs_cuda_ctx *c, float *x, const float *y, int64_t n);
    int (*swiglu)(struct kvs_cuda_ctx *c, float *g, const float *u, int64_t n);
    /* The context's device compute capability as major*10 + minor (80 for sm_80). */
    int (*compute_capability)(const struct kvs_cuda_ctx *c);
    /* NVTX ranges (Nsight Systems timelines): push NAME, pop the innermost. Without a tool
     * attached each call is a check of a function pointer. */
    void (*range_push)(struct kvs_cuda_ctx *c, const char *name);
    void (*range_pop)(struct kvs_cuda_ctx *c);
    /* Attention over latent segment rows (struct kvs_cuda_lat_attend). */
    int (*lat_attend)(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a);
    /* The card's memory as cudaMemGetInfo reports it for the context's device: *used = total - free
     * (every process's allocations, the CUDA context's own included), *total its size, in bytes. */
    int (*mem_info)(struct kvs_cuda_ctx *c, uint64_t *used, uint64_t *total);
    /* Activation values matmul clamped to ±65504 when it converted them to fp16 for an fp16 weight
     * (see kvs_cuda_matmul), counted on the device since init and read back here (waits for the
     * stream: call it once a step, after the step's last download). bf16 never clamps. */
    int (*acts_saturated)(struct kvs_cuda_ctx *c, uint64_t *count);
    /* MiniCache pairs (struct kvs_cuda_mc_pair, struct kvs_cuda_mc_attend). */
    int (*mc_score)(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a);
    int (*mc_merge)(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a);
    int (*mc_attend)(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_attend *a);
    /* The quantized K/V pool (twins in engine/cpu/kv_quant.c; structs above). */
    int (*kvq_quantize)(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_quantize *a);
    int (*kvq_attend)(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_attend *a);
    int (*kvq_compact)(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_compact *a);
    int (*kvq_scores)(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_scores *a);
    /* Packed latent rows (struct kvs_cuda_qrow; twins in engine/cpu/latent_pool.c, same bytes).
     * lat_codecs: the KVS_CUDA_LAT_CODEC_* bits this library's lat_* entries take (the engine keeps
     * packed rows on the host unless QROW is set). lat_qstore: rows [row0, row0+T) of ROWS (cap,
     * row_bytes) = x (T, width) fp32 encoded. lat_qload: OUT (n, width) = rows [row0, row0+n)
     * decoded, fp32 (DTYPE 0) or fp16 (KVS_CUDA_F16, the decoded fp32 rounded to nearest,
     * saturating at ±65504 like the CPU's staging through kvs_f32_to_f16_row; not counted).
     * lat_qcompact: as lat_compact, rows of row_bytes. lat_qmerge: as lat_merge over packed rows
     * (src, dst hold rows of row_bytes): decoded, summed in fp32, encoded once. */
    uint32_t (*lat_codecs)(const struct kvs_cuda_ctx *c);
    int (*lat_qstore)(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *rows, int row0, int T,
                      const float *x);
    int (*lat_qload)(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const uint8_t *rows, int row0, int n,
                     void *out, int dtype);
    int (*lat_qcompact)(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *const *rows, int n_arr,
                        int32_t *pos, const int32_t *src, int n_keep);
    int (*lat_qmerge)(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const struct kvs_cuda_lat_merge *a);
    /* Cosine scores between latent arrays (struct kvs_cuda_lat_cosine). */
    int (*lat_cosine)(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a);
    /* Values the fp16 cache stores (kv_store, lat_store, lat_merge, mc_merge) clamped to ±65504
     * instead of rounding them to ±inf, counted on the device since init and read back here (waits
     * for the stream, like acts_saturated: once a step). Decodes to fp16 for attention (kvq_attend,
     * mc_attend) saturate too but are not counted: their rows were counted when stored. */
    int (*cache_saturated)(struct kvs_cuda_ctx *c, uint64_t *count);
    /* fp16 latent rows back to fp32 on the device (kvs_cuda_lat_load): rows that move to a packed
     * segment are read here and encoded by lat_qstore without leaving the device. */
    int (*lat_load)(struct kvs_cuda_ctx *c, const uint16_t *rows, int width, int row0, int n, float *x);
    /* The attention mass of latent rows added to eviction scores by position, on the device
     * (kvs_cuda_lat_mass_add): snapkv's scores of a CommonKV composition never come to the host
     * per step. */
    int (*lat_mass_add)(struct kvs_cuda_ctx *c, const int32_t *const *pos, const int *n, int n_segs,
                        const float *mass, float *score, int n_score);
};

/* The library's single exported entry point: a static table (never NULL, never freed). */
const struct kvs_cuda_api *kvs_cuda_get_api(void);
typedef const struct kvs_cuda_api *(*kvs_cuda_get_api_fn)(void);

/* ---- the launchers behind the table, named after their CPU twins (engine/cpu/<stem>.h, backend.h).
 * The engine reaches them only through the table; they are listed here so that each twin pair
 * can be found by name. All pointers are device memory. ---- */

/* out (T, n) = x (T, n) · rsqrt(mean(x²) + eps) · w (n), one block per row. */
int kvs_cuda_rmsnorm(struct kvs_cuda_ctx *c, float *out, const float *x, const float *w, int T, int n, float eps);
/* Rotates x (T, n_heads, head_dim) in place, token t at pos[t]; one thread per pair. */
int kvs_cuda_rope(struct kvs_cuda_ctx *c, float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                  const float *freqs, int neox);
/* y (T, rows) = x (T, cols) · Wᵀ: x converted to W's dtype, cublasGemmEx with CUBLAS_COMPUTE_32F
 * (tensor cores), fp32 output. For an fp16 W, activations beyond the fp16 range are clamped to
 * ±65504 (never inf, which would turn whole output rows into inf/NaN) and counted in the context's
 * device counter (acts_saturated); NaN stays NaN. bf16 holds every fp32 magnitude. */
int kvs_cuda_matmul(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const float *x, float *y, int T);
int kvs_cuda_attn_latent(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a);
int kvs_cuda_attn_kv16(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_kv16 *a);
int kvs_cuda_lat_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a);
/* Thin SVD of a (m, n) row-major: u (m, k), s (k) descending, vt (k, n), k = min(m, n);
 * cuSOLVER gesvdj (Jacobi) in fp32. */
int kvs_cuda_svd(struct kvs_cuda_ctx *c, const float *a, int m, int n, float *u, float *s, float *vt);
/* K/V pool rows (twins in engine/cpu/kv_pool.c). kv_store: rows [row0, row0+T) of k, v (cap, dkv) fp16
 * = ks, vs (T, dkv) fp32, IEEE round to nearest even, beyond ±65504 clamped and counted
 * (cache_saturated), NaN kept (the CPU's kvs_f32_to_f16_row).
 * kv_compact: row i of k, v, pos becomes row src[i] for i < n_keep (src strictly increasing, so
 * the order is kept), through scratch. */
int kvs_cuda_kv_store(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int dkv, int row0, int T, const float *ks,
                      const float *vs);
int kvs_cuda_kv_compact(struct kvs_cuda_ctx *c, uint16_t *k, uint16_t *v, int32_t *pos, int dkv,
                        const int32_t *src, int n_keep);
/* CommonKV latent segment rows (twins in engine/cpu/latent_pool.c). lat_store: rows [row0, row0+T)
 * of one array (cap, width) fp16 = x (T, width) fp32, rounded as the CPU does. lat_compact: row i
 * of each of the N_ARR arrays (ROWS: a host array of device pointers) and of pos becomes row
 * src[i] for i < n_keep (src strictly increasing), through scratch. lat_merge: see struct
 * kvs_cuda_lat_merge; fused multiply-adds in layer order, rounded once, as the CPU twin. */
int kvs_cuda_lat_store(struct kvs_cuda_ctx *c, uint16_t *rows, int width, int row0, int T, const float *x);
/* lat_load: x (n, width) fp32 = rows [row0, row0+n) of one fp16 array, widened (exact). */
int kvs_cuda_lat_load(struct kvs_cuda_ctx *c, const uint16_t *rows, int width, int row0, int n, float *x);
/* lat_mass_add: score[pos_s[i]] += mass[off_s + i] over the rows of N_SEGS segments numbered one after
 * the other (POS: a host array of device pointers, N the rows of each); positions are distinct, and
 * those outside [0, n_score) skipped. Twin: kvs_cpu_lat_mass_add (engine/cpu/latent_pool.c). */
int kvs_cuda_lat_mass_add(struct kvs_cuda_ctx *c, const int32_t *const *pos, const int *n, int n_segs,
                          const float *mass, float *score, int n_score);
int kvs_cuda_lat_compact(struct kvs_cuda_ctx *c, uint16_t *const *rows, int n_arr, int32_t *pos, int width,
                         const int32_t *src, int n_keep);
int kvs_cuda_lat_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_merge *a);
/* Packed latent rows (same twins, KVS_LAT_QROW; contracts of the table entries of the same names):
 * encode one thread per group, decode one thread per element, byte rows through scratch. */
int kvs_cuda_lat_qstore(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *rows, int row0, int T,
                        const float *x);
int kvs_cuda_lat_qload(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const uint8_t *rows, int row0, int n,
                       void *out, int dtype);
int kvs_cuda_lat_qcompact(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, uint8_t *const *rows, int n_arr,
                          int32_t *pos, const int32_t *src, int n_keep);
int kvs_cuda_lat_qmerge(struct kvs_cuda_ctx *c, const struct kvs_cuda_qrow *f, const struct kvs_cuda_lat_merge *a);
/* See struct kvs_cuda_lat_cosine; twin kvs_cpu_lat_cosine (engine/cpu/latent_pool.c). */
int kvs_cuda_lat_cosine(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a);
/* out (T, cols) fp32 = rows TOKENS (T, already checked against w->rows) of the table W; kernels/embedding.cu. */
int kvs_cuda_embed(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const int32_t *tokens, int T, float *out);
/* kernels/elementwise.cu: y (T, n) += b (n); x (n) += y (n); g (n) = g / (1 + e^-g) · u (n). */
int kvs_cuda_add_bias(struct kvs_cuda_ctx *c, float *y, const float *b, int T, int n);
int kvs_cuda_add(struct kvs_cuda_ctx *c, float *x, const float *y, int64_t n);
int kvs_cuda_swiglu(struct kvs_cuda_ctx *c, float *g, const float *u, int64_t n);
/* kernels/minicache.cu (twins in engine/cpu/minicache.c): one thread per scored row, one per merged
 * (row, head) with the CPU's sequential sums; attention rebuilds the merged rows into scratch
 * after the unmerged ones and runs kvs_cuda_attn_kv16 over both. */
int kvs_cuda_mc_score(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a);
int kvs_cuda_mc_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_pair *a);
int kvs_cuda_mc_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_mc_attend *a);
/* kernels/kv_quant.cu: the quantized K/V pool (twins kvs_cpu_kvq_* in engine/cpu/kv_quant.c). */
int kvs_cuda_kvq_quantize(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_quantize *a);
int kvs_cuda_kvq_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_attend *a);
int kvs_cuda_kvq_compact(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_compact *a);
int kvs_cuda_kvq_scores(struct kvs_cuda_ctx *c, const struct kvs_cuda_kvq_scores *a);

#ifdef __cplusplus
}
#endif

#endif
