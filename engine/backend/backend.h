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
    uint64_t clamped;         /* values the CPU twins clamped to ±65504 storing into these host rows
                               * (a device counts its own: kvs_backend_cache_saturated) */
};

/* Attention of T queries over the rows of one pool layer, scores scaled by 1/sqrt(head_dim). */
struct kvs_kv_attend_args {
    int T;
    const int32_t *q_pos;     /* (T) host; query t sees row j only when pos_j <= q_pos[t] */
    int n_head, n_head_kv, head_dim;
};

/* How a CommonKV latent segment (engine/backend/latent_pool.h) stores a row of WIDTH fp32 values:
 * IEEE fp16, or packed by the row codec of engine/cpu/quant_codec.h (kernels/quant_codec.cuh on the
 * device): quantized latents. A codec is named, never a function pointer, so every backend can
 * implement it in its own memory. */
#define KVS_LAT_MAX_ARR 16
enum kvs_lat_codec { KVS_LAT_FP16 = 0, KVS_LAT_QROW = 1 };
struct kvs_lat_fmt {
    int width, row_bytes;     /* row_bytes = 2*width for fp16, kvs_qrow_bytes(width, bits, group) packed */
    uint32_t codec;           /* enum kvs_lat_codec */
    uint32_t bits, group;     /* KVS_LAT_QROW: bits per code (2, 4, 8) and elements per group */
};

/* The rows of one latent segment in a backend's memory: N_ARR arrays in lock-step (a layer group's
 * private pool: one array per layer, row i of each the same token; a shared pool: one array) and
 * the tokens' positions. Only backend entries read or write the storage. */
struct kvs_lat_rows {
    void *rows[KVS_LAT_MAX_ARR]; /* n_arr x (cap, row_bytes); backend memory */
    void *pos;                /* (cap) int32 original positions; backend memory */
    int n_arr, n, cap;        /* arrays, rows held, rows allocated */
    uint64_t clamped;         /* values the CPU twins clamped to ±65504 storing fp16 host rows */
};

/* Attention of T queries over one layer's CommonKV latent rows as they sit in a backend's latent
 * segments (struct kvs_lat_rows: a group's private segment, array = the layer's index in the group,
 * and its shared segment(s)), positions in any order and not dense: keys k_j = RoPE_{pos_j}(B_k[g]
 * c_j + b_k[g]) rebuilt from the rows (fp16, or packed: seg_f), never stored; values by re-association, out_h =
 * (P_h C) B_v[g]ᵀ + b_v[g]; query t sees row j only when pos_j <= q_pos[t]; no visible row: 0.
 * Every float pointer here is backend memory (a kvs_buf's data, uploaded once per press). */
#define KVS_LAT_ATTEND_MAX_SEGS 4
struct kvs_lat_attend_args {
    int T;
    const int32_t *q_pos;     /* (T) host */
    int n_head, n_head_kv, head_dim, rank;
    float scale;              /* usually 1/sqrt(head_dim) */
    bool neox;
    const float *bk, *bv;     /* (n_head_kv*head_dim, rank) the layer's B_k, B_v, row-major */
    const float *bk_bias, *bv_bias; /* (n_head_kv*head_dim) b_k, b_v, or NULL */
    const float *freqs;       /* (head_dim/2) RoPE inverse frequencies */
    const struct kvs_lat_fmt *f; /* the segments' format; width == rank */
    int n_segs;               /* <= KVS_LAT_ATTEND_MAX_SEGS; rows are numbered segment after segment */
    struct { const struct kvs_lat_rows *L; int arr; } segs[KVS_LAT_ATTEND_MAX_SEGS];
    int mass_from;            /* queries t >= mass_from add their weights to the mass */
    /* lat-cpu: what the CPU twin needs beyond the device's arguments (a device backend ignores
     * keys, bk_pack and the RoPE table), and a format per segment (packed rows beside fp16 ones) */
    uint32_t keys;            /* enum kvs_ckv_keys (record.h): the CPU's key kernel; BF16 and INT8 need
                               * bk_pack and a build that has the kernel, else fp32 with bk */
    const void *bk_pack;      /* host: B_k packed for that kernel (struct kvs_ckv_bf16_mat or
                               * kvs_ckv_i8_mat, engine/cpu/latent_keys.h), or NULL */
    const float *rope_cs;     /* host (rope_n_pos, head_dim/2, 2) cos, sin of pos*freqs, or NULL: the
                               * CPU builds one per call */
    int rope_n_pos;
    const struct kvs_lat_fmt *seg_f[KVS_LAT_ATTEND_MAX_SEGS]; /* segment i's format, or NULL: f */
    /* eviction scores by position in the backend's memory (n_score floats), or NULL: with them each
     * row's mass (what MASS would receive) is added at the row's position where the scores are, and
     * MASS is not used; the rows' positions must be distinct */
    float *score;
    int n_score;
};

/* The merged tokens of a MiniCache layer pair (la, la+1) in a backend's memory (DESIGN.md §5
 * `minicache`): per token and KV head one unit direction for the keys and one for the values,
 * shared by both layers, and each layer's own norms. Only backend entries read or write it. */
struct kvs_mc_rows {
    void *ek, *ev;            /* (cap, nkv*d) fp16 unit directions per head; backend memory */
    void *nrm;                /* (cap, 4*nkv) fp16: |k_la|, |k_la+1|, |v_la|, |v_la+1| per head */
    void *pos;                /* (cap) int32 original positions */
    int n, cap;               /* rows held, rows allocated */
    uint64_t clamped;         /* norms (and direction values) the CPU twin clamped to ±65504 */
};

/* The quantized K/V pool of the `quant` press and its compositions (engine/backend/kvq_pool.h;
 * DESIGN.md §5, §7): per layer an fp16 tier of the newest rows (a struct kvs_kv_rows, through
 * the kv_* entries) and packed KIVI blocks (engine/cpu/quant_codec.h: keys per channel over a
 * block's tokens, values per token in channel groups), all in the backend's memory, plus the
 * snapkv attention mass by position. The block table is host bookkeeping kept by the entries. */
struct kvs_kvq_fmt {
    int dkv;                  /* n_head_kv*head_dim */
    uint32_t bits, group;     /* 2, 4 or 8 bits; GROUP tokens per key block = channels per value group */
    uint32_t vrow;            /* kvs_qrow_bytes(dkv, bits, group): one packed value row */
};
struct kvs_kvq_rows {
    struct kvs_kv_rows f16;   /* the fp16 tier, oldest first */
    void *kq;                 /* (kq_cap) bytes: key blocks back to back, block b at blk_koff[b]; backend memory */
    void *vq;                 /* (tq_cap, vrow) packed value rows of the packed tokens, block after block */
    void *pq;                 /* (tq_cap) int32 positions of the packed tokens */
    float *score;             /* (n_score) attention mass by position (snapkv), or NULL; backend memory */
    size_t kq_bytes, kq_cap;  /* key bytes held, allocated */
    int tq, tq_cap;           /* packed tokens held, allocated */
    int n_score;
    int nblk, blk_cap;        /* blocks held; room in the three host arrays below */
    uint32_t *blk_nt;         /* (blk_cap) host: tokens of block b (< group after an eviction) */
    uint32_t *blk_koff;       /* (blk_cap) host: byte offset of block b's keys in kq */
    uint32_t *blk_t0;         /* (blk_cap) host: row of block b's first token in vq and pq */
};

/* A weight as one backend sees it: the model's weight and, once prepared, its device copy. */
struct kvs_backend_weight {
    const struct kvs_weight *w;
    void *dev;                /* backend-owned (e.g. struct kvs_cuda_weight *); NULL: CPU path */
    bool table;               /* read by rows (embedding), never a product operand: the backend may
                               * keep it in a more precise 2-byte type than the products' */
    bool exact;               /* a small factor (CommonKV's A) kept in fp32 on a device, its products in
                               * fp32: a 16-bit copy would add its rounding to the cache's own */
};

struct kvs_backend;
struct kvs_op_counter;

struct kvs_backend_ops {
    const char *name;         /* "cpu", "cuda" */
    void (*destroy)(struct kvs_backend *b);

    /* Buffers in the backend's memory (activations of the forward pass, constants such as norm
     * weights and biases). The four entries come as a set: buf_alloc NULL -> the backend computes on
     * host memory, buffers are malloc'd and up/downloads are memcpy. */
    /* optional: NULL -> host memory. *data receives BYTES (>= 1) of backend memory. */
    enum kvs_status (*buf_alloc)(struct kvs_backend *b, void **data, size_t bytes);
    void (*buf_free)(struct kvs_backend *b, void *data);
    /* Copies BYTES from host SRC to backend memory DST, ordered after earlier work; from memory of
     * host_alloc the copy may still run after the call returns: SRC must then stay unchanged until
     * the next download. */
    enum kvs_status (*buf_upload)(struct kvs_backend *b, void *dst, const void *src, size_t bytes);
    /* Copies BYTES from backend memory SRC to host DST once all earlier work is done (waits). */
    enum kvs_status (*buf_download)(struct kvs_backend *b, void *dst, const void *src, size_t bytes);
    /* optional: NULL -> malloc. Host memory the backend copies to and from fastest (pinned for
     * CUDA): staging for the logits and the press boundary. */
    enum kvs_status (*host_alloc)(struct kvs_backend *b, void **p, size_t bytes);
    void (*host_free)(struct kvs_backend *b, void *p);

    /* optional: NULL -> nothing. Named ranges for a profiler's timeline (NVTX on CUDA), nested. */
    void (*range_push)(struct kvs_backend *b, const char *name);
    void (*range_pop)(struct kvs_backend *b);

    /* Per-token operations: every float and int32 pointer below is in the backend's memory (a
     * kvs_buf's data), so a token's activations stay there through every layer. */
    /* out (T, n) = RMSNorm of x (T, n) with weight w (n). */
    enum kvs_status (*rmsnorm)(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                               float eps);
    /* Rotates x (T, n_heads, head_dim) in place, token t at pos[t]; freqs (head_dim/2). */
    enum kvs_status (*rope)(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim, const int32_t *pos,
                            const float *freqs, bool neox);
    /* optional: NULL -> the weights are read as the model stores them (CPU). Chooses the type of
     * the device copies made from now on: WANT "auto" (the device's best), "bf16" or "fp16";
     * KVS_ERR_UNSUPPORTED when the device cannot compute in it. Sets b->weights. */
    enum kvs_status (*set_weights)(struct kvs_backend *b, const char *want);
    /* optional: NULL -> CPU path (bw->dev stays NULL). Makes a device copy of bw->w. */
    enum kvs_status (*weight_prepare)(struct kvs_backend *b, struct kvs_backend_weight *bw);
    /* optional: NULL -> nothing to release */
    void (*weight_release)(struct kvs_backend *b, struct kvs_backend_weight *bw);
    /* y (T, rows) = x (T, cols) · Wᵀ; on a backend with weight_prepare, only called when bw->dev is set. */
    enum kvs_status (*matmul)(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x, float *y,
                              int T);
    /* out (T, cols) = rows TOKENS (T, checked by the caller) of the table BW (n_vocab, cols). */
    enum kvs_status (*embed)(struct kvs_backend *b, const struct kvs_backend_weight *bw, const int32_t *tokens,
                             int T, float *out);
    /* y (T, n) += bias (n) on every row. */
    enum kvs_status (*add_bias)(struct kvs_backend *b, float *y, const float *bias, int T, int n);
    /* x (n) += y (n): the residual stream. */
    enum kvs_status (*add)(struct kvs_backend *b, float *x, const float *y, size_t n);
    /* g (n) = silu(g) · u (n). */
    enum kvs_status (*swiglu)(struct kvs_backend *b, float *g, const float *u, size_t n);
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
    /* Appends T rows: k, v (T, dkv) fp32 in backend memory, stored as fp16; pos (T) host. */
    enum kvs_status (*kv_store)(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T, const int32_t *pos,
                                const float *k, const float *v);
    /* out (T, n_head*head_dim) = attention of q (T, n_head*head_dim) over L's rows, both in backend
     * memory. MASS (L->n) host, when not NULL, receives each row's attention mass summed over
     * queries and heads. */
    enum kvs_status (*kv_attend)(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                 const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
    /* Keeps the rows whose KEEP (L->n) host byte is non-zero, in order (eviction). */
    enum kvs_status (*kv_compact)(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
    /* Copies rows [row0, row0+n) to host: k, v (n, dkv) fp16 bits, pos (n); any may be NULL. */
    enum kvs_status (*kv_read)(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                               uint16_t *k, uint16_t *v, int32_t *pos);
    /* optional: NULL -> kv_read per row. k (n, dkv) host fp16 bits = the key row ROWS[i] (host) of
     * LS[i] for every i, with one wait for the device: what a step record reads of every layer. */
    enum kvs_status (*kv_keys_gather)(struct kvs_backend *b, const struct kvs_kv_rows *const *Ls, int n, int dkv,
                                      const int32_t *rows, uint16_t *k);

    /* CommonKV latent segments (engine/backend/latent_pool.h), in the formats lat_codec accepts
     * (fp16 at least; rows of another format take the CPU twins in host memory). The five entries
     * come as a set: lat_grow NULL -> every latent segment of this backend lives in host memory
     * (each call a counted fallback). Host arrays are marked; F is the segment's format. */
    /* optional: NULL -> CPU path. Grows L to CAP >= L->n rows of its n_arr arrays, keeping them (CAP 0 frees). */
    enum kvs_status (*lat_grow)(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int cap);
    /* Writes rows [row0, row0+T) of array ARR from x (T, width) fp32 in the backend's memory (a
     * kvs_buf's data: the latents a device computed stay there), and their positions from POS (T)
     * host unless NULL; row0 + T <= cap. L->n is the caller's to move. */
    enum kvs_status (*lat_store)(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr,
                                 int row0, int T, const float *x, const int32_t *pos);
    /* x (n, width) fp32 host = rows [row0, row0+n) of array ARR; POS (n) host gets their positions
     * unless NULL. */
    enum kvs_status (*lat_read)(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                int arr, int row0, int n, float *x, int32_t *pos);
    /* optional: NULL -> through the host (lat_read, then lat_store from a staging buffer). Rows
     * [row0, row0+n) of SRC's array SARR, decoded from SF, written in DF as rows [drow0, drow0+n) of
     * DST's array DARR (drow0 + n <= dst->cap; same width): fp16 rows that leave the residual window
     * become packed ones without leaving the backend. Positions from POS (n) host unless NULL;
     * dst->n is the caller's to move. */
    enum kvs_status (*lat_copy)(struct kvs_backend *b, const struct kvs_lat_rows *src, const struct kvs_lat_fmt *sf,
                                int sarr, int row0, int n, struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df,
                                int darr, int drow0, const int32_t *pos);
    /* Keeps the rows whose KEEP (L->n) host byte is set, in order, in every array; sets L->n. */
    enum kvs_status (*lat_compact)(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   const uint8_t *keep);
    /* Merge: appends M rows to array 0 of DST (dst->n += M; room allocated): row i = Σ_a W[a] ·
     * row IDX[i] of SRC's array a (a < src->n_arr, fp32 fused multiply-adds in order of a, then
     * rounded once), at that row's position. IDX (M), W (src->n_arr) host. Same format both. */
    enum kvs_status (*lat_merge)(struct kvs_backend *b, const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                 const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w);
    /* optional: NULL -> CPU path on host rows (a counted fallback; an error on a backend whose
     * memory is not the host's). Attention over latent rows (struct kvs_lat_attend_args) of this
     * backend's fp16 segments: q, out (T, n_head*head_dim) backend memory; MASS (rows of all
     * segments, in order) host, or NULL: Σ over queries t >= mass_from and heads of the weights. */
    enum kvs_status (*lat_attend)(struct kvs_backend *b, const struct kvs_lat_attend_args *a, const float *q,
                                  float *out, float *mass);

    /* Device memory and fp16 activation overflow (the two come as a set). */
    /* optional: NULL -> the backend computes in host memory: no card to report. *used: the card's
     * memory in use by every process (this one's context included), *total: its size, bytes. */
    enum kvs_status (*mem_info)(struct kvs_backend *b, uint64_t *used, uint64_t *total);
    /* optional: NULL -> products never narrow activations. *count: activation values the products
     * clamped to ±65504 converting them to fp16 since the backend was made (waits for the device). */
    enum kvs_status (*acts_saturated)(struct kvs_backend *b, uint64_t *count);
    /* optional: NULL -> the backend's caches are host rows, counted by the CPU twins. *count: values
     * its device stores (kv_store, lat_store, lat_merge, mc_merge) clamped to ±65504 since the
     * backend was made (waits for the device); the host rows' count is added by the wrapper. */
    enum kvs_status (*cache_saturated)(struct kvs_backend *b, uint64_t *count);
    /* MiniCache merged pairs (engine/backend/mc_pool.h; struct kvs_mc_rows): the unmerged rows of
     * both layers sit in a K/V cache pool (kv_* entries); these entries score, merge and attend. The
     * five entries come as a set: mc_grow NULL -> every pair of this backend lives in host memory
     * and takes the CPU twins of engine/cpu/minicache.h (each call a counted fallback; an error when
     * the K/V rows are device memory). NKV heads of width D; host arrays are marked. */
    /* optional: NULL -> CPU path. Grows P to CAP >= P->n rows, keeping them (CAP 0 frees). */
    enum kvs_status (*mc_grow)(struct kvs_backend *b, struct kvs_mc_rows *P, int nkv, int d, int cap);
    /* For the M rows IDX (host) of layers A and B (the same tokens, row for row): DIST (M) host =
     * angular distance acos(û_a·û_b)/π averaged over heads, keys then values; DOTS (M, 2*NKV) host,
     * or NULL = the cosines û_a·û_b, keys' heads first. */
    enum kvs_status (*mc_score)(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                int nkv, int d, const int32_t *idx, int m, float *dist, double *dots);
    /* Appends M - KEEP rows to P (room allocated; P->n moves): for r in [KEEP, M), row IDX[r] (host)
     * of A and B merged per head into the SLERP at T of their unit directions (renormalised) with
     * both layers' norms, at A's position. The first KEEP rows of IDX are retained, not merged. */
    enum kvs_status (*mc_merge)(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                struct kvs_mc_rows *P, int nkv, int d, float t, const int32_t *idx, int m,
                                int keep);
    /* out (T, n_head*head_dim) = attention of q over L's rows and P's merged rows (P may be NULL)
     * rebuilt as SIDE's keys and values (SIDE 0: P's first layer, 1: its second): k = |k_side| ·
     * dir_k per head, rounded to fp16 like a stored row; q, out backend memory. */
    enum kvs_status (*mc_attend)(struct kvs_backend *b, const struct kvs_kv_rows *L, const struct kvs_mc_rows *P,
                                 int side, const struct kvs_kv_attend_args *a, const float *q, float *out);
    /* Copies rows [row0, row0+n) of P to host: ek, ev (n, nkv*d), nrm (n, 4*nkv) fp16 bits, pos (n);
     * any may be NULL. */
    enum kvs_status (*mc_read)(struct kvs_backend *b, const struct kvs_mc_rows *P, int nkv, int d, int row0, int n,
                               uint16_t *ek, uint16_t *ev, uint16_t *nrm, int32_t *pos);
    /* Quantized K/V pool (struct kvs_kvq_rows, engine/backend/kvq_pool.h). The six entries come as a
     * set: kvq_grow NULL -> every quantized pool of this backend lives in host memory and takes the
     * CPU twins (engine/cpu/kv_quant.h; each call a counted fallback). The fp16 tier L->f16 goes
     * through the kv_* entries. Rows are numbered packed tokens first (block order), then the fp16
     * tier. Host arrays are marked. */
    /* optional: NULL -> CPU path. Grows the packed tier to TQ_CAP tokens and KQ_CAP key bytes,
     * keeping what it holds, and allocates L->score (N_SCORE floats, zeroed) when N_SCORE > 0 and
     * there is none; all zero frees the packed tier and the score (not the fp16 tier). */
    enum kvs_status (*kvq_grow)(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                int tq_cap, size_t kq_cap, int n_score);
    /* Packs fp16 rows [0, f->group) of L->f16 into block L->nblk (keys per channel, values per
     * token; positions copied) and appends it: room in blk_*, tq_cap and kq_cap is the caller's.
     * L->f16 is left as it was (the pool drops the rows). */
    enum kvs_status (*kvq_quantize)(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f);
    /* out (T, n_head*head_dim) = attention of q over every row (packed rows decoded as
     * kvs_qcol/qrow_decode then rounded to fp16, exactly as stored rows), q and out backend
     * memory. With SCORE, each row's attention mass (Σ over queries and heads, rows outer) is
     * added to L->score at the row's position. */
    enum kvs_status (*kvq_attend)(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                  const struct kvs_kv_attend_args *a, const float *q, float *out, bool score);
    /* Keeps the packed tokens whose KEEP (L->tq) host byte is set, in order: whole blocks kept stay
     * byte for byte, blocks that lose every token go, the others are decoded and re-encoded with
     * their kept tokens (values and positions move as they are). Updates the block table. */
    enum kvs_status (*kvq_compact)(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                   const uint8_t *keep);
    /* Copies the packed tier to host as stored: kq (L->kq_bytes), vq (L->tq, vrow), pq (L->tq);
     * any may be NULL. */
    enum kvs_status (*kvq_read)(struct kvs_backend *b, const struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                uint8_t *kq, uint8_t *vq, int32_t *pq);
    /* Eviction scores (snapkv): POOLED (n_ctx) host, unless NULL, = L->score max-pooled over
     * KERNEL neighbouring positions (kvs_snap_pool), -inf at positions the layer does not hold;
     * then L->score is zeroed. n_ctx <= L->n_score. */
    enum kvs_status (*kvq_scores)(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                  int n_ctx, int kernel, float *pooled);
    /* optional: NULL -> fp16 rows only. Whether the lat_* entries (lat_attend included) take rows
     * of CODEC (enum kvs_lat_codec): what the backend (for CUDA: the loaded library) reports. */
    bool (*lat_codec)(const struct kvs_backend *b, uint32_t codec);
    /* optional: NULL -> CPU path on host rows (a counted fallback). Similarity of rows [row0,
     * row0+n) of L: out[i] = cosine of row i of arrays ARR0 and ARR1 (ADJ false), or the mean over
     * a in [arr0, arr1) of the cosines of arrays a and a+1 (ADJ true); sums in fp64 in element
     * order, rounded once; a zero row scores 0. OUT (n) host. */
    enum kvs_status (*lat_cosine)(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                  int arr0, int arr1, bool adj, int row0, int n, float *out);
};

struct kvs_backend {
    const struct kvs_backend_ops *ops;
    void *ctx;                /* backend-private state */
    struct kvs_pool *pool;    /* threads for CPU paths (not owned; NULL: the caller's thread) */
    bool precise;             /* CPU products never quantize activations (kvs_ctx_params.precise) */
    char device[128];         /* "CPU" or "NVIDIA H100 80GB HBM3 (sm_90)" */
    struct kvs_op_counter *ctr; /* (KVS_OP_COUNT) where CPU fallbacks are counted (not owned; may be NULL) */
    uint64_t pool_bytes;      /* K/V pool and latent segment storage allocated through this backend's own
                               * kv_grow and lat_grow entries */
    char weights[8];          /* type of the device copies of the weights: "bf16", "fp16"; "" when the
                               * backend reads the model's own (CPU) */
    /* weights uploaded as fp16 whose |value| exceeded 65504 and was clamped (0 for bf16 or the CPU) */
    uint64_t weights_saturated;
    /* host<->backend copies through the buffer wrappers (zero on a host-memory backend) */
    uint64_t xfer_up_bytes, xfer_down_bytes, xfer_up_calls, xfer_down_calls;
    char err[512];            /* last error */
    /* activation values fp16 products clamped to ±65504, as of the last kvs_backend_acts_saturated
     * (0 for bf16 or the CPU) */
    uint64_t acts_saturated;
    /* values fp16 cache stores clamped to ±65504 (every backend, any weight type): those the CPU
     * twins clamped in host rows, counted as they happen, and the total with the device's as of the
     * last kvs_backend_cache_saturated */
    uint64_t cache_clamped_host, cache_saturated;
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

/* The probe's status with the detail behind it, one line, static storage (probes first if needed):
 * "no NVIDIA driver (libcuda.so.1: cannot open shared object file: No such file or directory)",
 * "NVIDIA driver too old for CUDA 13.0 (driver supports CUDA 12.4: ...)", "no GPU (...)". */
const char *kvs_backend_probe_detail(void);

/* Creates backend NAME ("cpu", "cuda", or "auto": CUDA when available, else CPU) using POOL (not
 * owned, may be NULL) for CPU paths. Asking for "cuda" where it is unavailable gives
 * KVS_ERR_UNSUPPORTED with the probe's reason in err. Free with kvs_backend_delete. */
enum kvs_status kvs_backend_new(struct kvs_backend **out, const char *name, struct kvs_pool *pool, char *err,
                                size_t errlen);
void kvs_backend_delete(struct kvs_backend *b);
const char *kvs_backend_name(const struct kvs_backend *b);
const char *kvs_backend_device(const struct kvs_backend *b);
const char *kvs_backend_error(const struct kvs_backend *b);

/* ---- buffers in the backend's memory (B may be NULL: host memory) ---- */

/* A buffer in a backend's memory: host memory for the CPU backend (so the forward pass has one code
 * path), device memory for CUDA. DATA may only be handed to that backend's entries. */
struct kvs_buf {
    void *data;
    size_t bytes;
};

/* True when the backend computes on host memory (buffers are malloc'd, copies are memcpy). */
bool kvs_backend_host_memory(const struct kvs_backend *b);
/* Allocates BYTES in B's memory into *buf (zeroed on failure: KVS_ERR_NOMEM or KVS_ERR_BACKEND with
 * b->err). Free with kvs_backend_buf_free (NULL data is fine) while B is alive. */
enum kvs_status kvs_backend_buf_alloc(struct kvs_backend *b, struct kvs_buf *buf, size_t bytes);
void kvs_backend_buf_free(struct kvs_backend *b, struct kvs_buf *buf);
/* Copies BYTES between host memory and BUF at byte offset OFF (checked against buf->bytes: KVS_ERR_ARG).
 * Counted in b->xfer_* unless B is host memory. Contracts of buf_upload / buf_download. */
enum kvs_status kvs_backend_buf_upload(struct kvs_backend *b, struct kvs_buf *buf, size_t off, const void *src,
                                       size_t bytes);
enum kvs_status kvs_backend_buf_download(struct kvs_backend *b, void *dst, const struct kvs_buf *buf, size_t off,
                                         size_t bytes);
/* Host staging memory (pinned for CUDA); NULL when out of memory. Free with kvs_backend_host_free
 * while B is alive. */
void *kvs_backend_host_alloc(struct kvs_backend *b, size_t bytes);
void kvs_backend_host_free(struct kvs_backend *b, void *p);

/* Opens / closes a named range on B's profiler timeline (NVTX for CUDA: per step and per layer);
 * nothing on a backend without one (B may be NULL). NAME is copied by the tool, if any. */
void kvs_backend_range_push(struct kvs_backend *b, const char *name);
void kvs_backend_range_pop(struct kvs_backend *b);

/* ---- per-token operations on backend memory (the forward pass): every array is a kvs_buf's
 * data; contracts of the vtable entries of the same names ---- */

enum kvs_status kvs_backend_rmsnorm_buf(struct kvs_backend *b, float *out, const float *x, const float *w, int T,
                                        int n, float eps);
enum kvs_status kvs_backend_rope_buf(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                     const int32_t *pos, const float *freqs, bool neox);
enum kvs_status kvs_backend_matmul_buf(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                       float *y, int T);
enum kvs_status kvs_backend_embed(struct kvs_backend *b, const struct kvs_backend_weight *bw, const int32_t *tokens,
                                  int T, float *out);
enum kvs_status kvs_backend_add_bias(struct kvs_backend *b, float *y, const float *bias, int T, int n);
enum kvs_status kvs_backend_add(struct kvs_backend *b, float *x, const float *y, size_t n);
enum kvs_status kvs_backend_swiglu(struct kvs_backend *b, float *g, const float *u, size_t n);

/* ---- the same operations on host arrays (tests, offline work): a backend that is not host
 * memory gets them staged through temporary buffers ---- */

enum kvs_status kvs_backend_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                    float eps);
enum kvs_status kvs_backend_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                                 const int32_t *pos, const float *freqs, bool neox);
/* Chooses the type of the weights' device copies ("auto", "bf16", "fp16"; NULL or "" = "auto")
 * before any weight is prepared; a backend that reads the model's own weights accepts any and
 * leaves b->weights "". KVS_ERR_ARG for another name, KVS_ERR_UNSUPPORTED (b->err says why) when
 * the device cannot use the type asked for. */
enum kvs_status kvs_backend_set_weights(struct kvs_backend *b, const char *want);
/* Fills *bw for W (not owned; must outlive bw) and, where the backend keeps weights on a device,
 * uploads it. Release with kvs_backend_weight_release. */
enum kvs_status kvs_backend_weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w);
/* The same for a small factor kept exact on a device (bw->exact is set). */
enum kvs_status kvs_backend_factor_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
                                           const struct kvs_weight *w);
/* The same for a lookup table (the embedding): bw->table is set. */
enum kvs_status kvs_backend_table_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw,
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
/* kv_store's k, v and kv_attend's q, out are in B's memory (kvs_buf data), as for the entries. */
enum kvs_status kvs_backend_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                     const int32_t *pos, const float *k, const float *v);
enum kvs_status kvs_backend_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass);
enum kvs_status kvs_backend_kv_compact(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep);
enum kvs_status kvs_backend_kv_keys_gather(struct kvs_backend *b, const struct kvs_kv_rows *const *Ls, int n,
                                           int dkv, const int32_t *rows, uint16_t *k);
enum kvs_status kvs_backend_kv_read(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                                    uint16_t *k, uint16_t *v, int32_t *pos);

/* Latent segment entries: the backend's set for the formats it takes (lat_codec), or the CPU twins
 * (host memory) when it has none or not for that format; a CPU backend's own are not fallbacks, another backend's are,
 * each call counted in b->ctr[KVS_OP_FALLBACK]. B may be NULL (the CPU path). The rows of one
 * segment must only ever be given to the backend that grew them, with the same format. */
bool kvs_backend_lat_native(const struct kvs_backend *b, const struct kvs_lat_fmt *f);
enum kvs_status kvs_backend_lat_grow(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                     int cap);
/* lat_store with X (T, width) in B's memory (the entry's contract) ... */
enum kvs_status kvs_backend_lat_store_buf(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                          int arr, int row0, int T, const float *x, const int32_t *pos);
/* ... and with X host (tests, offline work): staged through a temporary buffer of B's memory. */
enum kvs_status kvs_backend_lat_store(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      int arr, int row0, int T, const float *x, const int32_t *pos);
/* The lat_copy entry; without one, read to the host and stored from there (counted as a fallback
 * on a backend whose memory is not the host's). Both segments on B, or both in host memory. */
enum kvs_status kvs_backend_lat_copy(struct kvs_backend *b, const struct kvs_lat_rows *src,
                                     const struct kvs_lat_fmt *sf, int sarr, int row0, int n,
                                     struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df, int darr, int drow0,
                                     const int32_t *pos);
enum kvs_status kvs_backend_lat_read(struct kvs_backend *b, const struct kvs_lat_rows *L,
                                     const struct kvs_lat_fmt *f, int arr, int row0, int n, float *x, int32_t *pos);
enum kvs_status kvs_backend_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                        const uint8_t *keep);
enum kvs_status kvs_backend_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src,
                                      struct kvs_lat_rows *dst, const struct kvs_lat_fmt *f, const int32_t *idx,
                                      int m, const float *w);
/* The lat_attend entry, or the CPU twin on a host-memory backend (packed rows included there);
 * KVS_ERR_STATE when the rows or q/out are device memory the backend cannot attend over. */
enum kvs_status kvs_backend_lat_attend(struct kvs_backend *b, const struct kvs_lat_attend_args *a, const float *q,
                                       float *out, float *mass);
/* True when B's lat_attend takes A's segments where they are (every segment's format native). */
bool kvs_backend_lat_attend_native(const struct kvs_backend *b, const struct kvs_lat_attend_args *a);
/* lat_attend over rows and arrays all in host memory (a caller that staged a device's rows to the
 * host, or B NULL): the CPU twin on B's threads (or POOL's when B is NULL), counted as a fallback
 * on a backend whose memory is not the host's. */
enum kvs_status kvs_backend_lat_attend_host(struct kvs_backend *b, struct kvs_pool *pool,
                                            const struct kvs_lat_attend_args *a, const float *q, float *out,
                                            float *mass);
/* The lat_cosine entry on B's rows, or the CPU twin where B has none or the rows are not native. */
enum kvs_status kvs_backend_lat_cosine(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                       int arr0, int arr1, bool adj, int row0, int n, float *out);

/* ---- the card: memory and fp16 activation overflow ---- */

/* The card's memory in use (every process) and its size, bytes: KVS_OK, or KVS_ERR_UNSUPPORTED
 * with both 0 on a backend without device memory (the CPU; B NULL), KVS_ERR_BACKEND with b->err. */
enum kvs_status kvs_backend_mem_info(struct kvs_backend *b, uint64_t *used, uint64_t *total);
/* Reads the device's count of activation values clamped to the fp16 range into b->acts_saturated
 * and *count (0 and KVS_OK on a backend that never narrows them, or B NULL). Waits for the device:
 * once a step, after its last download, costs no extra synchronisation. */
enum kvs_status kvs_backend_acts_saturated(struct kvs_backend *b, uint64_t *count);
/* Values the K/V, latent and MiniCache fp16 stores clamped to ±65504 instead of storing ±inf
 * (issue 13), since B was made: the device's count (read as acts_saturated's, once a step) plus the
 * host rows' (b->cache_clamped_host), into b->cache_saturated and *count. 0 and KVS_OK for B NULL; a
 * failed device read gives the last count and the error. A separate count from acts_saturated: its
 * cause is the model's keys and values, not the weights' type, and bf16 weights do not remove it. */
enum kvs_status kvs_backend_cache_saturated(struct kvs_backend *b, uint64_t *count);
/* MiniCache pair entries: the backend's set, or the CPU twins (host memory) when it has none; a
 * CPU backend's own are not fallbacks, another backend's are, each call counted in
 * b->ctr[KVS_OP_FALLBACK]; B may be NULL (the CPU path). KVS_ERR_STATE when the rows are device
 * memory the CPU twins cannot read. mc_grow keeps b->pool_bytes. */
bool kvs_backend_mc_native(const struct kvs_backend *b);
enum kvs_status kvs_backend_mc_grow(struct kvs_backend *b, struct kvs_mc_rows *P, int nkv, int d, int cap);
enum kvs_status kvs_backend_mc_score(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                     int nkv, int d, const int32_t *idx, int m, float *dist, double *dots);
enum kvs_status kvs_backend_mc_merge(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                     struct kvs_mc_rows *P, int nkv, int d, float t, const int32_t *idx, int m,
                                     int keep);
enum kvs_status kvs_backend_mc_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                      const struct kvs_mc_rows *P, int side, const struct kvs_kv_attend_args *a,
                                      const float *q, float *out);
enum kvs_status kvs_backend_mc_read(struct kvs_backend *b, const struct kvs_mc_rows *P, int nkv, int d, int row0,
                                    int n, uint16_t *ek, uint16_t *ev, uint16_t *nrm, int32_t *pos);
/* Bytes of one merged row: two directions, four norms per head, a position. */
uint64_t kvs_mc_row_bytes(int nkv, int d);
/* Quantized K/V pool entries: the backend's set, or the CPU twins (host memory) when it has none;
 * a CPU backend's own are not fallbacks, another backend's are, each call counted in
 * b->ctr[KVS_OP_FALLBACK]. B may be NULL (the CPU path). kvq_attend's q and out are B's memory
 * when it has the entries, host arrays when it has not (the whole pool is then host memory). */
bool kvs_backend_kvq_native(const struct kvs_backend *b);
enum kvs_status kvs_backend_kvq_grow(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                     int tq_cap, size_t kq_cap, int n_score);
enum kvs_status kvs_backend_kvq_quantize(struct kvs_backend *b, struct kvs_kvq_rows *L,
                                         const struct kvs_kvq_fmt *f);
enum kvs_status kvs_backend_kvq_attend(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                       const struct kvs_kv_attend_args *a, const float *q, float *out, bool score);
enum kvs_status kvs_backend_kvq_compact(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                        const uint8_t *keep);
enum kvs_status kvs_backend_kvq_read(struct kvs_backend *b, const struct kvs_kvq_rows *L,
                                     const struct kvs_kvq_fmt *f, uint8_t *kq, uint8_t *vq, int32_t *pq);
enum kvs_status kvs_backend_kvq_scores(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                       int n_ctx, int kernel, float *pooled);

/* ---- CPU references (the oracle), usable without a backend object ---- */

/* The twins of the kernels/ operations live in engine/cpu/<stem>.h, one header per stem
 * (attention.h, kv_pool.h, latent_pool.h, latent_attend.h). */


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
