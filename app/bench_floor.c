/* Floor arithmetic for `kvscope bench` (see bench_floor.h): seconds per decoded token from bytes
 * at a measured bandwidth plus key-rebuild multiply-adds at a measured tensor-core rate.
 * Depends on libc only. */
#include "bench_floor.h"

#include <math.h>

bool kvs_bench_floor_compute(const struct kvs_bench_floor_in *in, struct kvs_bench_floor *out)
{
    out->bytes_s = out->macs_s = out->total_s = NAN;
    if (!(in->bandwidth > 0) || !(in->weight_bytes >= 0) || !(in->cache_bytes >= 0) || !(in->rebuild_macs >= 0))
        return false;
    if (in->rebuild_macs > 0 && !(in->mac_rate > 0)) return false;
    out->bytes_s = (in->weight_bytes + in->cache_bytes) / in->bandwidth;
    out->macs_s = in->rebuild_macs > 0 ? in->rebuild_macs / in->mac_rate : 0.0;
    out->total_s = out->bytes_s + out->macs_s;
    return true;
}

double kvs_bench_rebuild_macs(int n_layer, const uint32_t *kept, int group_size, const uint32_t *group_rank,
                              int d_kv)
{
    if (n_layer <= 0 || group_size <= 0 || d_kv <= 0) return 0.0;
    double macs = 0;
    for (int l = 0; l < n_layer; l++) macs += (double)kept[l] * (double)d_kv * (double)group_rank[l / group_size];
    return macs;
}

double kvs_bench_floor_ratio(double measured_s, double floor_s)
{
    if (!(measured_s > 0) || !(floor_s > 0)) return NAN;
    return measured_s / floor_s;
}
