/* MiniCache's cache pool (DESIGN.md §4, §5 `minicache`, §7): every layer's unmerged fp16 K/V rows in
 * a K/V cache pool (cache_pool.h) and, per layer pair (la, la+1), the merged rows (struct
 * kvs_mc_rows: shared unit directions, each layer's norms, positions), all in the backend's memory
 * and touched only through its kv_* and mc_* entries. Held and allocated bytes are counted here,
 * in one place. The press decides what merges; this module moves no row by itself.
 * Depends on backend.h and cache_pool.h only. */
#ifndef KVS_MC_POOL_H
#define KVS_MC_POOL_H

#include "backend.h"
#include "cache_pool.h"

struct kvs_mc_pool {
    struct kvs_backend *be;     /* owner of the storage (not owned; NULL: the CPU path) */
    int n_layer, nkv, d, dkv, block; /* rows and merged rows grow in BLOCK rows */
    struct kvs_cache_pool *rows; /* every layer's unmerged rows */
    int n_pairs;
    struct kvs_mc_rows *pairs;  /* (n_pairs) merged rows of each pair */
    int *pair_la;               /* (n_pairs) the pair's first layer */
    char err[256];
};

/* Creates an empty pool of N_LAYER layers of NKV heads of width D on BE (may be NULL) with N_PAIRS
 * pairs whose first layers are LA (n_pairs; la+1 < n_layer); storage grows in BLOCK rows and
 * nothing is allocated before the first store. Free with kvs_mc_pool_delete while BE is alive. */
enum kvs_status kvs_mc_pool_new(struct kvs_mc_pool **out, struct kvs_backend *be, int n_layer, int nkv, int d,
                                int block, int n_pairs, const int *la, char *err, size_t errlen);
void kvs_mc_pool_delete(struct kvs_mc_pool *p);

/* Appends T unmerged rows to LAYER: k, v (T, dkv) fp32 in the backend's memory, pos (T) host. */
enum kvs_status kvs_mc_pool_store_buf(struct kvs_mc_pool *p, int layer, int T, const int32_t *pos, const float *k,
                                      const float *v);
/* out (T, n_head*d) = attention of q (T, n_head*d) over LAYER's unmerged rows and, when PAIR >= 0,
 * that pair's merged rows rebuilt with LAYER's norms; q, out backend memory, q_pos (T) host. */
enum kvs_status kvs_mc_pool_attend_buf(struct kvs_mc_pool *p, int layer, int pair, int T, const int32_t *q_pos,
                                       int n_head, const float *q, float *out);
/* Distances (and cosines, DOTS may be NULL) of the M unmerged rows IDX of PAIR's two layers;
 * contracts of the mc_score entry. The two layers must hold the same tokens row for row. */
enum kvs_status kvs_mc_pool_score(struct kvs_mc_pool *p, int pair, const int32_t *idx, int m, float *dist,
                                  double *dots);
/* Merges rows IDX[KEEP..M) of PAIR's two layers at T into its merged rows (grown by whole blocks)
 * and then drops them from both layers' unmerged rows (whole unused blocks given back); the
 * first KEEP stay unmerged. IDX may be in any order; merged rows are appended in IDX's order. */
enum kvs_status kvs_mc_pool_merge(struct kvs_mc_pool *p, int pair, float t, const int32_t *idx, int m, int keep);
/* Copies the positions of LAYER's N unmerged rows from ROW0 to host. */
enum kvs_status kvs_mc_pool_read_pos(struct kvs_mc_pool *p, int layer, int row0, int n, int32_t *pos);
/* Forgets every row, keeping the storage for the next sequence. */
void kvs_mc_pool_reset(struct kvs_mc_pool *p);

int kvs_mc_pool_rows(const struct kvs_mc_pool *p, int layer);
int kvs_mc_pool_merged(const struct kvs_mc_pool *p, int pair);
/* Bytes LAYER holds: its unmerged K, V and positions, and its half of its pair's merged rows (the
 * pair's first layer takes the odd byte). */
uint64_t kvs_mc_pool_bytes_held(const struct kvs_mc_pool *p, int layer);
/* Everything allocated for LAYER: its unmerged rows' capacity and, for a pair's first layer, the
 * pair's merged capacity. */
uint64_t kvs_mc_pool_bytes_alloc(const struct kvs_mc_pool *p, int layer);

#endif
