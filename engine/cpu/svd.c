/* CPU reference of the thin SVD (see svd.h): LAPACK sgesdd on a scratch copy, the oracle that
 * kernels/svd.cu is checked against. Depends on libc, LAPACKE and engine/core; never prints. */
#include "svd.h"

#include <lapacke.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum kvs_status kvs_cpu_svd(const float *a, int m, int n, float *u, float *s, float *vt)
{
    if (m <= 0 || n <= 0) return KVS_ERR_ARG;
    uint64_t cells;
    if (!kvs_mul_ok((uint64_t)m, (uint64_t)n, &cells) || cells > SIZE_MAX / sizeof(float)) return KVS_ERR_ARG;
    float *w = malloc((size_t)cells * sizeof(float));
    if (!w) return KVS_ERR_NOMEM;
    memcpy(w, a, (size_t)cells * sizeof(float));
    int k = KVS_MIN(m, n);
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, w, n, s, u, k, vt, n);
    free(w);
    return info == 0 ? KVS_OK : KVS_ERR_BACKEND;
}
