/* CommonKV's latent pools (DESIGN.md §4, §7): segments of latent rows with their tokens' positions,
 * a layer group's private pool (one array per layer, in lock-step) or its shared pool of merged
 * latents, fp16 or packed. The rows live in the backend's memory (host for CPU, device for CUDA,
 * packed rows too where the backend takes them) and are touched only through the backend's lat_*
 * entries; this module grows them in blocks, keeps a host copy of the positions for the press's
 * decisions, and counts held and allocated bytes. Depends on backend.h only. */
#ifndef KVS_CKV_POOL_H
#define KVS_CKV_POOL_H

#include "backend.h"

struct kvs_ckv_seg {
    struct kvs_backend *be;   /* owner of the rows (not owned; NULL: the CPU path); bound at the
                               * first growth, released by kvs_ckv_seg_free */
    struct kvs_lat_fmt f;
    struct kvs_lat_rows L;
    int32_t *pos;             /* (cap) host copy of the positions, for the press's decisions */
    uint32_t n, cap;          /* = L.n, L.cap */
    uint32_t n_arr, width, row_bytes, block;
};

/* An empty segment of N_ARR arrays of rows in format F (copied), growing in BLOCK rows. Nothing is
 * allocated until the first reserve. */
void kvs_ckv_seg_init(struct kvs_ckv_seg *s, const struct kvs_lat_fmt *f, uint32_t n_arr, uint32_t block);
/* Frees the rows (in the backend that holds them) and the positions; the segment stays usable. */
void kvs_ckv_seg_free(struct kvs_ckv_seg *s);
/* Room for NEED rows, in whole blocks, on BE when nothing is allocated yet (else on the backend the
 * rows are already in). On failure the rows stay as they were. */
enum kvs_status kvs_ckv_seg_reserve(struct kvs_ckv_seg *s, struct kvs_backend *be, uint32_t need);
/* Gives back whole blocks no longer needed (best effort: a failed move keeps the old blocks). */
void kvs_ckv_seg_shrink(struct kvs_ckv_seg *s);
/* Opens T rows at the end (room reserved): array 0 gets x (T, width) fp32 host, all arrays' rows
 * are the tokens at POS (T). */
enum kvs_status kvs_ckv_seg_append(struct kvs_ckv_seg *s, int T, const int32_t *pos, const float *x);
/* Writes the last T rows of array ARR (the rows append opened) from x (T, width) fp32 host. */
enum kvs_status kvs_ckv_seg_fill(struct kvs_ckv_seg *s, uint32_t arr, int T, const float *x);
/* The same two with X in the backend's memory (a kvs_buf's data: a device's own latents). */
enum kvs_status kvs_ckv_seg_append_buf(struct kvs_ckv_seg *s, int T, const int32_t *pos, const float *x);
enum kvs_status kvs_ckv_seg_fill_buf(struct kvs_ckv_seg *s, uint32_t arr, int T, const float *x);
/* Appends rows [row0, row0+n) of SRC, every array, to DST (room reserved; same arrays and width,
 * any formats, the same backend), re-encoded in DST's format where they are (lat_copy). SRC keeps
 * its rows (compact it after). */
enum kvs_status kvs_ckv_seg_move_rows(const struct kvs_ckv_seg *src, uint32_t row0, uint32_t n, struct kvs_ckv_seg *dst);
/* x (n, width) fp32 = rows [row0, row0+n) of array ARR, decoded. */
enum kvs_status kvs_ckv_seg_read(const struct kvs_ckv_seg *s, uint32_t arr, uint32_t row0, uint32_t n, float *x);
/* Removes the rows whose DROP (n) byte is set, keeping order, and gives back whole blocks.
 * *REMOVED (may be NULL) gets how many went. */
enum kvs_status kvs_ckv_seg_compact(struct kvs_ckv_seg *s, const uint8_t *drop, uint32_t *removed);
/* Appends M merged rows to DST (room reserved, same format, one array): row i = Σ_a W[a] · row
 * IDX[i] of SRC's arrays, at that token's position. SRC keeps its rows (compact it after). */
enum kvs_status kvs_ckv_seg_merge(const struct kvs_ckv_seg *src, struct kvs_ckv_seg *dst, const int32_t *idx,
                                  uint32_t m, const float *w);
/* Forgets every row, keeping the storage (the next sequence reuses it). */
void kvs_ckv_seg_clear(struct kvs_ckv_seg *s);

/* Bytes: rows and positions held, everything allocated, and the rows held counted as fp16 (what
 * the merge budget counts, independent of later quantization). */
uint64_t kvs_ckv_seg_bytes_held(const struct kvs_ckv_seg *s);
uint64_t kvs_ckv_seg_bytes_alloc(const struct kvs_ckv_seg *s);
uint64_t kvs_ckv_seg_bytes_held16(const struct kvs_ckv_seg *s);
/* True when the rows live in the backend's own memory (device memory for CUDA). */
bool kvs_ckv_seg_native(const struct kvs_ckv_seg *s);

#endif
