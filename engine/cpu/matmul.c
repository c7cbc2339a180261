/* Matrix products on the CPU (twin of kernels/matmul.cu): short products quantize their activations
 * and dot them with the packed weights; longer ones dequantize tiles of 32 rows and call sgemm, with
 * tile boundaries independent of the thread count (determinism at any -t).
 * Depends on model/quant (dequantization, quantized dots), threads and OpenBLAS. */
#include "matmul.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>

#include "quant.h"

#define MM_VEC_MAX 4     /* up to this many tokens use quantized dots, beyond it dequant + sgemm */
#define MM_TILE 32       /* weight rows dequantized at once for sgemm */

struct mm_job {
    const struct kvs_weight *w;
    const float *x;
    float *y;
    int T;
    struct kvs_qvec *qx;
};

/* Per-thread scratch (dequantized tiles, quantized activations), freed when its thread exits. */
struct mm_tls {
    float *tile;
    size_t tile_cap;
    struct kvs_qvec q[MM_VEC_MAX];
};
static pthread_key_t mm_key;
static pthread_once_t mm_once = PTHREAD_ONCE_INIT;

static void mm_tls_free(void *p)
{
    struct mm_tls *t = p;
    free(t->tile);
    for (int i = 0; i < MM_VEC_MAX; i++) kvs_qvec_free(&t->q[i]);
    free(t);
}

static void mm_key_init(void) { pthread_key_create(&mm_key, mm_tls_free); }

static struct mm_tls *mm_tls_get(void)
{
    pthread_once(&mm_once, mm_key_init);
    struct mm_tls *t = pthread_getspecific(mm_key);
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) abort(); /* a few bytes; nothing sensible to do without them */
        pthread_setspecific(mm_key, t);
    }
    return t;
}

static void mm_vec_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct mm_job *j = ctx;
    const uint8_t *base = j->w->data;
    for (int64_t r = b; r < e; r++) {
        const void *row = base + (uint64_t)r * j->w->row_bytes;
        for (int t = 0; t < j->T; t++) j->y[(int64_t)t * j->w->rows + r] = kvs_vec_dot(j->w->type, row, &j->qx[t]);
    }
}

/* Tiles [b, e) of MM_TILE weight rows. Tiles start at multiples of MM_TILE whatever the thread
 * count, so every sgemm call, and so every output bit, is the same at any -t. */
static void mm_gemm_range(void *ctx, int64_t b, int64_t e, int thread)
{
    const struct mm_job *j = ctx;
    const struct kvs_weight *w = j->w;
    int64_t cols = w->cols;
    for (int64_t r0 = b * MM_TILE; r0 < e * MM_TILE && r0 < w->rows; r0 += MM_TILE) {
        int64_t nr = KVS_MIN(MM_TILE, w->rows - r0);
        const float *tile;
        if (w->type == KVS_GGML_F32) {
            tile = (const float *)w->data + r0 * cols;
        } else {
            struct mm_tls *tl = mm_tls_get();
            size_t need = (size_t)(nr * cols);
            if (need > tl->tile_cap) {
                float *nt = realloc(tl->tile, need * sizeof(float));
                if (!nt) abort(); /* scratch of a few hundred KiB; nothing sensible to do without it */
                tl->tile = nt;
                tl->tile_cap = need;
            }
            for (int64_t r = 0; r < nr; r++) kvs_weight_row_f32(w, r0 + r, tl->tile + r * cols);
            tile = tl->tile;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->T, (int)nr, (int)cols, 1.0f, j->x, (int)cols, tile,
                    (int)cols, 0.0f, j->y + r0, (int)w->rows);
    }
}

void kvs_cpu_matmul(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T)
{
    kvs_cpu_matmul_ex(pool, w, x, y, T, false);
}

void kvs_cpu_matmul_ex(struct kvs_pool *pool, const struct kvs_weight *w, const float *x, float *y, int T,
                       bool precise)
{
    struct mm_job j = {.w = w, .x = x, .y = y, .T = T, .qx = NULL};
    if (T <= MM_VEC_MAX && !precise) {
        struct mm_tls *tl = mm_tls_get();
        j.qx = tl->q;
        for (int t = 0; t < T; t++)
            if (kvs_quant_prepare(&tl->q[t], w->type, x + (int64_t)t * w->cols, w->cols) != KVS_OK) abort();
        /* small products cost less than waking the pool */
        if ((int64_t)w->rows * w->cols * T < (1 << 16)) mm_vec_range(&j, 0, w->rows, 0);
        else kvs_pool_for(pool, w->rows, mm_vec_range, &j);
    } else {
        kvs_pool_for(pool, (w->rows + MM_TILE - 1) / MM_TILE, mm_gemm_range, &j);
    }
}

