/* Tokenizer built from GGUF metadata: byte-level BPE (gpt2 style: SmolLM2, Llama 3, Qwen2) and
 * SentencePiece style (llama: Llama 2, Mistral), special tokens and chat templates.
 * Depends on libc and engine/model/gguf.h only. */
#ifndef KVS_TOKENIZER_H
#define KVS_TOKENIZER_H

#include "gguf.h"

enum kvs_tok_kind { KVS_TOK_BPE = 1, KVS_TOK_SPM = 2 };
enum kvs_chat_kind { KVS_CHAT_NONE = 0, KVS_CHAT_CHATML, KVS_CHAT_LLAMA2, KVS_CHAT_LLAMA3 };

struct kvs_tokenizer; /* opaque */

/* Builds a tokenizer from G's tokenizer.* metadata. On failure returns NULL and writes a one-line
 * reason into err. The result owns copies of everything it needs (G may be closed afterwards);
 * free with kvs_tokenizer_delete. */
struct kvs_tokenizer *kvs_tokenizer_new(const struct kvs_gguf *g, char *err, size_t errlen);
void kvs_tokenizer_delete(struct kvs_tokenizer *t);

int32_t kvs_tokenizer_n_vocab(const struct kvs_tokenizer *t);
enum kvs_tok_kind kvs_tokenizer_kind(const struct kvs_tokenizer *t);
int32_t kvs_tokenizer_bos(const struct kvs_tokenizer *t); /* -1 when none */
int32_t kvs_tokenizer_eos(const struct kvs_tokenizer *t); /* -1 when none */
bool kvs_tokenizer_add_bos(const struct kvs_tokenizer *t);  /* tokenizer.ggml.add_bos_token */
/* True for end-of-generation tokens (eos, <|im_end|>, <|eot_id|>, …). */
bool kvs_tokenizer_is_eog(const struct kvs_tokenizer *t, int32_t id);

/* Encodes TEXT (LEN bytes of UTF-8; invalid bytes are encoded as bytes) into ids.
 * PARSE_SPECIAL: recognise special-token text such as "<|im_start|>" as single ids.
 * Writes at most CAP ids and returns the total count needed (call again with more room when
 * it exceeds CAP); negative on error. Does not add BOS (callers decide). */
int64_t kvs_tokenizer_encode(const struct kvs_tokenizer *t, const char *text, size_t len,
                             bool parse_special, int32_t *ids, int64_t cap);

/* Text of one token as UTF-8 bytes (byte tokens decoded, "Ġ"/"▁" mapped back). Writes up to cap
 * bytes (no NUL) and returns the byte length; negative for an invalid id. Special tokens render
 * as their text. Concatenating pieces of an encoding reproduces the input exactly
 * (SPM: except the leading space that add_space_prefix inserted, see kvs_tokenizer_decode). */
int kvs_tokenizer_piece(const struct kvs_tokenizer *t, int32_t id, char *buf, int cap);

/* Decodes N ids into BUF (NUL-terminated, truncated to CAP); returns the full length. */
int64_t kvs_tokenizer_decode(const struct kvs_tokenizer *t, const int32_t *ids, int64_t n, char *buf, int64_t cap);

/* Chat template detected from tokenizer.chat_template. */
enum kvs_chat_kind kvs_tokenizer_chat_kind(const struct kvs_tokenizer *t);
/* Formats one user turn (optionally with a system message, may be NULL) as the model's chat
 * prompt with the assistant turn opened. Returns a malloc'd string (caller frees) or NULL. */
char *kvs_tokenizer_chat_format(const struct kvs_tokenizer *t, const char *system, const char *user);

#endif
