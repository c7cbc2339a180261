/* The forward pass: a context runs tokens of a model through a press (the KV-cache method) on the
 * CPU backend, with internal op counters. Depends on engine/model/model.h, engine/press/press.h, threads. */
#ifndef KVS_INFER_H
#define KVS_INFER_H

#include "press.h"
#include "threads.h"

struct kvs_ctx_params {
    int n_ctx;          /* max tokens (positions) */
    int n_batch;        /* prefill chunk size; kvs_ctx_eval splits longer inputs */
    int n_threads;      /* <= 0: online cores */
    char backend[16];   /* "cpu" (default), "cuda" or "auto" (CUDA when a GPU is usable) */
    char weights[8];    /* type of the weights' device copies: "auto" (default: bf16 on sm_80 and
                         * newer, fp16 before), "bf16" or "fp16"; the CPU reads the model's own */
    bool precise;       /* CPU: every product dequantizes the weights and multiplies in fp32, as
                         * prefill does, instead of quantizing short products' activations to 8 bits
                         * (decode is slower and about as accurate as prefill; see kvscope(1)) */
};
void kvs_ctx_params_default(struct kvs_ctx_params *p);

struct kvs_ctx;

/* Creates a context over MODEL using PRESS (neither owned; both must outlive the context).
 * Returns an error with a message in err on failure. Free with kvs_ctx_delete. */
enum kvs_status kvs_ctx_new(struct kvs_ctx **out, const struct kvs_model *model, struct kvs_press *press,
                            const struct kvs_ctx_params *p, char *err, size_t errlen);
void kvs_ctx_delete(struct kvs_ctx *c);

/* Runs N tokens at positions n_past .. n_past+N-1, in chunks of at most n_batch; the press's
 * end_step runs after every chunk. LOGITS: NULL, or room for (N, n_vocab) floats to receive every
 * token's logits (teacher forcing). The last token's logits are always kept (kvs_ctx_logits).
 * Returns KVS_ERR_LIMIT when n_past+N exceeds n_ctx; message in kvs_ctx_error. */
enum kvs_status kvs_ctx_eval(struct kvs_ctx *c, const int32_t *tokens, int n, float *logits);

/* Last evaluated token's logits (n_vocab floats), valid until the next eval/reset. */
const float *kvs_ctx_logits(const struct kvs_ctx *c);
int kvs_ctx_n_past(const struct kvs_ctx *c);
/* Forgets all tokens (press reset too); counters are kept. */
void kvs_ctx_reset(struct kvs_ctx *c);
/* The context's op counters (KVS_OP_COUNT entries), cumulative; the caller may zero them. */
struct kvs_op_counter *kvs_ctx_counters(struct kvs_ctx *c);
struct kvs_pool *kvs_ctx_pool(struct kvs_ctx *c);
const char *kvs_ctx_error(const struct kvs_ctx *c);
/* The compute backend the context runs its matrix products, norms and RoPE on ("cpu", "cuda")
 * and its device description. */
const char *kvs_ctx_backend(const struct kvs_ctx *c);
const char *kvs_ctx_device(const struct kvs_ctx *c);
/* Bytes of K/V pool storage the backend holds in its own memory (device bytes for CUDA). */
uint64_t kvs_ctx_pool_bytes(const struct kvs_ctx *c);

/* Host<->backend copies since the context was made (all zero on the CPU backend, whose buffers are
 * host memory). up/down: every copy through the backend's buffers (tokens, positions, logits, …);
 * press: those of them made because the press or a layer hook reads host arrays (a device token
 * that leaves the device; zero for `full` without a hook). */
struct kvs_ctx_xfer {
    uint64_t up_bytes, down_bytes, up_calls, down_calls;
    uint64_t press_bytes, press_calls;
};
void kvs_ctx_transfers(const struct kvs_ctx *c, struct kvs_ctx_xfer *out);
/* Type of the weights' device copies ("bf16", "fp16"; "" on the CPU) and, in *saturated (may be
 * NULL), how many weight values an fp16 upload clamped to ±65504 (never silently: callers report a
 * non-zero count). */
const char *kvs_ctx_weights(const struct kvs_ctx *c, uint64_t *saturated);
/* The card the context computes on: its memory in use (every process) and its size, bytes; false
 * with both 0 when there is none (the CPU backend) or the driver did not answer. */
bool kvs_ctx_device_mem(const struct kvs_ctx *c, uint64_t *used, uint64_t *total);
/* Activation values the context's fp16 products clamped to ±65504 so far (0 with bf16 weights and
 * on the CPU); reads the device's counter, waiting for its work: once a step, after the logits.
 * Callers report a non-zero count (never silent). */
uint64_t kvs_ctx_acts_saturated(struct kvs_ctx *c);
/* Values the context's fp16 caches (K/V rows, CommonKV fp16 latents, MiniCache's merged rows)
 * clamped to ±65504 instead of storing ±inf, so far, on any backend and any weight type; reads the
 * device's counter like kvs_ctx_acts_saturated (once a step). Callers report a non-zero count. */
uint64_t kvs_ctx_cache_saturated(struct kvs_ctx *c);

/* Optional observer called for every layer of every chunk (similarity evidence, calibration).
 * x: (T, D) residual stream entering the layer; xn: (T, D) after attn RMSNorm; k: (T, n_kv*d) keys
 * before RoPE (always computed while a hook is set). Pointers are valid during the call only. */
typedef void (*kvs_layer_hook)(void *ud, int layer, int T, const int32_t *pos,
                               const float *x, const float *xn, const float *k);
void kvs_ctx_set_hook(struct kvs_ctx *c, kvs_layer_hook fn, void *ud);

/* Sampling: greedy when temp <= 0, else temperature + nucleus (top_p) with a xorshift RNG state. */
int32_t kvs_sample(const float *logits, int n_vocab, float temp, float top_p, uint64_t *rng);
/* log softmax of logits at ID. */
float kvs_logprob(const float *logits, int n_vocab, int32_t id);

/* The CPU references of the building blocks (engine/cpu/, twins of kernels/ by stem) stay visible
 * to the forward pass's users through this header. */
#include "matmul.h"
#include "norm.h"
#include "rope.h"

#endif
