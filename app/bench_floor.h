/* The floors `kvscope bench` prints beside each measured decode time (issue 13): the least time a
 * decoded token can take given the bytes it must read at the card's measured copy bandwidth and, for
 * CommonKV, the key-rebuild multiply-adds at the measured tensor-core rate. Pure arithmetic on
 * plain numbers (libc only), so tests/test_bench.c checks it on known inputs. */
#ifndef KVS_BENCH_FLOOR_H
#define KVS_BENCH_FLOOR_H

#include <stdbool.h>
#include <stdint.h>

struct kvs_bench_floor_in {
    double weight_bytes;  /* bytes of weights one decoded token reads (every matrix once), bytes */
    double cache_bytes;   /* bytes of cache it reads: fp16 K+V (full) or latents (commonkv), bytes */
    double rebuild_macs;  /* multiply-adds to rebuild the keys it attends to (0 for full) */
    double bandwidth;     /* measured memory bandwidth, bytes/s (read+write traffic of a D2D copy) */
    double mac_rate;      /* measured tensor-core rate, multiply-adds/s (0: no rebuild term) */
};

struct kvs_bench_floor {
    double bytes_s;       /* (weight_bytes + cache_bytes) / bandwidth, seconds per token */
    double macs_s;        /* rebuild_macs / mac_rate, seconds per token (0 without rebuild) */
    double total_s;       /* bytes_s + macs_s */
};

/* Fills OUT from IN. Returns false (OUT all NaN) when the bandwidth is not positive, a byte or MAC
 * count is negative, or rebuild MACs are given without a positive rate. */
bool kvs_bench_floor_compute(const struct kvs_bench_floor_in *in, struct kvs_bench_floor *out);

/* Multiply-adds to rebuild the keys of one decoded token over every layer: for layer l,
 * kept[l] cached tokens each need d_kv x rank(group of l) multiply-adds (B_k^l c_j), where layer l
 * is in group l / group_size and group_rank has ceil(n_layer / group_size) entries. */
double kvs_bench_rebuild_macs(int n_layer, const uint32_t *kept, int group_size, const uint32_t *group_rank,
                              int d_kv);

/* Measured time over floor (>= 1 in a sane measurement); NaN when either is not positive. */
double kvs_bench_floor_ratio(double measured_s, double floor_s);

#endif
