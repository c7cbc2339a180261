/* Compute backends (DESIGN.md §7): a vtable per backend plus a context pointer, a registry (a static
 * array, CPU first, CUDA found at run time by dlopen of libkvscope_cuda.so), and wrappers that take
 * the CPU path when an optional entry is NULL. The CPU backend is the oracle for the CUDA one.
 * Depends on engine/model/model.h, engine/core/threads.h and kernels/kernels.h (plain C); never on CUDA
 * headers or libraries: a machine without an NVIDIA driver gets a status message, never a crash. */
#ifndef KVS_BACKEND_H
#define KVS_BACKEND_H

#include "kernels.h"
#include "model.h"
#include "threads.h"

/* ---- arguments of the attention entries ---- */

/* A run of cached latents: a layer's private pool, a group's shared pool, … */
struct kvs_latent_seg {
    const float *c;           /* (n, rank) latents c = A_g x, pre-RoPE, fp32 */
    const int32_t *pos;       /* (n) original positions */
    int n;
};

/* Attention of T queries over one layer's CommonKV latents (DESIGN.md §3 steps 5–6):
 * keys k_j = RoPE_{pos_j}(B_k[g] c_j) are rebuilt on the fly and never stored; values by
 * re-association, out_h = (P_h C) B_v[g]ᵀ. Query t sees latent j only when pos_j <= q_pos[t]. */
struct kvs_attn_latent_args {
    int T;
    const int32_t *q_pos;     /* (T) */
    int n_head, n_head_kv, head_dim, rank;
    const float *bk, *bv;     /* (n_head_kv*head_dim, rank) the layer's B_k, B_v, row-major */
    const float *freqs;       /* (head_dim/2) RoPE inverse frequencies (kvs_rope_freqs) */
    bool neox;
    float scale;              /* usually 1/sqrt(head_dim) */
    const struct kvs_latent_seg *segs;
    int n_segs;               /* the order of segments and tokens does not matter */
};

/* A run of a plain fp16 K/V cache (the `full` press). */
struct kvs_kv16_seg {
    const uint16_t *k, *v;    /* (n, n_head_kv*head_dim) IEEE fp16; k after RoPE */
    const int32_t *pos;       /* (n) */
    int n;
};

struct kvs_attn_kv16_args {
    int T;
    const int32_t *q_pos;     /* (T) */
    int n_head, n_head_kv, head_dim;
    float scale;
    const struct kvs_kv16_seg *segs;
    int n_segs;
};

/* One layer's rows of a K/V cache pool (engine/backend/cache_pool.h) in a backend's memory: host for the
 * CPU backend, device for CUDA. Only backend entries read or write the storage; the pool module
 * keeps the counts. */
struct kvs_kv_rows {
    void *k, *v;              /* (cap, dkv) IEEE fp16, keys after RoPE; backend memory */
    void *pos;                /* (cap) int32 original positions; backend memory */
    int n, cap;               /* rows held, rows allocated */
    bool dense;               /* row j holds position j (kept by the pool module): the CPU's
                               * attention then skips the position lookups */
};

/* Attention of T queries over the rows of one pool layer, scores scaled by 1/sqrt(head_dim). */
struct kvs_kv_attend_args {
    int T;
    const int32_t *q_pos;     /* (T) host; query t sees row j only when pos_j <= q_pos[t] */
    int n_head, n_head_kv, head_dim;
};

/* A weight as one backend sees it: the model's weight and, once prepared, its device copy. */
struct kvs_backend_weight {
    const struct kvs_weight *w;
    void *dev;                /* backend-owned (e.g. struct kvs_cuda_weight *); NULL: CPU path */
};

struct kvs_backend;
struct kvs_op_counter;

struct kvs_backend_ops {
    const char *name;         /* "cpu", "cuda" */
    void (*destroy)(struct kvs_backend *b);
    /* out (T, n) = RMSNorm of x (T, n) with weight w (n). */
    enum kvs_status (*rmsnorm)(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                               float eps);
    /* Rotates x (T, n_heads, head_dim) in place, token t at pos[t]. */
    enum kvs_status (*rope)(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                            const float *freqs, bool neox);
    /* optional: NULL -> CPU path (bw->dev stays NULL). Makes a device copy of bw->w. */
    enum kvs_status (*weight_prepare)(struct kvs_backend *b, struct kvs_backend_weight *bw);
    /* optional: NULL -> nothing to release */
    void (*weight_release)(struct kvs_backend *b, struct kvs_backend_weight *bw);
    /* optional: NULL -> CPU path. y (T, rows) = x (T, cols) · Wᵀ; only called when bw->dev is set. */
    enum kvs_status (*matmul)(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x, float *y,
                              int T);
    /* optional: NULL -> CPU path. q (T, n_head*head_dim) after RoPE; out (T, n_head*head_dim). */
    enum kvs_status (*attn_latent)(struct kvs_backend *b, const struct kvs_attn_latent_args *a, const float *q,
                                   float *out);
    /* optional: NULL -> CPU path. */
    enum kvs_status (*attn_kv16)(struct kvs_backend *b, const struct kvs_attn_kv16_args *a, const float *q,
                                 float *out);
    /* optional: NULL -> CPU path. Thin SVD of a (m, n) row-major: u (m, k), s (k) descending,
     * vt (k, n), k = min(m, n). A is not modified. */
    enum kvs_status (*svd)(struct kvs_backend *b, const float *a, int m, int n, float *u, float *s, float *vt);

    /* K/V pool storage (engine/backend/cache_pool.h). The five entries come as a set: kv_grow NULL -> every
     * pool of this backend lives in host memory and takes the CPU path (each call a counted
     * fallback); kv_grow set -> all five are set. DKV = n_head_kv*head_dim; host arrays are marked. */
    /* optional: NULL -> CPU path. Grows L to CAP >= L->n rows, keeping its rows (CAP 0 frees). */
    enum kvs_status (*kv_grow)(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int cap);
    /* Appends T rows: k, v (T, dkv) fp32 host, stored as fp16 by the backend; pos (T) host. */
    enum kvs_status (*kv_store)(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T, const int32_t *pos,
                                const float *k, const float *v);
    /* out (T, n_head*head_dim) host = attention of q (T, n_head*head_dim) host over L's rows. MASS
     * (L->n) host, when not NULL, receives each row's attention mass summed over queries and heads. */
    enum kvs_status (*kv_attend)(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                 const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
    /* Keeps the rows whose KEEP (L->n) host byte is non-zero, in order (eviction). */
    enum kvs_status (*kv_compact)(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
    /* Copies rows [row0, row0+n) to host: k, v (n, dkv) fp16 bits, pos (n); any may be NULL. */
    enum kvs_status (*kv_read)(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                               uint16_t *k, uint16_t *v, int32_t *pos);
};

struct kvs_backend {
    const struct kvs_backend_ops *ops;
    void *ctx;                /* backend-private state */
    struct kvs_pool *pool;    /* threads for CPU paths (not owned; NULL: the caller's thread) */
    bool precise;             /* CPU products never quantize activations (kvs_ctx_params.precise) */
    char device[128];         /* "CPU" or "NVIDIA H100 80GB HBM3 (sm_90)" */
    struct kvs_op_counter *ctr; /* (KVS_OP_COUNT) where CPU fallbacks are counted (not owned; may be NULL) */
    uint64_t pool_bytes;      /* K/V pool storage allocated through this backend's own kv_grow entry */
    char err[512];            /* last error */
};

/* ---- registry ---- */

struct kvs_backend_entry {
    const char *name;
    /* Status line (static storage, valid for the process); *available tells whether create works. */
    const char *(*probe)(bool *available);
    enum kvs_status (*create)(struct kvs_backend *b, char *err, size_t errlen);
};

/* Number of registered backends (CPU is entry 0 and always available) and entry I (NULL when out
 * of range). The list is static; whether CUDA works is only known from its probe. */
int kvs_backend_count(void);
const struct kvs_backend_entry *kvs_backend_entry_at(int i);

/* Status of the CUDA backend, probed once per process (thread-safe), static storage:
 * "cuda: NVIDIA H100 80GB HBM3 (sm_90)" or why it is unavailable: "CUDA backend not built",
 * "no NVIDIA driver", "NVIDIA driver too old for CUDA 13.0", "no GPU", … Never crashes or exits
 * when CUDA is missing. AVAILABLE (may be NULL) is set to whether a GPU can be used. */
const char *kvs_backend_probe(bool *available);

/* Creates backend NAME ("cpu", "cuda", or "auto": CUDA when available, else CPU) using POOL (not
 * owned, may be NULL) for CPU paths. Asking for "cuda" where it is unavailable gives
 * KVS_ERR_UNSUPPORTED with the probe's reason in err. Free with kvs_backend_delete. */
enum kvs_status kvs_backend_new(struct kvs_backend **out, const char *name, struct kvs_pool *pool, char *err,
                                size_t errlen);
void kvs_backend_delete(struct kvs_backend *b);
const char *kvs_backend_name(const struct kvs_backend *b);
const char *kvs_backend_device(const struct kvs_backend *b);
const char *kvs_backend_error(const struct kvs_backend *b);

/* ---- wrappers: dispatch to the backend, or the CPU path where an optional entry is NULL ---- */

enum kvs_status kvs_backend_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                    float eps);
enum kvs_status kvs_backend_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                 const int32_t *pos, const float *freqs, bool neox);
/* Fills *bw for W (not owned; must outlive bw) and, where the backend keeps weights on a device,
 * uploads it. Release with kvs_backend_weight_release. */
enum kvs_status kvs_backend_weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w);
void kvs_backend_weight_release(struct kvs_backend *b, struct kvs_backend_weight *bw);
enum kvs_status kvs_backend_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                   float *y, int T);
enum kvs_status kvs_backend_attn_latent(struct kvs_backend *b, const struct kvs_attn_latent_args *a,
                                        const float *q, float *out);
enum kvs_status kvs_backend_attn_kv16(struct kvs_backend *b, const struct kvs_attn_kv16_args *a, const float *q,
                                      float *out);
enum kvs_status kvs_backend_svd(struct kvs_backend *b, const float *a, int m, int n, float *u, float *s,
                                float *vt);

/* K/V pool entries: dispatch to the backend's set, or to the CPU twins (host memory) when it has
 * none; a CPU backend's own entries are not fallbacks, another backend's NULL entries are, each
 * call counted in b->ctr[KVS_OP_FALLBACK]. B may be NULL (the CPU path, nothing counted). The rows
 * of one pool must only ever be given to the backend that grew them. */
bool kvs_backend_kv_native(const struct kvs_backend *b); /* the backend holds pools in its own memory */
enum kvs_status kvs_backend_kv_grow(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int cap);
enum kvs_status kvs_backend_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                     const int32_t *pos, const float *k, const float *v);
enum kvs_status kvs_backend_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
enum kvs_status kvs_backend_kv_compact(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
enum kvs_status kvs_backend_kv_read(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                                    uint16_t *k, uint16_t *v, int32_t *pos);

/* ---- CPU references (the oracle), usable without a backend object ---- */

/* The K/V pool twins (engine/backend/kv_pool.c, twin of kernels/kv_pool.cu), host memory; POOL (threads)
 * may be NULL. Same contracts as the vtable entries; KVS_ERR_NOMEM when memory runs out (L keeps
 * its rows and capacity), KVS_ERR_ARG for inconsistent shapes. */
enum kvs_status kvs_cpu_kv_grow(struct kvs_kv_rows *L, int dkv, int cap);
enum kvs_status kvs_cpu_kv_store(struct kvs_kv_rows *L, int dkv, int T, const int32_t *pos, const float *k,
                                 const float *v);
enum kvs_status kvs_cpu_kv_attend(struct kvs_pool *pool, const struct kvs_kv_rows *L,
                                  const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
enum kvs_status kvs_cpu_kv_compact(struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
enum kvs_status kvs_cpu_kv_read(const struct kvs_kv_rows *L, int dkv, int row0, int n, uint16_t *k, uint16_t *v,
                                int32_t *pos);

/* Attention over latents / an fp16 K/V cache on the CPU; POOL may be NULL. Returns KVS_ERR_NOMEM
 * when scratch cannot be allocated, KVS_ERR_ARG for inconsistent shapes. */
enum kvs_status kvs_cpu_attn_latent(struct kvs_pool *pool, const struct kvs_attn_latent_args *a, const float *q,
                                    float *out);
enum kvs_status kvs_cpu_attn_kv16(struct kvs_pool *pool, const struct kvs_attn_kv16_args *a, const float *q,
                                  float *out);

/* ---- CUDA discovery details (engine/backend/backend_cuda.c), for diagnostics and tests ---- */

enum kvs_gpu_driver { KVS_GPU_NO_DRIVER = 0, KVS_GPU_NO_DEVICE = 1, KVS_GPU_PRESENT = 2 };

/* Asks the NVIDIA driver (libcuda.so.1, dlopen'd; cuInit, cuDeviceGetCount) whether a GPU is there.
 * *count (may be NULL) receives the device count; DETAIL receives the loader's or driver's words. */
enum kvs_gpu_driver kvs_gpu_driver_probe(int *count, char *detail, size_t cap);

struct kvs_backend_cuda_info {
    bool lib_found;           /* a libkvscope_cuda.so exists on the search path */
    bool lib_loaded;          /* dlopen succeeded and its ABI matched */
    bool driver_loaded;       /* libcuda.so.1 opened */
    bool available;           /* a GPU can be used */
    char lib_path[512];       /* library found (or the explicit $KVS_CUDA_LIB) */
    char status[160];         /* what kvs_backend_probe returns */
    char detail[256];         /* dlerror / runtime message behind the status */
    struct kvs_cuda_probe probe; /* the runtime's answer when the library loaded */
};

/* The probe's details (probes first if needed); static storage, valid for the process. */
const struct kvs_backend_cuda_info *kvs_backend_cuda_info(void);

/* Creates the CUDA backend into B (used by the registry; fails with the probe's reason). */
enum kvs_status kvs_backend_cuda_create(struct kvs_backend *b, char *err, size_t errlen);

#endif
