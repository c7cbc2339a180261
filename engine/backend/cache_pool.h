/* The K/V cache pool (DESIGN.md §4, §7): per layer, rows of fp16 K and V with their positions,
 * growing in blocks, living in the backend's memory (host for CPU, device for CUDA) and touched
 * only through the backend's kv_* entries. Held and allocated bytes are counted here, in one place.
 * Used by the `full` press; depends on backend.h only. */
#ifndef KVS_CACHE_POOL_H
#define KVS_CACHE_POOL_H

#include "backend.h"

struct kvs_cache_pool {
    struct kvs_backend *be;   /* owner of the storage (not owned; NULL: the CPU path) */
    int n_layer, dkv, block;  /* dkv = n_head_kv*head_dim; capacity grows in BLOCK rows */
    struct kvs_kv_rows *rows; /* (n_layer) */
    struct kvs_buf stage[2];  /* backend buffers for host arrays on a device backend, grown on demand */
    char err[256];
};

/* Creates an empty pool of N_LAYER layers of DKV-wide rows on BE (may be NULL) growing in BLOCK
 * rows. Nothing is allocated in the backend until the first store. Free with kvs_cache_pool_delete
 * while BE is alive. */
enum kvs_status kvs_cache_pool_new(struct kvs_cache_pool **out, struct kvs_backend *be, int n_layer, int dkv,
                                   int block, char *err, size_t errlen);
void kvs_cache_pool_delete(struct kvs_cache_pool *p);

/* Appends T rows to LAYER: k, v (T, dkv) fp32 host (keys after RoPE), pos (T). Grows by whole blocks;
 * on failure the layer keeps its rows and p->err says why. On a backend whose memory is not the
 * host's, k and v are staged through temporary buffers. */
enum kvs_status kvs_cache_pool_store(struct kvs_cache_pool *p, int layer, int T, const int32_t *pos,
                                     const float *k, const float *v);
/* The same with k, v in the backend's memory (kvs_buf data): nothing crosses to the host. */
enum kvs_status kvs_cache_pool_store_buf(struct kvs_cache_pool *p, int layer, int T, const int32_t *pos,
                                         const float *k, const float *v);
/* out (T, n_head*head_dim) host = attention of q (T, n_head*head_dim) over LAYER's rows (query t
 * sees positions <= q_pos[t]); MASS (rows) host, when not NULL, gets each row's attention mass. */
enum kvs_status kvs_cache_pool_attend(struct kvs_cache_pool *p, int layer, int T, const int32_t *q_pos,
                                      int n_head, int n_head_kv, int head_dim, const float *q, float *out,
                                      float *mass);
/* The same with q and out in the backend's memory (q_pos and mass stay host). */
enum kvs_status kvs_cache_pool_attend_buf(struct kvs_cache_pool *p, int layer, int T, const int32_t *q_pos,
                                          int n_head, int n_head_kv, int head_dim, const float *q, float *out,
                                          float *mass);
/* Keeps LAYER's rows whose KEEP (rows) byte is set, in order, and returns whole unused blocks. */
enum kvs_status kvs_cache_pool_compact(struct kvs_cache_pool *p, int layer, const uint8_t *keep);
/* Copies rows [row0, row0+n) of LAYER to host (fp16 bits; any of k, v, pos may be NULL). */
enum kvs_status kvs_cache_pool_read(struct kvs_cache_pool *p, int layer, int row0, int n, uint16_t *k,
                                    uint16_t *v, int32_t *pos);
/* k (n_layer, dkv) fp16 bits = every layer's newest key row (its last row), zeros for a layer
 * without rows: one wait for the device, whatever the layer count. */
enum kvs_status kvs_cache_pool_newest_keys(struct kvs_cache_pool *p, uint16_t *k);
/* Forgets every row, keeping the storage for the next sequence. */
void kvs_cache_pool_reset(struct kvs_cache_pool *p);

int kvs_cache_pool_rows(const struct kvs_cache_pool *p, int layer);
/* K and V payload of the rows held (2 fp16 rows per token), what a full fp16 cache costs. */
uint64_t kvs_cache_pool_bytes_held(const struct kvs_cache_pool *p, int layer);
/* Everything allocated for LAYER: K, V and positions of every row of capacity. */
uint64_t kvs_cache_pool_bytes_alloc(const struct kvs_cache_pool *p, int layer);
/* True when the rows live in the backend's own memory (device memory for CUDA), false when they
 * take the CPU fallback in host memory. */
bool kvs_cache_pool_native(const struct kvs_cache_pool *p);

#endif
