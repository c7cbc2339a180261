/* Quality measured side by side on the same tokens (DESIGN.md §6): teacher-forced perplexity, mean
 * KL divergence and top-1 agreement against the full run; passkey prompts and exact-match scoring;
 * layer-similarity evidence (hidden states, raw keys, CommonKV latents).
 * Depends on infer.h, commonkv.h; never prints. */
#ifndef KVS_METRICS_H
#define KVS_METRICS_H

#include "commonkv.h"
#include "infer.h"

struct kvs_quality_acc {
    double nll, nll_ref, kl;    /* sums over scored tokens */
    uint64_t n, top1;
};

/* Scores one position: LOGITS of the method, REF of the full run (may be NULL: no KL/top-1), NEXT
 * the token that follows. KL is KL(full || method) in nats. */
void kvs_quality_add(struct kvs_quality_acc *a, const float *logits, const float *ref, int n_vocab, int32_t next);
double kvs_quality_ppl(const struct kvs_quality_acc *a);
double kvs_quality_ppl_ref(const struct kvs_quality_acc *a);
double kvs_quality_kl(const struct kvs_quality_acc *a);
double kvs_quality_top1(const struct kvs_quality_acc *a);

/* Passkey prompt of about N_TOKENS tokens: generated filler with "The pass key is KEY. Remember it.
 * KEY is the pass key." at relative DEPTH (0..1) and the question at the end. Returns a malloc'd
 * string (caller frees) or NULL. */
char *kvs_passkey_prompt(const struct kvs_tokenizer *tok, int n_tokens, uint32_t key, float depth);
/* Multi-key retrieval prompt of about N_TOKENS tokens: N_KEYS needles "The pass key of the <colour>
 * box is KEYS[i]." spread evenly through the filler (depths 0.1 .. 0.9), then a question about box
 * ASK. N_KEYS is 2..8 (colours are fixed names). Returns a malloc'd string (caller frees) or NULL.
 * Like kvs_passkey_prompt, the question follows the last newline. */
char *kvs_passkey_multi_prompt(const struct kvs_tokenizer *tok, int n_tokens, const uint32_t *keys, int n_keys,
                               int ask);
/* True when the first number in TEXT equals KEY. */
bool kvs_passkey_match(const char *text, uint32_t key);

/* Layer x layer cosine similarity, mean over the tokens of IDS, of the residual stream entering
 * each layer (hidden), of the raw pre-RoPE keys, and of CommonKV latents A_g xn at RANK (pairs in
 * different groups are NaN). Each matrix is n_layer^2 floats, malloc'd, caller frees. */
enum kvs_status kvs_similarity_layers(const struct kvs_model *m, const int32_t *ids, int n,
                                      const struct kvs_ckv_factors *f, const uint32_t *rank, int n_threads,
                                      float **hidden, float **keys, float **latent, char *err, size_t errlen);

#endif
