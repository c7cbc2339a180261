/* CPU twins of kernels/latent_pool.cu: the rows of a CommonKV latent segment (struct kvs_lat_rows,
 * engine/backend/backend.h) in host memory, fp16 or packed by the press's codec: growth, stores,
 * reads, copies between formats, compaction, the merge into a shared segment and the rows' cosine similarity. Same contracts as the backend's lat_*
 * entries; KVS_ERR_NOMEM when memory runs out (L keeps its rows and capacity), KVS_ERR_ARG for
 * inconsistent shapes. fp16 stores (lat_store, lat_merge) saturate at ±65504 (kvs_f32_to_f16_row)
 * and add the values they clamped to the stored rows' L->clamped (dst's for the merge).
 * Depends on backend.h (types) only; never prints. */
#ifndef KVS_CPU_LATENT_POOL_H
#define KVS_CPU_LATENT_POOL_H

#include "backend.h"

enum kvs_status kvs_cpu_lat_grow(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int cap);
enum kvs_status kvs_cpu_lat_store(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr, int row0, int T,
                                  const float *x, const int32_t *pos);
enum kvs_status kvs_cpu_lat_read(const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr, int row0, int n,
                                 float *x, int32_t *pos);
/* The lat_copy entry (backend.h): rows [row0, row0+n) of SRC's array SARR (format SF) re-encoded in
 * DF as rows [drow0, drow0+n) of DST's array DARR; positions from POS (n) unless NULL. */
enum kvs_status kvs_cpu_lat_copy(const struct kvs_lat_rows *src, const struct kvs_lat_fmt *sf, int sarr, int row0,
                                 int n, struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df, int darr, int drow0,
                                 const int32_t *pos);
/* score[pos_j] += mass[j] for every row j of A's segments, numbered segment after segment (the
 * order lat_attend's MASS has); positions outside [0, a->n_score) are skipped. */
void kvs_cpu_lat_mass_add(const struct kvs_lat_attend_args *a, const float *mass, float *score);
enum kvs_status kvs_cpu_lat_compact(struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, const uint8_t *keep);
enum kvs_status kvs_cpu_lat_merge(const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                  const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w);
/* The lat_cosine entry (backend.h): out (n) = similarity of rows [row0, row0+n) between arrays
 * ARR0 and ARR1, or (ADJ) the mean over adjacent array pairs in [arr0, arr1]; fp64 sums. */
enum kvs_status kvs_cpu_lat_cosine(const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f, int arr0, int arr1,
                                   bool adj, int row0, int n, float *out);

#endif
