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
#define KVS_CUDA_ABI_VERSION 5u /* 2: K/V pool entries (copy, kv_store, kv_compact), attn_kv16 mass;
                                 * 3: CommonKV latent segments (lat_store, lat_compact, lat_merge),
                                 *    pinned host memory, embed, add_bias, add, swiglu,
                                 *    compute_capability, NVTX ranges;
                                 * 4: lat_attend (attention over latent segment rows);
                                 * 5: lat_cosine (cosine scores between latent arrays) */
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
enum kvs_cuda_dtype { KVS_CUDA_F16 = 1, KVS_CUDA_BF16 = 2 };

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
 * except the weights. */
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
 * positions in any order), all device: the rows are gathered to fp32 once, then as
 * kvs_cuda_attn_latent with k_j = RoPE_{pos_j}(B_k[g] c_j + b_k[g]) and out += b_v[g] (biases
 * may be NULL); MASS (n, rows of all segments in order) or NULL gets Σ over queries t >=
 * mass_from and heads of the attention weights. */
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
};

/* Cosine scores of rows [row0, row0+n) between the arrays ROWS[0..n_arr) of one latent segment
 * (fp16): out[i] = cos(rows[0][i], rows[n_arr-1][i]) (adj 0), or the mean over a < n_arr-1 of
 * cos(rows[a][i], rows[a+1][i]) (adj 1); one thread per row, fp64 sums in element order (the CPU
 * twin's order: the same bits). */
struct kvs_cuda_lat_cosine {
    int n_arr, width, row0, n, adj;
    const uint16_t *rows[KVS_CUDA_LAT_MAX_ARR]; /* n_arr x (cap, width) fp16 bits */
    float *out;               /* (n) */
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
    /* Cosine scores between latent arrays (struct kvs_cuda_lat_cosine). */
    int (*lat_cosine)(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a);
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
 * (tensor cores), fp32 output. Activations beyond the fp16 range saturate; use bf16 for those. */
int kvs_cuda_matmul(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const float *x, float *y, int T);
int kvs_cuda_attn_latent(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_latent *a);
int kvs_cuda_attn_kv16(struct kvs_cuda_ctx *c, const struct kvs_cuda_attn_kv16 *a);
int kvs_cuda_lat_attend(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_attend *a);
/* Thin SVD of a (m, n) row-major: u (m, k), s (k) descending, vt (k, n), k = min(m, n);
 * cuSOLVER gesvdj (Jacobi) in fp32. */
int kvs_cuda_svd(struct kvs_cuda_ctx *c, const float *a, int m, int n, float *u, float *s, float *vt);
/* K/V pool rows (twins in engine/cpu/kv_pool.c). kv_store: rows [row0, row0+T) of k, v (cap, dkv) fp16
 * = ks, vs (T, dkv) fp32, IEEE round to nearest even, overflow to inf (the CPU's conversion).
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
int kvs_cuda_lat_compact(struct kvs_cuda_ctx *c, uint16_t *const *rows, int n_arr, int32_t *pos, int width,
                         const int32_t *src, int n_keep);
int kvs_cuda_lat_merge(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_merge *a);
/* See struct kvs_cuda_lat_cosine; twin kvs_cpu_lat_cosine (engine/cpu/latent_pool.c). */
int kvs_cuda_lat_cosine(struct kvs_cuda_ctx *c, const struct kvs_cuda_lat_cosine *a);
/* out (T, cols) fp32 = rows TOKENS (T, already checked against w->rows) of the table W; kernels/embedding.cu. */
int kvs_cuda_embed(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const int32_t *tokens, int T, float *out);
/* kernels/elementwise.cu: y (T, n) += b (n); x (n) += y (n); g (n) = g / (1 + e^-g) · u (n). */
int kvs_cuda_add_bias(struct kvs_cuda_ctx *c, float *y, const float *b, int T, int n);
int kvs_cuda_add(struct kvs_cuda_ctx *c, float *x, const float *y, int64_t n);
int kvs_cuda_swiglu(struct kvs_cuda_ctx *c, float *g, const float *u, int64_t n);

#ifdef __cplusplus
}
#endif

#endif
