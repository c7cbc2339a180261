/* Writes tiny random-weight GGUF models (see tinymodel.h). The tokenizer vocabulary is learned at
 * build time by byte-pair merging over a short built-in English text, so merges and merged tokens
 * are consistent by construction. Weights are quantized with engine/model/quant.c's kvs_quant_row.
 * Depends on engine/model/quant.h, engine/model/gguf.h (type ids) and libc. */
#include "tinymodel.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

static char tiny_err[256];

const char *kvs_tiny_error(void) { return tiny_err; }

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tiny_err, sizeof tiny_err, fmt, ap);
    va_end(ap);
    return -1;
}

static const char corpus[] =
    "The quick brown fox jumps over the lazy dog. This is a small test of the tokenizer and of the\n"
    "model that reads it. In the beginning there was a cache, and the cache was full of keys and\n"
    "values. We share the keys and the values across the layers of the network, so the memory that\n"
    "the cache needs is smaller than it was before. Then the model runs on a machine with one or two\n"
    "cores, and the tests check that every number is right. Hello world! Hello, hello again.\n"
    "It is 2024, and 12 + 30 = 42. The three little pigs built their houses of straw, of sticks and\n"
    "of bricks; the wolf could not blow the last one down. What is the answer? The answer is in the\n"
    "layers, in the heads, and in the tokens that the model has seen. Ask the model a question and\n"
    "it will answer you in the same language that you used to ask it.\n";

const char *kvs_tiny_corpus(void) { return corpus; }

/* ---- GGUF byte writer ---- */

void kvs_gbuf_free(struct kvs_gbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void kvs_gbuf_bytes(struct kvs_gbuf *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) { b->oom = true; return; }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

void kvs_gbuf_u8(struct kvs_gbuf *b, uint8_t v) { kvs_gbuf_bytes(b, &v, 1); }
void kvs_gbuf_u32(struct kvs_gbuf *b, uint32_t v) { kvs_gbuf_bytes(b, &v, 4); }
void kvs_gbuf_u64(struct kvs_gbuf *b, uint64_t v) { kvs_gbuf_bytes(b, &v, 8); }
void kvs_gbuf_f32(struct kvs_gbuf *b, float v) { kvs_gbuf_bytes(b, &v, 4); }

void kvs_gbuf_str(struct kvs_gbuf *b, const char *s)
{
    uint64_t n = strlen(s);
    kvs_gbuf_u64(b, n);
    kvs_gbuf_bytes(b, s, n);
}

void kvs_gbuf_pad(struct kvs_gbuf *b, size_t align)
{
    static const uint8_t zero[256];
    while (align && b->len % align) {
        size_t k = align - b->len % align;
        kvs_gbuf_bytes(b, zero, k < sizeof zero ? k : sizeof zero);
        if (b->oom) return;
    }
}

void kvs_gbuf_header(struct kvs_gbuf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    kvs_gbuf_bytes(b, "GGUF", 4);
    kvs_gbuf_u32(b, version);
    kvs_gbuf_u64(b, n_tensors);
    kvs_gbuf_u64(b, n_kv);
}

void kvs_gbuf_kv_u32(struct kvs_gbuf *b, const char *key, uint32_t v)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_UINT32);
    kvs_gbuf_u32(b, v);
}

void kvs_gbuf_kv_f32(struct kvs_gbuf *b, const char *key, float v)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_FLOAT32);
    kvs_gbuf_f32(b, v);
}

void kvs_gbuf_kv_bool(struct kvs_gbuf *b, const char *key, bool v)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_BOOL);
    kvs_gbuf_u8(b, v ? 1 : 0);
}

void kvs_gbuf_kv_str(struct kvs_gbuf *b, const char *key, const char *v)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_STRING);
    kvs_gbuf_str(b, v);
}

void kvs_gbuf_kv_strs(struct kvs_gbuf *b, const char *key, const char *const *v, uint64_t n)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(b, KVS_GGUF_STRING);
    kvs_gbuf_u64(b, n);
    for (uint64_t i = 0; i < n; i++) kvs_gbuf_str(b, v[i]);
}

void kvs_gbuf_kv_i32s(struct kvs_gbuf *b, const char *key, const int32_t *v, uint64_t n)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(b, KVS_GGUF_INT32);
    kvs_gbuf_u64(b, n);
    kvs_gbuf_bytes(b, v, (size_t)n * 4);
}

void kvs_gbuf_kv_f32s(struct kvs_gbuf *b, const char *key, const float *v, uint64_t n)
{
    kvs_gbuf_str(b, key);
    kvs_gbuf_u32(b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(b, KVS_GGUF_FLOAT32);
    kvs_gbuf_u64(b, n);
    kvs_gbuf_bytes(b, v, (size_t)n * 4);
}

void kvs_gbuf_tensor(struct kvs_gbuf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                     uint32_t type, uint64_t offset)
{
    kvs_gbuf_str(b, name);
    kvs_gbuf_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) kvs_gbuf_u64(b, ne[i]);
    kvs_gbuf_u32(b, type);
    kvs_gbuf_u64(b, offset);
}

/* ---- options ---- */

void kvs_tiny_defaults(struct kvs_tiny_opts *o)
{
    memset(o, 0, sizeof *o);
    o->arch = "llama";
    o->name = "kvscope tiny test model";
    o->version = 3;
    o->n_layer = 2;
    o->n_embd = 64;
    o->n_head = 4;
    o->n_head_kv = 2;
    o->n_ff = 128;
    o->n_ctx = 256;
    o->wtype = KVS_GGML_F32;
    o->embd_type = KVS_GGML_F32;
    o->out_type = KVS_GGML_F32;
    o->tied = true;
    o->rope_theta = 10000.0f;
    o->rms_eps = 1e-5f;
    o->rope_factor = 8.0f;
    o->rope_low_freq = 1.0f;
    o->rope_high_freq = 4.0f;
    o->rope_orig_ctx = 64;
    o->tokenizer = KVS_TINY_TOK_BPE;
    o->tok_pre = "smollm";
    o->n_merges = 96;
    o->add_bos = -1;
    o->weight_std = 0.02f;
    o->embd_std = 0.02f;
    o->norm_jitter = 0.1f;
    o->seed = 1;
}

/* ---- tokenizer vocabulary ---- */

struct vocab {
    char **tok;
    int32_t *type;
    float *score;
    uint32_t n, cap;
    char **merges;
    uint32_t n_merges;
    bool oom;
};

static void vocab_free(struct vocab *v)
{
    for (uint32_t i = 0; i < v->n; i++) free(v->tok[i]);
    for (uint32_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tok);
    free(v->type);
    free(v->score);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static int vocab_find(const struct vocab *v, const char *s)
{
    for (uint32_t i = 0; i < v->n; i++)
        if (strcmp(v->tok[i], s) == 0) return (int)i;
    return -1;
}

static int vocab_add(struct vocab *v, const char *s, int32_t type, float score)
{
    if (v->oom) return -1;
    if (v->n == v->cap) {
        uint32_t cap = v->cap ? 2 * v->cap : 512;
        char **t = realloc(v->tok, cap * sizeof *t);
        if (t) v->tok = t;
        int32_t *ty = realloc(v->type, cap * sizeof *ty);
        if (ty) v->type = ty;
        float *sc = realloc(v->score, cap * sizeof *sc);
        if (sc) v->score = sc;
        if (!t || !ty || !sc) { v->oom = true; return -1; }
        v->cap = cap;
    }
    char *c = strdup(s);
    if (!c) { v->oom = true; return -1; }
    v->tok[v->n] = c;
    v->type[v->n] = type;
    v->score[v->n] = score;
    return (int)v->n++;
}

/* UTF-8 of one code point into buf (NUL-terminated). */
static void utf8(uint32_t cp, char *buf)
{
    if (cp < 0x80) {
        buf[0] = (char)cp;
        buf[1] = 0;
    } else if (cp < 0x800) {
        buf[0] = (char)(0xC0 | (cp >> 6));
        buf[1] = (char)(0x80 | (cp & 0x3F));
        buf[2] = 0;
    } else {
        buf[0] = (char)(0xE0 | (cp >> 12));
        buf[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        buf[2] = (char)(0x80 | (cp & 0x3F));
        buf[3] = 0;
    }
}

/* GPT-2's byte -> printable code point table: printable Latin-1 bytes map to themselves, the
 * others to 256, 257, … in byte order. ORDER receives the bytes in vocabulary order. */
static void byte_unicode(uint32_t cp[256], uint8_t order[256])
{
    bool printable[256] = {false};
    int k = 0;
    for (int b = '!'; b <= '~'; b++) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
    for (int b = 0; b < 256; b++)
        if (printable[b]) { cp[b] = (uint32_t)b; order[k++] = (uint8_t)b; }
    uint32_t next = 256;
    for (int b = 0; b < 256; b++)
        if (!printable[b]) { cp[b] = next++; order[k++] = (uint8_t)b; }
}

/* Words of the corpus as symbol-id sequences with their counts. */
struct words {
    int **sym;
    int *len, *count;
    int n;
};

static void words_free(struct words *w)
{
    for (int i = 0; i < w->n; i++) free(w->sym[i]);
    free(w->sym);
    free(w->len);
    free(w->count);
    memset(w, 0, sizeof *w);
}

static int char_class(unsigned char c)
{
    if ((c | 32) >= 'a' && (c | 32) <= 'z') return 1;
    if (c >= '0' && c <= '9') return 2;
    if (c == ' ' || c == '\n') return 3;
    return 4;
}

/* Splits the corpus into pre-tokens: an optional leading space and a run of letters, one digit,
 * or a run of punctuation; newlines alone. Each pre-token becomes symbols via SYMOF (one symbol
 * per byte), recorded once with a count. SPM: a leading space is the '▁' symbol. */
static int split_words(struct vocab *v, struct words *w, bool spm, const uint32_t cp[256])
{
    const char *s = corpus;
    size_t n = strlen(s), i = 0;
    int cap = 0;
    while (i < n) {
        size_t st = i;
        if (s[i] == '\n') {
            i++;
        } else {
            if (s[i] == ' ' && i + 1 < n && char_class((unsigned char)s[i + 1]) != 3) i++;
            int cls = char_class((unsigned char)s[i]);
            i++;
            if (cls == 1 || cls == 4)
                while (i < n && char_class((unsigned char)s[i]) == cls) i++;
        }
        int len = (int)(i - st);
        int *sym = malloc((size_t)len * sizeof *sym);
        if (!sym) return -1;
        for (int k = 0; k < len; k++) {
            char buf[8];
            unsigned char c = (unsigned char)s[st + k];
            if (spm) {
                if (c == ' ') strcpy(buf, "\xE2\x96\x81");
                else if (c == '\n') strcpy(buf, "<0x0A>");
                else { buf[0] = (char)c; buf[1] = 0; }
            } else {
                utf8(cp[c], buf);
            }
            int id = vocab_find(v, buf);
            if (id < 0) id = vocab_add(v, buf, 1, 0);
            if (id < 0) { free(sym); return -1; }
            sym[k] = id;
        }
        int found = -1;
        for (int k = 0; k < w->n && found < 0; k++)
            if (w->len[k] == len && memcmp(w->sym[k], sym, (size_t)len * sizeof *sym) == 0) found = k;
        if (found >= 0) {
            w->count[found]++;
            free(sym);
            continue;
        }
        if (w->n == cap) {
            cap = cap ? 2 * cap : 64;
            int **ns = realloc(w->sym, (size_t)cap * sizeof *ns);
            if (ns) w->sym = ns;
            int *nl = realloc(w->len, (size_t)cap * sizeof *nl);
            if (nl) w->len = nl;
            int *nc = realloc(w->count, (size_t)cap * sizeof *nc);
            if (nc) w->count = nc;
            if (!ns || !nl || !nc) { free(sym); return -1; }
        }
        w->sym[w->n] = sym;
        w->len[w->n] = len;
        w->count[w->n] = 1;
        w->n++;
    }
    return 0;
}

/* Learns up to N_MERGES merges: each step merges the most frequent adjacent pair (ties: the
 * pair whose strings sort first), adds the joined token when new and records "A B". */
static int learn_merges(struct vocab *v, struct words *w, uint32_t n_merges, bool spm, float score_base)
{
    for (uint32_t m = 0; m < n_merges; m++) {
        uint32_t ns = v->n;
        int *cnt = calloc((size_t)ns * ns, sizeof *cnt);
        if (!cnt) return -1;
        for (int k = 0; k < w->n; k++)
            for (int j = 0; j + 1 < w->len[k]; j++) {
                int a = w->sym[k][j], b = w->sym[k][j + 1];
                /* byte tokens of SPM are fall-backs, never merged */
                if (spm && (v->type[a] != 1 || v->type[b] != 1)) continue;
                cnt[(size_t)a * ns + (size_t)b] += w->count[k];
            }
        int best_a = -1, best_b = -1, best = 0;
        for (uint32_t a = 0; a < ns; a++)
            for (uint32_t b = 0; b < ns; b++) {
                int c = cnt[(size_t)a * ns + b];
                if (c < 2) continue; /* a pair must occur twice to be worth a token */
                bool better = best_a < 0 || c > best;
                if (!better && c == best) {
                    int cmp = strcmp(v->tok[a], v->tok[best_a]);
                    better = cmp < 0 || (cmp == 0 && strcmp(v->tok[b], v->tok[best_b]) < 0);
                }
                if (better) { best = c; best_a = (int)a; best_b = (int)b; }
            }
        free(cnt);
        if (best_a < 0) break;
        size_t la = strlen(v->tok[best_a]), lb = strlen(v->tok[best_b]);
        char *joined = malloc(la + lb + 1), *line = malloc(la + lb + 2);
        if (!joined || !line) { free(joined); free(line); return -1; }
        memcpy(joined, v->tok[best_a], la);
        memcpy(joined + la, v->tok[best_b], lb + 1);
        memcpy(line, v->tok[best_a], la);
        line[la] = ' ';
        memcpy(line + la + 1, v->tok[best_b], lb + 1);
        int id = vocab_find(v, joined);
        if (id < 0) id = vocab_add(v, joined, 1, score_base - (float)m);
        free(joined);
        if (id < 0) { free(line); return -1; }
        if (!spm) {
            char **nm = realloc(v->merges, (v->n_merges + 1) * sizeof *nm);
            if (!nm) { free(line); return -1; }
            v->merges = nm;
            v->merges[v->n_merges++] = line;
        } else {
            free(line);
        }
        for (int k = 0; k < w->n; k++) {
            int o = 0;
            for (int j = 0; j < w->len[k]; j++) {
                if (j + 1 < w->len[k] && w->sym[k][j] == best_a && w->sym[k][j + 1] == best_b) {
                    w->sym[k][o++] = id;
                    j++;
                } else {
                    w->sym[k][o++] = w->sym[k][j];
                }
            }
            w->len[k] = o;
        }
    }
    return 0;
}

static int build_vocab(const struct kvs_tiny_opts *o, struct vocab *v)
{
    memset(v, 0, sizeof *v);
    struct words w = {0};
    uint32_t cp[256];
    uint8_t order[256];
    int rc = -1;
    byte_unicode(cp, order);
    if (o->tokenizer == KVS_TINY_TOK_BPE) {
        vocab_add(v, "<|endoftext|>", 3, 0);
        vocab_add(v, "<|im_start|>", 3, 0);
        vocab_add(v, "<|im_end|>", 3, 0);
        for (int i = 0; i < 256; i++) {
            char buf[8];
            utf8(cp[order[i]], buf);
            vocab_add(v, buf, 1, 0);
        }
        if (v->oom || split_words(v, &w, false, cp) || learn_merges(v, &w, o->n_merges, false, 0)) goto out;
    } else if (o->tokenizer == KVS_TINY_TOK_SPM) {
        vocab_add(v, "<unk>", 2, 0);
        vocab_add(v, "<s>", 3, 0);
        vocab_add(v, "</s>", 3, 0);
        for (int i = 0; i < 256; i++) {
            char buf[8];
            snprintf(buf, sizeof buf, "<0x%02X>", i);
            vocab_add(v, buf, 6, 0);
        }
        /* single characters get the lowest scores, merged pieces -1, -2, … by merge order */
        uint32_t first_char = v->n;
        if (v->oom || split_words(v, &w, true, cp)) goto out;
        for (uint32_t i = first_char; i < v->n; i++) v->score[i] = -1000.0f - (float)(i - first_char);
        if (learn_merges(v, &w, o->n_merges, true, -1.0f)) goto out;
    }
    rc = v->oom ? -1 : 0;
out:
    words_free(&w);
    return rc;
}

uint32_t kvs_tiny_vocab_size(const struct kvs_tiny_opts *o)
{
    struct vocab v;
    if (o->tokenizer == KVS_TINY_TOK_NONE) return 0;
    if (build_vocab(o, &v)) { vocab_free(&v); return 0; }
    uint32_t n = v.n;
    vocab_free(&v);
    return n;
}

/* ---- weights ---- */

struct rng { uint64_t s; };

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(struct rng *r) /* (0, 1) */
{
    return ((double)(rng_next(r) >> 11) + 0.5) / 9007199254740992.0;
}

static float rng_normal(struct rng *r)
{
    double u1 = rng_unit(r), u2 = rng_unit(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

enum fill { FILL_NORMAL, FILL_NORM, FILL_ROPE, FILL_KBIAS };

struct tdesc {
    char name[64];
    uint32_t n_dims;
    uint64_t ne[2];
    uint32_t type;
    enum fill fill;
    float std;
    uint64_t offset, nbytes;
};

static int type_ok(uint32_t type, uint64_t cols, const char *what)
{
    uint32_t be = kvs_type_block_elems(type);
    if (be == 0) return fail("%s: type %u has no quantizer", what, type);
    if (cols % be) return fail("%s: %llu columns is not a multiple of the %s block (%u)", what,
                               (unsigned long long)cols, kvs_ggml_type_name(type), be);
    return 0;
}

static int add_tensor(struct tdesc *t, int *n, const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                      uint32_t type, enum fill fill, float std)
{
    struct tdesc *d = &t[(*n)++];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->n_dims = n_dims;
    d->ne[0] = ne0;
    d->ne[1] = ne1;
    d->type = type;
    d->fill = fill;
    d->std = std;
    if (type_ok(type, ne0, name)) return -1;
    uint64_t rb;
    kvs_type_row_bytes(type, ne0, &rb);
    d->nbytes = rb * ne1;
    return 0;
}

/* llama3 RoPE: per frequency pair, the divisor applied to the base frequency. */
static float llama3_factor(const struct kvs_tiny_opts *o, uint32_t i, uint32_t head_dim)
{
    double freq = pow((double)o->rope_theta, -2.0 * i / head_dim);
    double wavelen = 2.0 * M_PI / freq;
    double low_wl = o->rope_orig_ctx / o->rope_low_freq, high_wl = o->rope_orig_ctx / o->rope_high_freq;
    if (wavelen < high_wl) return 1.0f;
    if (wavelen > low_wl) return o->rope_factor;
    double smooth = (o->rope_orig_ctx / wavelen - o->rope_low_freq) / (o->rope_high_freq - o->rope_low_freq);
    return (float)(1.0 / ((1.0 - smooth) / o->rope_factor + smooth));
}

static uint32_t file_type_of(uint32_t wtype)
{
    switch (wtype) {
    case KVS_GGML_F32: return 0;
    case KVS_GGML_F16: return 1;
    case KVS_GGML_Q4_0: return 2;
    case KVS_GGML_Q4_1: return 3;
    case KVS_GGML_Q8_0: return 7;
    case KVS_GGML_Q5_0: return 8;
    case KVS_GGML_Q5_1: return 9;
    case KVS_GGML_Q4_K: return 15;
    case KVS_GGML_Q6_K: return 18;
    case KVS_GGML_BF16: return 32;
    }
    return 0;
}

static const char chatml_template[] =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
static const char inst_template[] =
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + "
    "eos_token }}{% endif %}{% endfor %}";

/* One row of COLS random Q4_0 or Q8_0 elements with rms STD: blocks of a fixed scale and uniform
 * codes (uniform codes q - 8 in -8..7 have rms 4.64; int8 codes in -128..127 have rms 73.9). */
static void random_block_row(uint32_t type, uint64_t cols, float std, struct rng *r, uint8_t *q)
{
    bool q8 = type == KVS_GGML_Q8_0;
    uint16_t d = kvs_fp32_to_fp16(std / (q8 ? 73.9f : 4.64f));
    size_t code_bytes = q8 ? 32 : 16;
    for (uint64_t b = 0; b < cols / 32; b++, q += 2 + code_bytes) {
        memcpy(q, &d, 2);
        for (size_t j = 0; j < code_bytes; j += 8) {
            uint64_t x = rng_next(r);
            memcpy(q + 2 + j, &x, 8);
        }
    }
}

int kvs_tiny_build(const struct kvs_tiny_opts *o, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    bool qwen = strcmp(o->arch, "qwen2") == 0;
    if (!qwen && strcmp(o->arch, "llama") != 0) return fail("unknown arch '%s'", o->arch);
    if (o->version != 2 && o->version != 3) return fail("version %u: only 2 and 3 are written", o->version);
    if (o->alignment & (o->alignment - 1)) return fail("alignment %u is not a power of two", o->alignment);
    if (!o->n_layer || !o->n_embd || !o->n_head || !o->n_head_kv || !o->n_ff)
        return fail("every dimension must be nonzero");
    if (o->n_embd % o->n_head || o->n_head % o->n_head_kv)
        return fail("n_embd %% n_head and n_head %% n_head_kv must be 0");
    if (o->n_layer > 1000) return fail("too many layers");
    uint32_t hd = o->n_embd / o->n_head, d_kv = hd * o->n_head_kv;
    if (o->rope_llama3 && hd % 2) return fail("llama3 rope needs an even head size");

    struct vocab v;
    if (build_vocab(o, &v)) {
        vocab_free(&v);
        return fail("out of memory building the vocabulary");
    }
    uint32_t n_vocab = o->n_vocab ? o->n_vocab : v.n;
    if (n_vocab < v.n) {
        uint32_t nv = v.n;
        vocab_free(&v);
        return fail("n_vocab %u is below the tokenizer's %u tokens", o->n_vocab, nv);
    }
    if (n_vocab == 0) {
        vocab_free(&v);
        return fail("n_vocab must be nonzero without a tokenizer");
    }
    if (o->tokenizer != KVS_TINY_TOK_NONE)
        for (uint32_t i = v.n; i < n_vocab; i++) {
            char buf[32];
            snprintf(buf, sizeof buf, "<|unused_%u|>", i);
            vocab_add(&v, buf, 5, 0);
        }
    if (v.oom) {
        vocab_free(&v);
        return fail("out of memory building the vocabulary");
    }

    /* tensors */
    int nt = 0, cap = 4 + 16 * (int)o->n_layer;
    struct tdesc *t = calloc((size_t)cap, sizeof *t);
    if (!t) { vocab_free(&v); return fail("out of memory"); }
    int bad = 0;
    char name[64];
    bad |= add_tensor(t, &nt, "token_embd.weight", 2, o->n_embd, n_vocab, o->embd_type, FILL_NORMAL, o->embd_std);
    if (o->rope_llama3) bad |= add_tensor(t, &nt, "rope_freqs.weight", 1, hd / 2, 1, KVS_GGML_F32, FILL_ROPE, 0);
    for (uint32_t l = 0; l < o->n_layer && !bad; l++) {
#define T(suffix, nd, c, r, ty, fl, sd) \
    (snprintf(name, sizeof name, "blk.%u.%s", l, suffix), add_tensor(t, &nt, name, nd, c, r, ty, fl, sd))
        bad |= T("attn_norm.weight", 1, o->n_embd, 1, KVS_GGML_F32, FILL_NORM, 0);
        bad |= T("attn_q.weight", 2, o->n_embd, o->n_embd, o->wtype, FILL_NORMAL, o->weight_std);
        bad |= T("attn_k.weight", 2, o->n_embd, d_kv, o->wtype, FILL_NORMAL, o->weight_std);
        bad |= T("attn_v.weight", 2, o->n_embd, d_kv, o->wtype, FILL_NORMAL, o->weight_std);
        if (qwen) {
            bad |= T("attn_q.bias", 1, o->n_embd, 1, KVS_GGML_F32, FILL_NORMAL, o->weight_std);
            bad |= T("attn_k.bias", 1, d_kv, 1, KVS_GGML_F32, FILL_KBIAS, o->weight_std);
            bad |= T("attn_v.bias", 1, d_kv, 1, KVS_GGML_F32, FILL_NORMAL, o->weight_std);
        }
        bad |= T("attn_output.weight", 2, o->n_embd, o->n_embd, o->wtype, FILL_NORMAL, o->weight_std);
        bad |= T("ffn_norm.weight", 1, o->n_embd, 1, KVS_GGML_F32, FILL_NORM, 0);
        bad |= T("ffn_gate.weight", 2, o->n_embd, o->n_ff, o->wtype, FILL_NORMAL, o->weight_std);
        bad |= T("ffn_up.weight", 2, o->n_embd, o->n_ff, o->wtype, FILL_NORMAL, o->weight_std);
        bad |= T("ffn_down.weight", 2, o->n_ff, o->n_embd, o->wtype, FILL_NORMAL, o->weight_std);
#undef T
    }
    if (!bad) bad |= add_tensor(t, &nt, "output_norm.weight", 1, o->n_embd, 1, KVS_GGML_F32, FILL_NORM, 0);
    if (!bad && !o->tied)
        bad |= add_tensor(t, &nt, "output.weight", 2, o->n_embd, n_vocab, o->out_type, FILL_NORMAL, o->weight_std);
    if (bad) {
        free(t);
        vocab_free(&v);
        return -1;
    }
    uint64_t align = o->alignment ? o->alignment : 32, off = 0;
    for (int i = 0; i < nt; i++) {
        t[i].offset = off;
        off += (t[i].nbytes + align - 1) / align * align;
    }

    /* metadata */
    struct kvs_gbuf kv = {0};
    uint64_t n_kv = 0;
    char key[128];
#define K(fmt) (snprintf(key, sizeof key, fmt, o->arch), n_kv++, key)
    kvs_gbuf_kv_str(&kv, "general.architecture", o->arch), n_kv++;
    kvs_gbuf_kv_str(&kv, "general.name", o->name ? o->name : "tiny"), n_kv++;
    if (o->alignment) kvs_gbuf_kv_u32(&kv, "general.alignment", o->alignment), n_kv++;
    kvs_gbuf_kv_u32(&kv, K("%s.block_count"), o->n_layer);
    kvs_gbuf_kv_u32(&kv, K("%s.context_length"), o->n_ctx);
    kvs_gbuf_kv_u32(&kv, K("%s.embedding_length"), o->n_embd);
    kvs_gbuf_kv_u32(&kv, K("%s.feed_forward_length"), o->n_ff);
    kvs_gbuf_kv_u32(&kv, K("%s.attention.head_count"), o->n_head);
    kvs_gbuf_kv_u32(&kv, K("%s.attention.head_count_kv"), o->n_head_kv);
    kvs_gbuf_kv_f32(&kv, K("%s.rope.freq_base"), o->rope_theta);
    kvs_gbuf_kv_f32(&kv, K("%s.attention.layer_norm_rms_epsilon"), o->rms_eps);
    kvs_gbuf_kv_u32(&kv, "general.file_type", file_type_of(o->wtype)), n_kv++;
    kvs_gbuf_kv_u32(&kv, K("%s.vocab_size"), n_vocab);
    kvs_gbuf_kv_u32(&kv, K("%s.rope.dimension_count"), hd);
    if (o->rope_llama3) {
        kvs_gbuf_kv_str(&kv, K("%s.rope.scaling.type"), "llama3");
        kvs_gbuf_kv_f32(&kv, K("%s.rope.scaling.factor"), o->rope_factor);
        kvs_gbuf_kv_u32(&kv, K("%s.rope.scaling.original_context_length"), o->rope_orig_ctx);
        kvs_gbuf_kv_f32(&kv, K("%s.rope.scaling.low_freq_factor"), o->rope_low_freq);
        kvs_gbuf_kv_f32(&kv, K("%s.rope.scaling.high_freq_factor"), o->rope_high_freq);
    }
#undef K
    if (o->tokenizer != KVS_TINY_TOK_NONE) {
        bool spm = o->tokenizer == KVS_TINY_TOK_SPM;
        bool add_bos = o->add_bos < 0 ? spm : o->add_bos != 0;
        kvs_gbuf_kv_str(&kv, "tokenizer.ggml.model", spm ? "llama" : "gpt2"), n_kv++;
        if (!spm) kvs_gbuf_kv_str(&kv, "tokenizer.ggml.pre", o->tok_pre ? o->tok_pre : "default"), n_kv++;
        kvs_gbuf_kv_strs(&kv, "tokenizer.ggml.tokens", (const char *const *)v.tok, v.n), n_kv++;
        if (spm) kvs_gbuf_kv_f32s(&kv, "tokenizer.ggml.scores", v.score, v.n), n_kv++;
        kvs_gbuf_kv_i32s(&kv, "tokenizer.ggml.token_type", v.type, v.n), n_kv++;
        if (!spm) kvs_gbuf_kv_strs(&kv, "tokenizer.ggml.merges", (const char *const *)v.merges, v.n_merges), n_kv++;
        kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.bos_token_id", 1), n_kv++;
        kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.eos_token_id", 2), n_kv++;
        kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.unknown_token_id", 0), n_kv++;
        kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.padding_token_id", spm ? 0 : 2), n_kv++;
        kvs_gbuf_kv_bool(&kv, "tokenizer.ggml.add_bos_token", add_bos), n_kv++;
        kvs_gbuf_kv_bool(&kv, "tokenizer.ggml.add_eos_token", false), n_kv++;
        kvs_gbuf_kv_bool(&kv, "tokenizer.ggml.add_space_prefix", spm), n_kv++;
        const char *tmpl = o->chat_template ? o->chat_template : spm ? inst_template : chatml_template;
        if (*tmpl) kvs_gbuf_kv_str(&kv, "tokenizer.chat_template", tmpl), n_kv++;
    }
    kvs_gbuf_kv_u32(&kv, "general.quantization_version", 2), n_kv++;
    vocab_free(&v);

    /* file */
    struct kvs_gbuf f = {0};
    kvs_gbuf_header(&f, o->version, (uint64_t)nt, n_kv);
    kvs_gbuf_bytes(&f, kv.p, kv.len);
    kvs_gbuf_free(&kv);
    for (int i = 0; i < nt; i++) kvs_gbuf_tensor(&f, t[i].name, t[i].n_dims, t[i].ne, t[i].type, t[i].offset);
    kvs_gbuf_pad(&f, align);
    if (o->random_blocks && !f.oom && f.cap < f.len + off) { /* one allocation for GBs of weights */
        uint8_t *np = realloc(f.p, f.len + off);
        if (np) { f.p = np; f.cap = f.len + off; }
    }
    struct rng r = {o->seed * 0x2545F4914F6CDD1Dull + 12345};
    float *row = NULL;
    uint8_t *q = NULL;
    for (int i = 0; i < nt && !f.oom && !kv.oom; i++) {
        uint64_t cols = t[i].ne[0], rb = t[i].nbytes / t[i].ne[1];
        float *nr = realloc(row, cols * sizeof *row);
        uint8_t *nq = realloc(q, rb);
        if (nr) row = nr;
        if (nq) q = nq;
        if (!nr || !nq) { f.oom = true; break; }
        bool blocks = o->random_blocks && t[i].fill == FILL_NORMAL &&
                      (t[i].type == KVS_GGML_Q4_0 || t[i].type == KVS_GGML_Q8_0);
        for (uint64_t rr = 0; rr < t[i].ne[1]; rr++) {
            if (blocks) {
                random_block_row(t[i].type, cols, t[i].std, &r, q);
                kvs_gbuf_bytes(&f, q, rb);
                continue;
            }
            for (uint64_t c = 0; c < cols; c++) {
                if (t[i].fill == FILL_NORM) row[c] = 1.0f + o->norm_jitter * rng_normal(&r);
                else if (t[i].fill == FILL_ROPE) row[c] = llama3_factor(o, (uint32_t)c, hd);
                else row[c] = t[i].std * rng_normal(&r);
                /* the same draws as FILL_NORMAL: without a shift the model's bytes do not change */
                if (t[i].fill == FILL_KBIAS && o->k_bias_shift != 0.0f && c % hd == 0) row[c] += o->k_bias_shift;
            }
            kvs_quant_row(t[i].type, row, q, (int64_t)cols);
            kvs_gbuf_bytes(&f, q, rb);
        }
        kvs_gbuf_pad(&f, align);
    }
    free(row);
    free(q);
    free(t);
    if (f.oom) {
        kvs_gbuf_free(&f);
        return fail("out of memory writing the model");
    }
    *out = f.p;
    *len = f.len;
    return 0;
}

int kvs_tiny_write(const char *path, const struct kvs_tiny_opts *o)
{
    uint8_t *buf;
    size_t len;
    if (kvs_tiny_build(o, &buf, &len)) return -1;
    FILE *fp = fopen(path, "wb");
    if (!fp) {
        free(buf);
        return fail("%s: cannot create", path);
    }
    size_t w = fwrite(buf, 1, len, fp);
    int rc = fclose(fp);
    free(buf);
    if (w != len || rc != 0) return fail("%s: write failed", path);
    return 0;
}
