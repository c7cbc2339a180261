/* Embedding lookup on the device: each token's row of the table resident as fp16/bf16 (uploaded
 * once with the weights), widened to fp32. Twin of kvs_cpu_embedding (engine/cpu/embedding.c); the
 * only difference is the table's rounding to the weights' dtype. Depends on the CUDA runtime only. */
#include "internal.cuh"

#define EMB_THREADS 256

/* One block per token, threads over the row. */
__global__ void k_embed_f16(float *out, const __half *table, const int32_t *tokens, int cols)
{
    const __half *row = table + (size_t)tokens[blockIdx.x] * cols;
    float *o = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = __half2float(row[i]);
}

__global__ void k_embed_bf16(float *out, const __nv_bfloat16 *table, const int32_t *tokens, int cols)
{
    const __nv_bfloat16 *row = table + (size_t)tokens[blockIdx.x] * cols;
    float *o = out + (size_t)blockIdx.x * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = __bfloat162float(row[i]);
}

int kvs_cuda_embed(struct kvs_cuda_ctx *c, const struct kvs_cuda_weight *w, const int32_t *tokens, int T, float *out)
{
    KVS_REQUIRE(w != NULL && T >= 0 && T <= 0x7fffffff, "embed: bad arguments");
    if (T == 0) return KVS_CUDA_OK;
    if (w->dtype == KVS_CUDA_BF16)
        KVS_LAUNCH(k_embed_bf16, (unsigned)T, EMB_THREADS, 0, c->stream)(out, (const __nv_bfloat16 *)w->data, tokens,
                                                                        (int)w->cols);
    else
        KVS_LAUNCH(k_embed_f16, (unsigned)T, EMB_THREADS, 0, c->stream)(out, (const __half *)w->data, tokens,
                                                                       (int)w->cols);
    KVS_LAUNCH_CHECK();
    return KVS_CUDA_OK;
fail:
    return KVS_CUDA_FAIL;
}
