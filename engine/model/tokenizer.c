/* Tokenizer built from GGUF tokenizer.* metadata: byte-level BPE (gpt2 style) with hand-written
 * matchers for the pre-tokenizer regexes, SentencePiece-style BPE over scores with byte
 * fallback, special-token splitting, piece decoding and chat-template formatting.
 * Depends on libc, engine/model/gguf.h and the generated Unicode table (tokenizer_unicode.c) only;
 * never prints, never exits. A built tokenizer is immutable: encode/decode are thread-safe. */
#include "tokenizer.h"
#include "tokenizer_unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* GGUF token types (llama.cpp's convention). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* Pre-tokenizer regex families, named after tokenizer.ggml.pre. */
enum pre_kind {
    PRE_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
    PRE_SMOLLM, /* every \p{N} isolated first, then PRE_GPT2 */
    PRE_LLAMA3, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
                   \s*[\r\n]+|\s+(?!\S)|\s+ */
    PRE_QWEN2,  /* PRE_LLAMA3 with \p{N} instead of \p{N}{1,3} */
};

#define MAX_VOCAB (1 << 24)
#define MAX_EOG 16
#define CP_INVALID 0xFFFFFFFFu

struct merge_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX when empty */
    int32_t rank;
    int32_t id;   /* the merged token */
};

struct kvs_tokenizer {
    enum kvs_tok_kind kind;
    enum pre_kind pre;
    int32_t n_vocab;
    char *text;          /* token texts, concatenated */
    uint32_t *text_off;  /* (n_vocab + 1) offsets into text */
    uint8_t *type;       /* (n_vocab) TT_* */
    float *score;        /* (n_vocab) SPM merge scores; NULL for BPE */
    char *piece;         /* decoded bytes of every token, concatenated */
    uint32_t *piece_off; /* (n_vocab + 1) offsets into piece */
    int32_t *tok_hash;   /* open addressing: token text -> id, -1 when empty */
    uint64_t tok_mask;
    struct merge_slot *merges; /* BPE: (left, right) -> rank, merged id */
    uint64_t merge_mask;
    int32_t byte_id[256]; /* BPE: id of each byte's alphabet char; SPM: id of <0xXX>; -1 none */
    int32_t *special;     /* ids matched as whole strings, longest text first */
    int32_t n_special;
    uint8_t special_first[32]; /* bitset of the first bytes of special texts */
    int32_t bos, eos, unk;
    int32_t eog[MAX_EOG];
    int n_eog;
    bool add_bos, add_space_prefix, ignore_merges;
    enum kvs_chat_kind chat;
    bool chat_bos;        /* the template renders bos_token */
    bool chat_llama2_sys; /* the template wraps the system message in <<SYS>> */
    char *chat_default_system; /* ChatML default system prompt, or NULL */
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; /* splitmix64 finaliser */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static const char *tok_text(const struct kvs_tokenizer *t, int32_t id, uint32_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id];
    return t->text + t->text_off[id];
}

/* Id of the token whose text is exactly S[0..N), or -1. */
static int32_t tok_find(const struct kvs_tokenizer *t, const void *s, size_t n)
{
    for (uint64_t i = hash_bytes(s, n) & t->tok_mask;; i = (i + 1) & t->tok_mask) {
        int32_t id = t->tok_hash[i];
        if (id < 0) return -1;
        uint32_t len;
        const char *txt = tok_text(t, id, &len);
        if (len == n && memcmp(txt, s, n) == 0) return id;
    }
}

static const struct merge_slot *merge_find(const struct kvs_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint64_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const struct merge_slot *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

/* Decodes one UTF-8 sequence at S[p..e). Returns its byte length (1..4); a malformed, overlong,
 * surrogate or truncated sequence yields one byte with *cp = CP_INVALID. */
static int utf8_next(const uint8_t *s, size_t p, size_t e, uint32_t *cp)
{
    uint8_t c = s[p];
    if (c < 0x80) { *cp = c; return 1; }
    int n;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) { n = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 4; v = c & 0x07; min = 0x10000; }
    else { *cp = CP_INVALID; return 1; }
    if (e - p < (size_t)n) { *cp = CP_INVALID; return 1; }
    for (int i = 1; i < n; i++) {
        if ((s[p + i] & 0xC0) != 0x80) { *cp = CP_INVALID; return 1; }
        v = (v << 6) | (s[p + i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) { *cp = CP_INVALID; return 1; }
    *cp = v;
    return n;
}

static int utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* KVS_UC_* flags of a code point (0 for CP_INVALID and everything else). */
static uint32_t cp_class(uint32_t cp)
{
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return KVS_UC_L;
        if (cp >= '0' && cp <= '9') return KVS_UC_N;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return KVS_UC_S;
        return 0;
    }
    uint32_t lo = 0, hi = kvs_unicode_n_ranges;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cp > kvs_unicode_ranges[mid].hi) lo = mid + 1;
        else if (cp < kvs_unicode_ranges[mid].lo) hi = mid;
        else return kvs_unicode_ranges[mid].flags;
    }
    return 0;
}

/* GPT-2's byte alphabet: printable bytes map to themselves, the other 68 bytes to U+0100 on. */
static uint32_t byte_to_cp(uint8_t b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE) return b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++) {
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE)) n++;
    }
    return 256 + n;
}

/* ---------------------------------------------------------------- pre-tokenizer matchers */

struct cpinfo {
    uint32_t cp;
    uint32_t cls;
    int len;
};

static struct cpinfo cp_at(const uint8_t *s, size_t p, size_t e)
{
    struct cpinfo c;
    c.len = utf8_next(s, p, e, &c.cp);
    c.cls = c.cp == CP_INVALID ? 0 : cp_class(c.cp);
    return c;
}

/* End of the run of code points from P whose class intersects WANT (or, when NEG, does not).
 * At most MAXN code points. *LAST gets the start of the run's last code point. */
static size_t run_class(const uint8_t *s, size_t p, size_t e, uint32_t want, bool neg, size_t maxn,
                        size_t *last)
{
    size_t n = 0;
    if (last) *last = p;
    while (p < e && n < maxn) {
        struct cpinfo c = cp_at(s, p, e);
        bool in = (c.cls & want) != 0;
        if (in == neg) break;
        if (last) *last = p;
        p += (size_t)c.len;
        n++;
    }
    return p;
}

static bool is_ascii_ci(uint8_t c, char lower, bool ci)
{
    return c == (uint8_t)lower || (ci && c == (uint8_t)(lower - 32));
}

/* 's|'t|'re|'ve|'m|'ll|'d at P (which holds '\''); CI also accepts upper case. Returns the match
 * end or P. */
static size_t match_contraction(const uint8_t *s, size_t p, size_t e, bool ci)
{
    if (p + 1 >= e) return p;
    uint8_t a = s[p + 1];
    /* Unicode case folding, as the reference regex engine applies it: U+017F (long s) is 's' */
    if (ci && p + 2 < e && a == 0xC5 && s[p + 2] == 0xBF) return p + 3;
    if (is_ascii_ci(a, 's', ci) || is_ascii_ci(a, 't', ci) || is_ascii_ci(a, 'm', ci) ||
        is_ascii_ci(a, 'd', ci))
        return p + 2;
    if (p + 2 >= e) return p;
    uint8_t b = s[p + 2];
    if ((is_ascii_ci(a, 'r', ci) && is_ascii_ci(b, 'e', ci)) ||
        (is_ascii_ci(a, 'v', ci) && is_ascii_ci(b, 'e', ci)) ||
        (is_ascii_ci(a, 'l', ci) && is_ascii_ci(b, 'l', ci)))
        return p + 3;
    return p;
}

/* \s+(?!\S) and, when PLAIN_TOO, the trailing \s+ alternative, at P (a whitespace code point). */
static size_t match_space_run(const uint8_t *s, size_t p, size_t e, bool plain_too)
{
    size_t last;
    size_t k = run_class(s, p, e, KVS_UC_S, false, SIZE_MAX, &last);
    if (k == e) return e;     /* nothing follows: the whole run */
    if (last > p) return last; /* leave the last space to the next word */
    return plain_too ? k : p;
}

static size_t match_gpt2(const uint8_t *s, size_t p, size_t e)
{
    struct cpinfo c0 = cp_at(s, p, e);
    if (c0.cp == '\'') {
        size_t m = match_contraction(s, p, e, false);
        if (m > p) return m;
    }
    size_t q = p;
    struct cpinfo c = c0;
    if (c0.cp == ' ' && p + 1 < e) {
        q = p + 1;
        c = cp_at(s, q, e);
    }
    if (c.cls & KVS_UC_L) return run_class(s, q, e, KVS_UC_L, false, SIZE_MAX, NULL);
    if (c.cls & KVS_UC_N) return run_class(s, q, e, KVS_UC_N, false, SIZE_MAX, NULL);
    if (!(c.cls & KVS_UC_S))
        return run_class(s, q, e, KVS_UC_L | KVS_UC_N | KVS_UC_S, true, SIZE_MAX, NULL);
    if (c0.cls & KVS_UC_S) return match_space_run(s, p, e, false);
    return p;
}

static size_t match_llama3(const uint8_t *s, size_t p, size_t e, size_t max_digits)
{
    struct cpinfo c0 = cp_at(s, p, e);
    if (c0.cp == '\'') {
        size_t m = match_contraction(s, p, e, true);
        if (m > p) return m;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c0.cls & KVS_UC_L) return run_class(s, p, e, KVS_UC_L, false, SIZE_MAX, NULL);
    if (c0.cp != '\r' && c0.cp != '\n' && !(c0.cls & KVS_UC_N) && p + (size_t)c0.len < e) {
        struct cpinfo c1 = cp_at(s, p + (size_t)c0.len, e);
        if (c1.cls & KVS_UC_L)
            return run_class(s, p + (size_t)c0.len, e, KVS_UC_L, false, SIZE_MAX, NULL);
    }
    /* \p{N}{1,3} */
    if (c0.cls & KVS_UC_N) return run_class(s, p, e, KVS_UC_N, false, max_digits, NULL);
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    size_t q = p;
    struct cpinfo c = c0;
    if (c0.cp == ' ' && p + 1 < e) {
        q = p + 1;
        c = cp_at(s, q, e);
    }
    if (!(c.cls & (KVS_UC_S | KVS_UC_L | KVS_UC_N))) {
        size_t m = run_class(s, q, e, KVS_UC_L | KVS_UC_N | KVS_UC_S, true, SIZE_MAX, NULL);
        while (m < e && (s[m] == '\r' || s[m] == '\n')) m++;
        return m;
    }
    if (c0.cls & KVS_UC_S) {
        /* \s*[\r\n]+ : through the last newline of the whitespace run */
        size_t k = run_class(s, p, e, KVS_UC_S, false, SIZE_MAX, NULL);
        for (size_t i = k; i > p; i--) {
            if (s[i - 1] == '\r' || s[i - 1] == '\n') return i;
        }
        return match_space_run(s, p, e, true); /* \s+(?!\S)|\s+ */
    }
    return p;
}

/* ---------------------------------------------------------------- output and scratch */

struct out {
    int32_t *ids;
    int64_t cap;
    int64_t n;
};

static void out_push(struct out *o, int32_t id)
{
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

/* Heap entry: BPE orders by rank ascending, SPM by score descending; ties by left position. */
struct bigram {
    double key;   /* BPE: rank; SPM: -score (so smaller is better in both; exact for both) */
    int32_t left, right;
    int32_t a, b; /* BPE: the two ids merged; SPM: the merged byte length in a */
    int32_t id;   /* BPE: the merged token */
};

struct scratch {
    int32_t *id, *prev, *next; /* per symbol */
    uint32_t *start, *len;     /* SPM: byte span of each symbol */
    struct bigram *heap;
    size_t cap_sym, cap_heap, n_heap;
};

static void scratch_free(struct scratch *w)
{
    free(w->id);
    free(w->prev);
    free(w->next);
    free(w->start);
    free(w->len);
    free(w->heap);
}

static bool grow(void **p, size_t n, size_t elem)
{
    void *q = realloc(*p, n * elem);
    if (!q) return false;
    *p = q;
    return true;
}

static bool scratch_reserve(struct scratch *w, size_t n)
{
    if (n > (SIZE_MAX / sizeof(struct bigram)) / 4) return false;
    if (n > w->cap_sym) {
        size_t c = KVS_MAX(n, 2 * w->cap_sym);
        if (!grow((void **)&w->id, c, sizeof(int32_t)) || !grow((void **)&w->prev, c, sizeof(int32_t)) ||
            !grow((void **)&w->next, c, sizeof(int32_t)) || !grow((void **)&w->start, c, sizeof(uint32_t)) ||
            !grow((void **)&w->len, c, sizeof(uint32_t)))
            return false;
        w->cap_sym = c;
    }
    /* each merge pushes at most two new pairs: (n - 1) + 2 (n - 1) entries at most */
    size_t h = 3 * n + 1;
    if (h > w->cap_heap) {
        size_t c = KVS_MAX(h, 2 * w->cap_heap);
        if (!grow((void **)&w->heap, c, sizeof(struct bigram))) return false;
        w->cap_heap = c;
    }
    w->n_heap = 0;
    return true;
}

static bool bigram_less(const struct bigram *x, const struct bigram *y)
{
    return x->key < y->key || (x->key == y->key && x->left < y->left);
}

static void heap_push(struct scratch *w, struct bigram g)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!bigram_less(&g, &w->heap[up])) break;
        w->heap[i] = w->heap[up];
        i = up;
    }
    w->heap[i] = g;
}

static struct bigram heap_pop(struct scratch *w)
{
    struct bigram top = w->heap[0];
    struct bigram last = w->heap[--w->n_heap];
    size_t n = w->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bigram_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) w->heap[i] = last;
    return top;
}

/* ---------------------------------------------------------------- byte-level BPE */

static void bpe_try_pair(const struct kvs_tokenizer *t, struct scratch *w, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    const struct merge_slot *m = merge_find(t, w->id[l], w->id[r]);
    if (!m) return;
    struct bigram g = {(double)m->rank, l, r, w->id[l], w->id[r], m->id};
    heap_push(w, g);
}

/* Encodes one pre-token word S[0..n) (raw bytes). Returns KVS_OK, KVS_ERR_FORMAT when a byte has
 * no token and the vocabulary no unknown token, or KVS_ERR_NOMEM. */
static int bpe_word(const struct kvs_tokenizer *t, struct scratch *w, const uint8_t *s, size_t n,
                    struct out *o)
{
    if (n == 0) return KVS_OK;
    if (t->ignore_merges) {
        /* Llama 3: a word that is a whole token is taken as is; look up its byte-alphabet text
         * (at most two UTF-8 bytes per byte) */
        char stack[256], *buf = n <= sizeof(stack) / 2 ? stack : malloc(2 * n);
        if (!buf) return KVS_ERR_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) k += (size_t)utf8_put(byte_to_cp(s[i]), buf + k);
        int32_t id = tok_find(t, buf, k);
        if (buf != stack) free(buf);
        if (id >= 0) {
            out_push(o, id);
            return KVS_OK;
        }
    }
    if (!scratch_reserve(w, n)) return KVS_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[s[i]];
        if (id < 0) id = t->unk;
        if (id < 0) return KVS_ERR_FORMAT;
        w->id[i] = id;
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) bpe_try_pair(t, w, (int32_t)i, (int32_t)i + 1);
    while (w->n_heap > 0) {
        struct bigram g = heap_pop(w);
        /* stale when either side has merged since the pair was queued */
        if (w->id[g.left] < 0 || w->id[g.right] < 0 || w->next[g.left] != g.right ||
            w->id[g.left] != g.a || w->id[g.right] != g.b)
            continue;
        w->id[g.left] = g.id;
        w->id[g.right] = -1;
        int32_t nx = w->next[g.right];
        w->next[g.left] = nx;
        if (nx >= 0) w->prev[nx] = g.left;
        bpe_try_pair(t, w, w->prev[g.left], g.left);
        bpe_try_pair(t, w, g.left, nx);
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) out_push(o, w->id[i]);
    return KVS_OK;
}

typedef size_t (*match_fn)(const uint8_t *s, size_t p, size_t e);

static size_t match_llama3_3(const uint8_t *s, size_t p, size_t e) { return match_llama3(s, p, e, 3); }
static size_t match_qwen2(const uint8_t *s, size_t p, size_t e) { return match_llama3(s, p, e, 1); }

/* Splits S[b..e) into words with MATCH (unmatched stretches become words of their own, as a
 * regex split that keeps everything does) and BPE-encodes each. */
static int bpe_split(const struct kvs_tokenizer *t, struct scratch *w, const uint8_t *s, size_t b,
                     size_t e, match_fn match, struct out *o)
{
    size_t p = b, gap = b;
    int rc = KVS_OK;
    while (p < e && rc == KVS_OK) {
        size_t m = match(s, p, e);
        if (m > p) {
            if (gap < p) rc = bpe_word(t, w, s + gap, p - gap, o);
            if (rc == KVS_OK) rc = bpe_word(t, w, s + p, m - p, o);
            p = gap = m;
        } else {
            uint32_t cp;
            p += (size_t)utf8_next(s, p, e, &cp);
        }
    }
    if (rc == KVS_OK && gap < e) rc = bpe_word(t, w, s + gap, e - gap, o);
    return rc;
}

static int bpe_text(const struct kvs_tokenizer *t, struct scratch *w, const uint8_t *s, size_t n,
                    struct out *o)
{
    switch (t->pre) {
    case PRE_GPT2: return bpe_split(t, w, s, 0, n, match_gpt2, o);
    case PRE_LLAMA3: return bpe_split(t, w, s, 0, n, match_llama3_3, o);
    case PRE_QWEN2: return bpe_split(t, w, s, 0, n, match_qwen2, o);
    case PRE_SMOLLM: break;
    }
    /* SmolLM: each \p{N} code point is a fragment of its own, the rest goes through GPT-2 */
    size_t p = 0, frag = 0;
    while (p < n) {
        struct cpinfo c = cp_at(s, p, n);
        if (c.cls & KVS_UC_N) {
            int rc = bpe_split(t, w, s, frag, p, match_gpt2, o);
            if (rc == KVS_OK) rc = bpe_word(t, w, s + p, (size_t)c.len, o);
            if (rc != KVS_OK) return rc;
            frag = p + (size_t)c.len;
        }
        p += (size_t)c.len;
    }
    return bpe_split(t, w, s, frag, n, match_gpt2, o);
}

/* ---------------------------------------------------------------- SentencePiece-style BPE */

static void spm_try_pair(const struct kvs_tokenizer *t, struct scratch *w, const char *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return;
    uint32_t len = w->len[l] + w->len[r];
    int32_t id = tok_find(t, s + w->start[l], len);
    if (id < 0) return;
    struct bigram g = {-t->score[id], l, r, (int32_t)len, 0, id};
    heap_push(w, g);
}

/* Encodes one raw-text fragment: spaces become U+2581, with one prepended when PREFIX. */
static int spm_text(const struct kvs_tokenizer *t, struct scratch *w, const uint8_t *s, size_t n,
                    bool prefix, struct out *o)
{
    uint64_t cap;
    if (!kvs_mul_ok(n + 1, 3, &cap) || cap > UINT32_MAX) return KVS_ERR_LIMIT;
    char *buf = malloc(cap);
    if (!buf) return KVS_ERR_NOMEM;
    size_t k = 0;
    if (prefix) { memcpy(buf, "\xE2\x96\x81", 3); k = 3; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(buf + k, "\xE2\x96\x81", 3); k += 3; }
        else buf[k++] = (char)s[i];
    }
    if (!scratch_reserve(w, k)) { free(buf); return KVS_ERR_NOMEM; }
    int32_t ns = 0;
    for (size_t p = 0; p < k;) {
        uint32_t cp;
        int len = utf8_next((const uint8_t *)buf, p, k, &cp);
        w->start[ns] = (uint32_t)p;
        w->len[ns] = (uint32_t)len;
        w->prev[ns] = ns - 1;
        w->next[ns] = p + (size_t)len < k ? ns + 1 : -1;
        ns++;
        p += (size_t)len;
    }
    for (int32_t i = 0; i + 1 < ns; i++) spm_try_pair(t, w, buf, i, i + 1);
    while (w->n_heap > 0) {
        struct bigram g = heap_pop(w);
        if (w->len[g.left] == 0 || w->len[g.right] == 0 || w->next[g.left] != g.right ||
            w->len[g.left] + w->len[g.right] != (uint32_t)g.a)
            continue;
        w->len[g.left] += w->len[g.right];
        w->len[g.right] = 0;
        int32_t nx = w->next[g.right];
        w->next[g.left] = nx;
        if (nx >= 0) w->prev[nx] = g.left;
        spm_try_pair(t, w, buf, w->prev[g.left], g.left);
        spm_try_pair(t, w, buf, g.left, nx);
    }
    int rc = KVS_OK;
    for (int32_t i = ns > 0 ? 0 : -1; i >= 0; i = w->next[i]) {
        int32_t id = tok_find(t, buf + w->start[i], w->len[i]);
        if (id >= 0) { out_push(o, id); continue; }
        for (uint32_t j = 0; j < w->len[i]; j++) { /* byte fallback */
            id = t->byte_id[(uint8_t)buf[w->start[i] + j]];
            if (id < 0) id = t->unk;
            if (id < 0) { rc = KVS_ERR_FORMAT; break; }
            out_push(o, id);
        }
        if (rc != KVS_OK) break;
    }
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- encode / decode */

/* Longest special token starting at S[p..e), or -1. */
static int32_t special_at(const struct kvs_tokenizer *t, const uint8_t *s, size_t p, size_t e,
                          bool parse_special, uint32_t *len)
{
    if (!(t->special_first[s[p] >> 3] & (1u << (s[p] & 7)))) return -1;
    for (int32_t i = 0; i < t->n_special; i++) {
        int32_t id = t->special[i];
        if (!parse_special && t->type[id] != TT_USER) continue;
        const char *txt = tok_text(t, id, len);
        if (*len <= e - p && memcmp(txt, s + p, *len) == 0) return id;
    }
    return -1;
}

/* Text is cut at special tokens first (leftmost, then longest): control tokens only with
 * PARSE_SPECIAL, user-defined tokens (type 4) always, as llama.cpp and HF tokenizers do for added
 * tokens. Each stretch between them is encoded on its own; SPM puts its space prefix at the start
 * of the text and after every special token (so decode removes it there), and reads a literal
 * U+2581 in the input as a space, as SentencePiece does. */
int64_t kvs_tokenizer_encode(const struct kvs_tokenizer *t, const char *text, size_t len,
                             bool parse_special, int32_t *ids, int64_t cap)
{
    if (!t || (!text && len > 0) || cap < 0 || (cap > 0 && !ids)) return KVS_ERR_ARG;
    const uint8_t *s = (const uint8_t *)text;
    struct out o = {ids, cap, 0};
    struct scratch w = {0};
    int rc = KVS_OK;
    size_t frag = 0, p = 0;
    bool prev_special = true; /* SPM: a space prefix starts the text and follows specials */
    while (rc == KVS_OK && p <= len) {
        uint32_t slen = 0;
        int32_t sid = p < len && t->n_special > 0 ? special_at(t, s, p, len, parse_special, &slen) : -1;
        if (sid < 0 && p < len) { p++; continue; }
        if (frag < p) {
            if (t->kind == KVS_TOK_BPE) rc = bpe_text(t, &w, s + frag, p - frag, &o);
            else rc = spm_text(t, &w, s + frag, p - frag, t->add_space_prefix && prev_special, &o);
            prev_special = false;
        }
        if (sid < 0) break; /* end of text */
        out_push(&o, sid);
        prev_special = true;
        p += slen;
        frag = p;
    }
    scratch_free(&w);
    return rc == KVS_OK ? o.n : rc;
}

int kvs_tokenizer_piece(const struct kvs_tokenizer *t, int32_t id, char *buf, int cap)
{
    if (!t || id < 0 || id >= t->n_vocab) return KVS_ERR_ARG;
    uint32_t n = t->piece_off[id + 1] - t->piece_off[id];
    if (buf && cap > 0) memcpy(buf, t->piece + t->piece_off[id], KVS_MIN(n, (uint32_t)cap));
    return (int)n;
}

int64_t kvs_tokenizer_decode(const struct kvs_tokenizer *t, const int32_t *ids, int64_t n, char *buf, int64_t cap)
{
    if (!t || n < 0 || (n > 0 && !ids) || cap < 0 || (cap > 0 && !buf)) return KVS_ERR_ARG;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) return KVS_ERR_ARG;
        const char *pc = t->piece + t->piece_off[ids[i]];
        uint32_t len = t->piece_off[ids[i] + 1] - t->piece_off[ids[i]];
        /* SPM: undo the space prefix that encoding puts at the start and after special tokens */
        bool fresh = i == 0 || t->type[ids[i - 1]] == TT_CONTROL || t->type[ids[i - 1]] == TT_USER;
        if (fresh && t->kind == KVS_TOK_SPM && t->add_space_prefix && len > 0 && pc[0] == ' ' &&
            t->type[ids[i]] == TT_NORMAL) {
            pc++;
            len--;
        }
        if (k < cap - 1) memcpy(buf + k, pc, (size_t)KVS_MIN((int64_t)len, cap - 1 - k));
        k += len;
    }
    if (cap > 0) buf[KVS_MIN(k, cap - 1)] = '\0';
    return k;
}

/* ---------------------------------------------------------------- accessors */

int32_t kvs_tokenizer_n_vocab(const struct kvs_tokenizer *t) { return t->n_vocab; }
enum kvs_tok_kind kvs_tokenizer_kind(const struct kvs_tokenizer *t) { return t->kind; }
int32_t kvs_tokenizer_bos(const struct kvs_tokenizer *t) { return t->bos; }
int32_t kvs_tokenizer_eos(const struct kvs_tokenizer *t) { return t->eos; }
bool kvs_tokenizer_add_bos(const struct kvs_tokenizer *t) { return t->add_bos && t->bos >= 0; }
enum kvs_chat_kind kvs_tokenizer_chat_kind(const struct kvs_tokenizer *t) { return t->chat; }

bool kvs_tokenizer_is_eog(const struct kvs_tokenizer *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++) {
        if (t->eog[i] == id) return true;
    }
    return false;
}

/* ---------------------------------------------------------------- chat templates */

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = KVS_MAX(b->n + n + 1, 2 * b->cap + 64);
        char *q = realloc(b->p, c);
        if (!q) { b->oom = true; return; }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(struct sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static bool is_space_ascii(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* Jinja's trim: S without leading and trailing whitespace. */
static void sb_trimmed(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space_ascii(s[n - 1])) n--;
    while (n > 0 && is_space_ascii(*s)) { s++; n--; }
    sb_add(b, s, n);
}

static void sb_rtrimmed(struct sbuf *b, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && is_space_ascii(s[n - 1])) n--;
    sb_add(b, s, n);
}

static void sb_token(struct sbuf *b, const struct kvs_tokenizer *t, int32_t id)
{
    if (id < 0) return;
    uint32_t len;
    const char *s = tok_text(t, id, &len);
    sb_add(b, s, len);
}

/* A template's leading bos_token is left out when the tokenizer adds BOS itself (callers prepend
 * it when kvs_tokenizer_add_bos is true, as llama.cpp does), so the prompt's ids carry exactly one
 * BOS either way. */
char *kvs_tokenizer_chat_format(const struct kvs_tokenizer *t, const char *system, const char *user)
{
    if (!t || !user || t->chat == KVS_CHAT_NONE) return NULL;
    struct sbuf b = {0};
    sb_add(&b, "", 0);
    switch (t->chat) {
    case KVS_CHAT_CHATML:
        if (system || t->chat_default_system) {
            sb_str(&b, "<|im_start|>system\n");
            sb_str(&b, system ? system : t->chat_default_system);
            sb_str(&b, "<|im_end|>\n");
        }
        sb_str(&b, "<|im_start|>user\n");
        sb_str(&b, user);
        sb_str(&b, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case KVS_CHAT_LLAMA3:
        if (t->chat_bos && !t->add_bos) sb_token(&b, t, t->bos);
        if (system) {
            sb_str(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
            sb_trimmed(&b, system);
            sb_str(&b, "<|eot_id|>");
        }
        sb_str(&b, "<|start_header_id|>user<|end_header_id|>\n\n");
        sb_trimmed(&b, user);
        sb_str(&b, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case KVS_CHAT_LLAMA2:
        if (t->chat_bos && !t->add_bos) sb_token(&b, t, t->bos);
        sb_str(&b, "[INST] ");
        if (system && t->chat_llama2_sys) {
            /* Llama 2: <<SYS>> block inside the first user turn, the whole content stripped */
            sb_str(&b, "<<SYS>>\n");
            sb_str(&b, system);
            sb_str(&b, "\n<</SYS>>\n\n");
            sb_rtrimmed(&b, user);
        } else if (system) {
            /* Mistral: the system message heads the user turn */
            sb_str(&b, system);
            sb_str(&b, "\n\n");
            sb_str(&b, user);
        } else if (t->chat_llama2_sys) {
            sb_trimmed(&b, user);
        } else {
            sb_str(&b, user);
        }
        sb_str(&b, " [/INST]");
        break;
    case KVS_CHAT_NONE:
        break;
    }
    if (b.oom) { free(b.p); return NULL; }
    return b.p;
}

/* Finds a literal default system prompt in a ChatML template: the text of a quoted
 * '<|im_start|>system\n...<|im_end|>' with no expression inside. Returns a malloc'd copy or NULL. */
static char *chatml_default_system(const char *tpl, size_t n)
{
    static const char open[] = "<|im_start|>system";
    static const char close[] = "<|im_end|>";
    for (const char *p = tpl; (p = memmem(p, n - (size_t)(p - tpl), open, sizeof(open) - 1)); p++) {
        const char *q = p + sizeof(open) - 1, *end = tpl + n;
        if (q < end && *q == '\n') q++;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n') q += 2;
        else continue;
        const char *c = memmem(q, (size_t)(end - q), close, sizeof(close) - 1);
        if (!c || c == q) continue;
        struct sbuf b = {0};
        bool literal = true;
        for (const char *r = q; r < c && literal; r++) {
            if (*r == '\\' && r + 1 < c) {
                r++;
                char e = *r == 'n' ? '\n' : *r == 't' ? '\t' : *r;
                sb_add(&b, &e, 1);
            } else if (*r == '\'' || *r == '"' || *r == '{' || *r == '}' || *r == '+') {
                literal = false;
            } else {
                sb_add(&b, r, 1);
            }
        }
        if (literal && !b.oom && b.p) return b.p;
        free(b.p);
    }
    return NULL;
}

/* ---------------------------------------------------------------- construction */

static bool arr_int(const struct kvs_gguf_kv *kv, uint64_t i, int64_t *v)
{
    const uint8_t *d = kv->v.arr.data;
    switch (kv->v.arr.type) {
    case KVS_GGUF_INT8: *v = (int8_t)d[i]; return true;
    case KVS_GGUF_UINT8: *v = d[i]; return true;
    case KVS_GGUF_INT16: { int16_t x; memcpy(&x, d + 2 * i, 2); *v = x; return true; }
    case KVS_GGUF_UINT16: { uint16_t x; memcpy(&x, d + 2 * i, 2); *v = x; return true; }
    case KVS_GGUF_INT32: { int32_t x; memcpy(&x, d + 4 * i, 4); *v = x; return true; }
    case KVS_GGUF_UINT32: { uint32_t x; memcpy(&x, d + 4 * i, 4); *v = x; return true; }
    default: return false;
    }
}

/* Reads an optional token id key: absent -> -1; present but out of range -> error. */
static bool read_id(const struct kvs_gguf *g, const char *key, int32_t n_vocab, int32_t *out,
                    char *err, size_t errlen)
{
    *out = -1;
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, key);
    if (!kv) return true;
    uint32_t v;
    if (!kvs_gguf_get_u32(g, key, &v)) {
        if (kv->type == KVS_GGUF_INT32 && kv->v.i == -1) return true; /* "none" */
        kvs_seterr(err, errlen, "%s: %s is not a token id", g->path, key);
        return false;
    }
    if (v >= (uint32_t)n_vocab) {
        kvs_seterr(err, errlen, "%s: %s = %u is outside the vocabulary (%d tokens)", g->path, key, v, n_vocab);
        return false;
    }
    *out = (int32_t)v;
    return true;
}

static void add_eog(struct kvs_tokenizer *t, int32_t id)
{
    if (id < 0 || kvs_tokenizer_is_eog(t, id) || t->n_eog >= MAX_EOG) return;
    t->eog[t->n_eog++] = id;
}

static int cmp_special(const void *a, const void *b, void *ctx)
{
    const struct kvs_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->text_off[x + 1] - t->text_off[x], ly = t->text_off[y + 1] - t->text_off[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of an SPM byte token "<0xXX>", or -1. */
static int parse_byte_token(const char *s, uint32_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Fills the decoded piece of every token. */
static bool build_pieces(struct kvs_tokenizer *t)
{
    uint64_t total = t->text_off[t->n_vocab];
    t->piece = malloc(total + 1);
    t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof(uint32_t));
    if (!t->piece || !t->piece_off) return false;
    int16_t cp_byte[324]; /* GPT-2 alphabet code point -> byte */
    memset(cp_byte, 0xff, sizeof(cp_byte));
    for (int b = 0; b < 256; b++) cp_byte[byte_to_cp((uint8_t)b)] = (int16_t)b;
    uint32_t k = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece_off[id] = k;
        uint32_t len;
        const char *s = tok_text(t, id, &len);
        uint8_t ty = t->type[id];
        if (ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN || ty == TT_UNUSED) {
            memcpy(t->piece + k, s, len);
            k += len;
        } else if (t->kind == KVS_TOK_SPM) {
            int v = ty == TT_BYTE ? parse_byte_token(s, len) : -1;
            if (v >= 0) {
                t->piece[k++] = (char)v;
                continue;
            }
            for (uint32_t i = 0; i < len;) {
                if (len - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                    t->piece[k++] = ' ';
                    i += 3;
                } else {
                    t->piece[k++] = s[i++];
                }
            }
        } else {
            for (uint32_t i = 0; i < len;) {
                uint32_t cp;
                int n = utf8_next((const uint8_t *)s, i, len, &cp);
                if (cp < 324 && cp_byte[cp] >= 0) t->piece[k++] = (char)cp_byte[cp];
                else { memcpy(t->piece + k, s + i, (size_t)n); k += (uint32_t)n; }
                i += (uint32_t)n;
            }
        }
    }
    t->piece_off[t->n_vocab] = k;
    return true;
}

static bool build_hash(struct kvs_tokenizer *t)
{
    uint64_t cap = 1;
    while (cap < 2 * (uint64_t)t->n_vocab) cap <<= 1;
    t->tok_hash = malloc(cap * sizeof(int32_t));
    if (!t->tok_hash) return false;
    memset(t->tok_hash, 0xff, cap * sizeof(int32_t));
    t->tok_mask = cap - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        uint32_t len;
        const char *s = tok_text(t, id, &len);
        if (len == 0) continue;
        uint64_t i = hash_bytes(s, len) & t->tok_mask;
        bool dup = false;
        for (; t->tok_hash[i] >= 0; i = (i + 1) & t->tok_mask) {
            uint32_t l2;
            const char *s2 = tok_text(t, t->tok_hash[i], &l2);
            if (l2 == len && memcmp(s, s2, len) == 0) { dup = true; break; } /* first id wins */
        }
        if (!dup) t->tok_hash[i] = id;
    }
    return true;
}

static bool build_merges(struct kvs_tokenizer *t, const struct kvs_gguf *g, char *err, size_t errlen)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, "tokenizer.ggml.merges");
    if (!kv || kv->type != KVS_GGUF_ARRAY || kv->v.arr.type != KVS_GGUF_STRING) {
        kvs_seterr(err, errlen, "%s: tokenizer.ggml.merges is %s", g->path, kv ? "not a string array" : "missing");
        return false;
    }
    uint64_t n = kv->v.arr.n;
    if (n >= INT32_MAX / 2) {
        kvs_seterr(err, errlen, "%s: tokenizer.ggml.merges has too many entries (%llu)", g->path,
                   (unsigned long long)n);
        return false;
    }
    uint64_t cap = 1;
    while (cap < 2 * n + 2) cap <<= 1;
    t->merges = malloc(cap * sizeof(struct merge_slot));
    if (!t->merges) { kvs_seterr(err, errlen, "out of memory"); return false; }
    for (uint64_t i = 0; i < cap; i++) t->merges[i].key = UINT64_MAX;
    t->merge_mask = cap - 1;
    char *joined = NULL;
    size_t joined_cap = 0;
    bool ok = true;
    for (uint64_t r = 0; r < n && ok; r++) {
        const struct kvs_gguf_str *m = &kv->v.arr.strs[r];
        const char *sp = m->len > 1 ? memchr(m->ptr + 1, ' ', m->len - 1) : NULL;
        if (!sp) {
            kvs_seterr(err, errlen, "%s: merge %llu has no space separating two tokens", g->path,
                       (unsigned long long)r);
            ok = false;
            break;
        }
        size_t la = (size_t)(sp - m->ptr), lb = m->len - la - 1;
        int32_t a = tok_find(t, m->ptr, la), b = tok_find(t, sp + 1, lb);
        if (la + lb > joined_cap) {
            joined_cap = 2 * (la + lb);
            char *q = realloc(joined, joined_cap);
            if (!q) { kvs_seterr(err, errlen, "out of memory"); ok = false; break; }
            joined = q;
        }
        memcpy(joined, m->ptr, la);
        memcpy(joined + la, sp + 1, lb);
        int32_t c = tok_find(t, joined, la + lb);
        if (a < 0 || b < 0 || c < 0) {
            kvs_seterr(err, errlen, "%s: merge %llu '%.*s' names a token that is not in the vocabulary",
                       g->path, (unsigned long long)r, (int)KVS_MIN(m->len, 64), m->ptr);
            ok = false;
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint64_t i = hash_u64(key) & t->merge_mask;
        while (t->merges[i].key != UINT64_MAX && t->merges[i].key != key) i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == UINT64_MAX) { /* the first (lowest-rank) duplicate wins */
            t->merges[i].key = key;
            t->merges[i].rank = (int32_t)r;
            t->merges[i].id = c;
        }
    }
    free(joined);
    return ok;
}

static bool pre_from_name(const char *name, enum pre_kind *pre)
{
    static const struct { const char *name; enum pre_kind pre; } map[] = {
        {"", PRE_GPT2}, {"default", PRE_GPT2}, {"gpt2", PRE_GPT2}, {"gpt-2", PRE_GPT2},
        {"phi-2", PRE_GPT2}, {"olmo", PRE_GPT2}, {"mpt", PRE_GPT2}, {"jais", PRE_GPT2},
        {"smollm", PRE_SMOLLM}, {"starcoder", PRE_SMOLLM}, {"refact", PRE_SMOLLM},
        {"command-r", PRE_SMOLLM}, {"codeshell", PRE_SMOLLM}, {"exaone", PRE_SMOLLM},
        {"llama3", PRE_LLAMA3}, {"llama-v3", PRE_LLAMA3}, {"llama-bpe", PRE_LLAMA3},
        {"falcon3", PRE_LLAMA3}, {"dbrx", PRE_LLAMA3}, {"smaug-bpe", PRE_LLAMA3},
        {"qwen2", PRE_QWEN2}, {"stablelm2", PRE_QWEN2}, {"deepseek-r1-qwen", PRE_QWEN2},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(map); i++) {
        if (strcmp(name, map[i].name) == 0) { *pre = map[i].pre; return true; }
    }
    return false;
}

static bool build_template(struct kvs_tokenizer *t, const struct kvs_gguf *g)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, "tokenizer.chat_template");
    if (!kv || kv->type != KVS_GGUF_STRING || kv->v.str.len == 0) return true;
    const char *s = kv->v.str.ptr;
    size_t n = kv->v.str.len;
    if (memmem(s, n, "<|im_start|>", 12)) {
        t->chat = KVS_CHAT_CHATML;
        t->chat_default_system = chatml_default_system(s, n);
    } else if (memmem(s, n, "<|start_header_id|>", 19)) {
        t->chat = KVS_CHAT_LLAMA3;
    } else if (memmem(s, n, "[INST]", 6)) {
        t->chat = KVS_CHAT_LLAMA2;
        t->chat_llama2_sys = memmem(s, n, "<<SYS>>", 7) != NULL;
    }
    t->chat_bos = memmem(s, n, "bos_token", 9) != NULL;
    return true;
}

struct kvs_tokenizer *kvs_tokenizer_new(const struct kvs_gguf *g, char *err, size_t errlen)
{
    kvs_seterr(err, errlen, "ok");
    if (!g) { kvs_seterr(err, errlen, "no GGUF"); return NULL; }
    struct kvs_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) { kvs_seterr(err, errlen, "out of memory"); return NULL; }
    char model[64] = "", pre[64] = "";
    if (!kvs_gguf_get_str(g, "tokenizer.ggml.model", model, sizeof(model))) {
        kvs_seterr(err, errlen, "%s: tokenizer.ggml.model is missing", g->path);
        goto fail;
    }
    if (strcmp(model, "gpt2") == 0) t->kind = KVS_TOK_BPE;
    else if (strcmp(model, "llama") == 0) t->kind = KVS_TOK_SPM;
    else {
        kvs_seterr(err, errlen, "%s: tokenizer model '%s' is not supported (gpt2, llama)", g->path, model);
        goto fail;
    }
    if (t->kind == KVS_TOK_BPE) {
        const struct kvs_gguf_kv *pk = kvs_gguf_find(g, "tokenizer.ggml.pre");
        if (pk && !kvs_gguf_get_str(g, "tokenizer.ggml.pre", pre, sizeof(pre))) {
            kvs_seterr(err, errlen, "%s: tokenizer.ggml.pre is not a string", g->path);
            goto fail;
        }
        if (!pre_from_name(pre, &t->pre)) {
            kvs_seterr(err, errlen, "%s: pre-tokenizer '%s' is not supported", g->path, pre);
            goto fail;
        }
        t->ignore_merges = t->pre == PRE_LLAMA3;
    }

    const struct kvs_gguf_kv *tk = kvs_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tk || tk->type != KVS_GGUF_ARRAY || tk->v.arr.type != KVS_GGUF_STRING) {
        kvs_seterr(err, errlen, "%s: tokenizer.ggml.tokens is %s", g->path, tk ? "not a string array" : "missing");
        goto fail;
    }
    if (tk->v.arr.n == 0 || tk->v.arr.n > MAX_VOCAB) {
        kvs_seterr(err, errlen, "%s: tokenizer.ggml.tokens has %llu entries (1..%d supported)", g->path,
                   (unsigned long long)tk->v.arr.n, MAX_VOCAB);
        goto fail;
    }
    t->n_vocab = (int32_t)tk->v.arr.n;
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!kvs_add_ok(total, tk->v.arr.strs[i].len, &total) || total >= UINT32_MAX / 2) {
            kvs_seterr(err, errlen, "%s: token texts are too large", g->path);
            goto fail;
        }
    }
    t->text = malloc(total + 1);
    t->text_off = malloc(((size_t)t->n_vocab + 1) * sizeof(uint32_t));
    t->type = malloc((size_t)t->n_vocab);
    if (!t->text || !t->text_off || !t->type) { kvs_seterr(err, errlen, "out of memory"); goto fail; }
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        t->text_off[i] = off;
        memcpy(t->text + off, tk->v.arr.strs[i].ptr, tk->v.arr.strs[i].len);
        off += (uint32_t)tk->v.arr.strs[i].len;
    }
    t->text_off[t->n_vocab] = off;
    t->text[off] = '\0';

    const struct kvs_gguf_kv *ty = kvs_gguf_find(g, "tokenizer.ggml.token_type");
    memset(t->type, TT_NORMAL, (size_t)t->n_vocab);
    if (ty) {
        int64_t v;
        if (ty->type != KVS_GGUF_ARRAY || ty->v.arr.n != (uint64_t)t->n_vocab || !arr_int(ty, 0, &v)) {
            kvs_seterr(err, errlen, "%s: tokenizer.ggml.token_type is not an integer array of %d entries",
                       g->path, t->n_vocab);
            goto fail;
        }
        for (int32_t i = 0; i < t->n_vocab; i++) {
            arr_int(ty, (uint64_t)i, &v);
            t->type[i] = v >= TT_NORMAL && v <= TT_BYTE ? (uint8_t)v : TT_NORMAL;
        }
    }
    if (t->kind == KVS_TOK_SPM) {
        t->score = calloc((size_t)t->n_vocab, sizeof(float));
        if (!t->score) { kvs_seterr(err, errlen, "out of memory"); goto fail; }
        const struct kvs_gguf_kv *sc = kvs_gguf_find(g, "tokenizer.ggml.scores");
        if (sc) {
            if (sc->type != KVS_GGUF_ARRAY || sc->v.arr.type != KVS_GGUF_FLOAT32 ||
                sc->v.arr.n != (uint64_t)t->n_vocab) {
                kvs_seterr(err, errlen, "%s: tokenizer.ggml.scores is not a float32 array of %d entries",
                           g->path, t->n_vocab);
                goto fail;
            }
            memcpy(t->score, sc->v.arr.data, (size_t)t->n_vocab * sizeof(float));
        }
    }
    if (!build_hash(t) || !build_pieces(t)) { kvs_seterr(err, errlen, "out of memory"); goto fail; }
    if (t->kind == KVS_TOK_BPE && !build_merges(t, g, err, errlen)) goto fail;

    for (int b = 0; b < 256; b++) {
        char buf[8];
        int n;
        if (t->kind == KVS_TOK_BPE) n = utf8_put(byte_to_cp((uint8_t)b), buf);
        else n = snprintf(buf, sizeof(buf), "<0x%02X>", b);
        t->byte_id[b] = tok_find(t, buf, (size_t)n);
    }

    int32_t eot, eom;
    if (!read_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err, errlen) ||
        !read_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err, errlen) ||
        !read_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err, errlen) ||
        !read_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &eot, err, errlen) ||
        !read_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eom, err, errlen))
        goto fail;
    if (t->unk < 0 && t->kind == KVS_TOK_SPM) t->unk = tok_find(t, "<unk>", 5);
    add_eog(t, t->eos);
    add_eog(t, eot);
    add_eog(t, eom);
    static const char *const eog_names[] = {"<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>",
                                            "<|end_of_text|>", "<end_of_turn>"};
    for (size_t i = 0; i < KVS_ARRAY_LEN(eog_names); i++) add_eog(t, tok_find(t, eog_names[i], strlen(eog_names[i])));

    bool flag;
    t->add_bos = kvs_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &flag) ? flag : t->kind == KVS_TOK_SPM;
    t->add_space_prefix = kvs_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &flag) ? flag
                                                                                          : t->kind == KVS_TOK_SPM;

    for (int32_t i = 0; i < t->n_vocab; i++) {
        if ((t->type[i] == TT_CONTROL || t->type[i] == TT_USER) && t->text_off[i + 1] > t->text_off[i])
            t->n_special++;
    }
    t->special = malloc(((size_t)t->n_special + 1) * sizeof(int32_t));
    if (!t->special) { kvs_seterr(err, errlen, "out of memory"); goto fail; }
    t->n_special = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if ((t->type[i] == TT_CONTROL || t->type[i] == TT_USER) && t->text_off[i + 1] > t->text_off[i]) {
            t->special[t->n_special++] = i;
            uint8_t c = (uint8_t)t->text[t->text_off[i]];
            t->special_first[c >> 3] |= (uint8_t)(1u << (c & 7));
        }
    }
    qsort_r(t->special, (size_t)t->n_special, sizeof(int32_t), cmp_special, t);

    build_template(t, g);
    return t;
fail:
    kvs_tokenizer_delete(t);
    return NULL;
}

void kvs_tokenizer_delete(struct kvs_tokenizer *t)
{
    if (!t) return;
    free(t->text);
    free(t->text_off);
    free(t->type);
    free(t->score);
    free(t->piece);
    free(t->piece_off);
    free(t->tok_hash);
    free(t->merges);
    free(t->special);
    free(t->chat_default_system);
    free(t);
}
