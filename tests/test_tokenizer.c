/* Tests of engine/model/tokenizer.c: byte-level BPE and SPM on crafted and tiny GGUF vocabularies,
 * pre-tokenizer families, special tokens, chat formats, hostile metadata, exact round trips,
 * and the real SmolLM2 vocabulary against golden ids made by HuggingFace tokenizers.
 *   test_tokenizer                          unit tests ("N passed, N failed" last)
 *   test_tokenizer MODEL TEXTFILE [--special]  prints the ids of TEXTFILE, one per line
 *   test_tokenizer --chat MODEL USER [SYSTEM]  prints the chat prompt for one user turn
 *   test_tokenizer --tiny-spm OUT.gguf          writes the tiny SentencePiece-style model */
#include "harness.h"
#include "tinymodel.h"
#include "tokenizer.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define SMOLLM2 "models/SmolLM2-135M-Instruct.Q4_1.gguf"
#define GOLDEN "tests/golden/tokenizer_smollm2.txt"

/* ---------------------------------------------------------------- helpers */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *q = realloc(buf, 2 * cap + 1);
            if (!q) { free(buf); buf = NULL; break; }
            buf = q;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    *len = n;
    return buf;
}

/* A GGUF in memory with its tokenizer; free with loaded_free. */
struct loaded {
    uint8_t *mem;
    struct kvs_gguf g;
    struct kvs_tokenizer *t;
    char err[640];
};

static void loaded_free(struct loaded *l)
{
    kvs_tokenizer_delete(l->t);
    kvs_gguf_close(&l->g);
    free(l->mem);
    memset(l, 0, sizeof(*l));
}

/* Opens MEM (taking ownership) and builds its tokenizer; l->t is NULL and l->err says why on
 * failure. Returns false when the GGUF itself did not open. */
static bool load_mem(struct loaded *l, uint8_t *mem, size_t len)
{
    memset(l, 0, sizeof(*l));
    l->mem = mem;
    if (kvs_gguf_open_mem(&l->g, mem, len, "crafted.gguf") != KVS_OK) {
        snprintf(l->err, sizeof(l->err), "gguf: %s", l->g.err);
        return false;
    }
    l->t = kvs_tokenizer_new(&l->g, l->err, sizeof(l->err));
    return true;
}

static bool load_tiny(struct loaded *l, int tok, const char *pre)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.tokenizer = tok;
    o.tok_pre = pre;
    uint8_t *mem;
    size_t len;
    if (kvs_tiny_build(&o, &mem, &len) != 0) {
        fprintf(stderr, "tinymodel: %s\n", kvs_tiny_error());
        memset(l, 0, sizeof(*l));
        return false;
    }
    return load_mem(l, mem, len) && l->t;
}

/* Encodes TEXT into a malloc'd array; *N gets the count (negative on error). */
static int32_t *encode(const struct kvs_tokenizer *t, const char *text, size_t len, bool special, int64_t *n)
{
    int64_t need = kvs_tokenizer_encode(t, text, len, special, NULL, 0);
    *n = need;
    if (need < 0) return NULL;
    int32_t *ids = malloc(((size_t)need + 1) * sizeof(int32_t));
    if (!ids) return NULL;
    int64_t got = kvs_tokenizer_encode(t, text, len, special, ids, need);
    if (got != need) *n = -1000;
    return ids;
}

/* Encodes, decodes and concatenates pieces; true when both reproduce TEXT exactly. */
static bool round_trip(const struct kvs_tokenizer *t, const char *text, size_t len)
{
    int64_t n;
    int32_t *ids = encode(t, text, len, false, &n);
    if (!ids || n < 0) { free(ids); return false; }
    char *dec = malloc(len + 1), *cat = calloc(1, len + 64);
    bool ok = dec && cat;
    int64_t dl = ok ? kvs_tokenizer_decode(t, ids, n, dec, (int64_t)len + 1) : -1;
    ok = ok && dl == (int64_t)len && memcmp(dec, text, len) == 0 && dec[len] == '\0';
    size_t k = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        char pc[256];
        int pl = kvs_tokenizer_piece(t, ids[i], pc, sizeof(pc));
        ok = pl >= 0 && pl <= (int)sizeof(pc) && k + (size_t)pl <= len + 1;
        if (ok) { memcpy(cat + k, pc, (size_t)pl); k += (size_t)pl; }
    }
    /* SPM pieces carry the inserted space prefix: skip it for the comparison */
    size_t skip = kvs_tokenizer_kind(t) == KVS_TOK_SPM && k == len + 1 && cat[0] == ' ' ? 1 : 0;
    ok = ok && k - skip == len && memcmp(cat + skip, text, len) == 0;
    free(ids);
    free(dec);
    free(cat);
    return ok;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Random text of about N bytes: valid UTF-8 drawn from the classes the pre-tokenizers care
 * about (letters, digits, spaces, newlines, punctuation, apostrophes, CJK, emoji, accents).
 * NO_MARKER leaves out U+2581, which SentencePiece reads as its space marker. */
static size_t random_utf8(char *buf, size_t n, bool no_marker)
{
    static const uint32_t pool[] = {' ', ' ', ' ', '\n', '\t', '\r', '\'', '.', ',', '!', '-', '_', '(',
                                    '0', '7', 's', 't', 'e', 'l', 'A', 'Z', 0xE9, 0xDF, 0x2581, 0xA0,
                                    0x3000, 0x4E2D, 0x6587, 0x1F600, 0x1F44D, 0x0663, 0x00B2, 0x2028,
                                    0x10FFFF, 0xFFFD, 0x85, 0x7F, 0x00};
    size_t k = 0;
    while (k + 4 <= n) {
        uint32_t cp = (rnd() % 4 == 0) ? 0x20 + rnd() % 0x2FFF : pool[rnd() % KVS_ARRAY_LEN(pool)];
        if ((cp >= 0xD800 && cp <= 0xDFFF) || (no_marker && cp == 0x2581)) cp = 'x';
        k += put_utf8(cp, buf + k);
    }
    return k;
}

/* ---------------------------------------------------------------- crafted BPE vocabulary */

/* Specials, then the 256 byte-alphabet tokens, then one token per merge (the pair joined). */
struct crafted {
    const char *model;    /* "gpt2" (default) */
    const char *pre;      /* tokenizer.ggml.pre, NULL: omitted */
    const char *const *merges;
    int n_merges;
    const char *tmpl;     /* chat template or NULL */
    bool no_tokens, tokens_wrong_type, bad_types_len, no_merges;
    const char *bad_merge; /* appended to the merges */
    uint32_t bos;          /* default 1 */
    int add_bos;           /* 0: no add_bos_token key; 1: true; 2: false */
};

static const char *const crafted_specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>", "<|im"};
static const int32_t crafted_special_types[] = {3, 3, 3, 4, 3};

static char crafted_tok[600][32];
static int crafted_n;

static int crafted_id(const char *s)
{
    for (int i = 0; i < crafted_n; i++) {
        if (strcmp(crafted_tok[i], s) == 0) return i;
    }
    return -1;
}

/* GPT-2 byte alphabet text of byte B. */
static void byte_char(int b, char *out)
{
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    uint32_t cp = (uint32_t)b;
    if (!printable) {
        cp = 256;
        for (int i = 0; i < b; i++) {
            if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || i >= 0xAE)) cp++;
        }
    }
    out[put_utf8(cp, out)] = '\0';
}

/* The crafted GGUF's bytes (malloc'd, *LEN bytes), or NULL. */
static uint8_t *crafted_bytes(const struct crafted *c, size_t *len)
{
    crafted_n = 0;
    int32_t types[600];
    for (size_t i = 0; i < KVS_ARRAY_LEN(crafted_specials); i++) {
        snprintf(crafted_tok[crafted_n], 32, "%s", crafted_specials[i]);
        types[crafted_n++] = crafted_special_types[i];
    }
    for (int b = 0; b < 256; b++) {
        byte_char(b, crafted_tok[crafted_n]);
        types[crafted_n++] = 1;
    }
    for (int i = 0; i < c->n_merges; i++) {
        char joined[32];
        const char *sp = strchr(c->merges[i], ' ');
        snprintf(joined, sizeof(joined), "%.*s%s", (int)(sp - c->merges[i]), c->merges[i], sp + 1);
        if (crafted_id(joined) < 0) {
            snprintf(crafted_tok[crafted_n], 32, "%s", joined);
            types[crafted_n++] = 1;
        }
    }
    const char *toks[600], *merges[64];
    for (int i = 0; i < crafted_n; i++) toks[i] = crafted_tok[i];
    int nm = 0;
    for (int i = 0; i < c->n_merges; i++) merges[nm++] = c->merges[i];
    if (c->bad_merge) merges[nm++] = c->bad_merge;

    struct kvs_gbuf kv = {0};
    uint64_t n_kv = 0;
    kvs_gbuf_kv_str(&kv, "general.architecture", "llama"), n_kv++;
    kvs_gbuf_kv_str(&kv, "tokenizer.ggml.model", c->model ? c->model : "gpt2"), n_kv++;
    if (c->pre) kvs_gbuf_kv_str(&kv, "tokenizer.ggml.pre", c->pre), n_kv++;
    if (c->tokens_wrong_type) kvs_gbuf_kv_i32s(&kv, "tokenizer.ggml.tokens", types, (uint64_t)crafted_n), n_kv++;
    else if (!c->no_tokens) kvs_gbuf_kv_strs(&kv, "tokenizer.ggml.tokens", toks, (uint64_t)crafted_n), n_kv++;
    kvs_gbuf_kv_i32s(&kv, "tokenizer.ggml.token_type", types, (uint64_t)crafted_n - (c->bad_types_len ? 1 : 0)), n_kv++;
    if (!c->no_merges) kvs_gbuf_kv_strs(&kv, "tokenizer.ggml.merges", merges, (uint64_t)nm), n_kv++;
    kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.bos_token_id", c->bos ? c->bos : 1), n_kv++;
    kvs_gbuf_kv_u32(&kv, "tokenizer.ggml.eos_token_id", 2), n_kv++;
    if (c->tmpl) kvs_gbuf_kv_str(&kv, "tokenizer.chat_template", c->tmpl), n_kv++;
    if (c->add_bos) kvs_gbuf_kv_bool(&kv, "tokenizer.ggml.add_bos_token", c->add_bos == 1), n_kv++;
    struct kvs_gbuf f = {0};
    kvs_gbuf_header(&f, 3, 0, n_kv);
    kvs_gbuf_bytes(&f, kv.p, kv.len);
    kvs_gbuf_pad(&f, 32);
    kvs_gbuf_free(&kv);
    if (f.oom) { kvs_gbuf_free(&f); return NULL; }
    *len = f.len;
    return f.p;
}

static bool build_crafted(const struct crafted *c, struct loaded *l)
{
    size_t len;
    uint8_t *mem = crafted_bytes(c, &len);
    if (!mem) { memset(l, 0, sizeof(*l)); return false; }
    return load_mem(l, mem, len);
}

/* Ids of TEXT as a comma-separated list of token texts: "he,llo,Ġ". */
static bool ids_are(const struct kvs_tokenizer *t, const char *text, bool special, const char *expect)
{
    int64_t n;
    int32_t *ids = encode(t, text, strlen(text), special, &n);
    char got[512] = "";
    size_t k = 0;
    for (int64_t i = 0; ids && i < n && k < sizeof(got) - 40; i++)
        k += (size_t)snprintf(got + k, sizeof(got) - k, "%s%s", i ? "," : "", ids[i] < crafted_n ? crafted_tok[ids[i]] : "?");
    bool ok = ids && strcmp(got, expect) == 0;
    if (!ok) fprintf(stderr, "  encode(\"%s\") = %s, expected %s\n", text, got, expect);
    free(ids);
    return ok;
}

static const char *const digit_merges[] = {"1 2", "12 3", "123 4", "' S", "Ġ Ġ", "h e", "he y", "Ġ hey",
                                           "' s", "x Ċ"};

/* ---------------------------------------------------------------- tests */

static void test_bpe_merges_and_pre(void)
{
    struct loaded l;
    struct crafted c = {.pre = "gpt2", .merges = digit_merges, .n_merges = KVS_ARRAY_LEN(digit_merges)};
    CHECKF(build_crafted(&c, &l) && l.t, "%s", l.err);
    if (!l.t) { loaded_free(&l); return; }
    CHECK(kvs_tokenizer_kind(l.t) == KVS_TOK_BPE);
    CHECK(kvs_tokenizer_n_vocab(l.t) == crafted_n);
    /* GPT-2: digit runs stay whole; "'S" is no contraction; "  hey": one space, then " hey" */
    CHECK(ids_are(l.t, "1234", false, "1234"));
    CHECK(ids_are(l.t, "'S", false, "',S"));
    CHECK(ids_are(l.t, "'s", false, "'s"));
    CHECK(ids_are(l.t, "  hey", false, "Ġ,Ġhey"));
    CHECK(ids_are(l.t, "hey   ", false, "hey,ĠĠ,Ġ"));
    CHECK(ids_are(l.t, "x\n", false, "x,Ċ"));
    loaded_free(&l);

    c.pre = "smollm"; /* every digit alone */
    CHECK(build_crafted(&c, &l) && l.t);
    if (l.t) CHECK(ids_are(l.t, "1234", false, "1,2,3,4"));
    if (l.t) CHECK(ids_are(l.t, "a1234b", false, "a,1,2,3,4,b"));
    loaded_free(&l);

    c.pre = "llama-bpe"; /* digits in threes, case-insensitive contractions, newline runs */
    CHECK(build_crafted(&c, &l) && l.t);
    if (l.t) {
        CHECK(ids_are(l.t, "1234", false, "123,4"));
        CHECK(ids_are(l.t, "'S", false, "'S"));
        CHECK(ids_are(l.t, "x\n", false, "x,Ċ"));
        CHECK(ids_are(l.t, "  hey", false, "Ġ,Ġhey"));
        CHECK(ids_are(l.t, "hey", false, "hey"));
    }
    loaded_free(&l);

    c.pre = "qwen2"; /* digits one by one */
    CHECK(build_crafted(&c, &l) && l.t);
    if (l.t) CHECK(ids_are(l.t, "1234", false, "1,2,3,4"));
    loaded_free(&l);

    c.pre = NULL; /* no pre key: GPT-2 */
    CHECK(build_crafted(&c, &l) && l.t);
    if (l.t) CHECK(ids_are(l.t, "1234", false, "1234"));
    loaded_free(&l);
}

static void test_special_tokens(void)
{
    struct loaded l;
    struct crafted c = {.pre = "smollm", .merges = digit_merges, .n_merges = KVS_ARRAY_LEN(digit_merges)};
    CHECK(build_crafted(&c, &l) && l.t);
    if (!l.t) { loaded_free(&l); return; }
    /* longest first: "<|im_start|>" beats its prefix "<|im" */
    CHECK(ids_are(l.t, "<|im_start|>hey<|im_end|>", true, "<|im_start|>,hey,<|im_end|>"));
    CHECK(ids_are(l.t, "<|im hey", true, "<|im,Ġhey"));
    /* off: control text is plain bytes; user-defined tokens still match as a whole */
    CHECK(ids_are(l.t, "<|im_end|>", false, "<,|,i,m,_,e,n,d,|,>"));
    CHECK(ids_are(l.t, "x<tool>", false, "x,<tool>"));
    CHECK(ids_are(l.t, "<|endoftext|><|endoftext|>", true, "<|endoftext|>,<|endoftext|>"));
    CHECK(ids_are(l.t, "<|im_end", true, "<|im,_,e,n,d"));
    char buf[64];
    int n = kvs_tokenizer_piece(l.t, crafted_id("<|im_end|>"), buf, sizeof(buf));
    CHECK(n == 10 && memcmp(buf, "<|im_end|>", 10) == 0);
    CHECK(kvs_tokenizer_piece(l.t, crafted_id("Ġhey"), buf, sizeof(buf)) == 4 && memcmp(buf, " hey", 4) == 0);
    CHECK(kvs_tokenizer_piece(l.t, crafted_id("Ċ"), buf, 0) == 1);
    CHECK(kvs_tokenizer_piece(l.t, -1, buf, sizeof(buf)) < 0);
    CHECK(kvs_tokenizer_piece(l.t, crafted_n, buf, sizeof(buf)) < 0);
    /* eog: eos (2) and <|endoftext|> by name; bos is not */
    CHECK(kvs_tokenizer_is_eog(l.t, 2));
    CHECK(kvs_tokenizer_is_eog(l.t, 0));
    CHECK(!kvs_tokenizer_is_eog(l.t, 1));
    CHECK(kvs_tokenizer_bos(l.t) == 1 && kvs_tokenizer_eos(l.t) == 2);
    CHECK(!kvs_tokenizer_add_bos(l.t));
    /* decode: truncation keeps the NUL and reports the full length */
    int32_t ids[3] = {crafted_id("hey"), crafted_id("Ġhey"), crafted_id("<|im_end|>")};
    char small[5];
    CHECK(kvs_tokenizer_decode(l.t, ids, 3, small, sizeof(small)) == 17 && strcmp(small, "hey ") == 0);
    CHECK(kvs_tokenizer_decode(l.t, ids, 3, NULL, 0) == 17);
    int32_t bad = 99999;
    CHECK(kvs_tokenizer_decode(l.t, &bad, 1, small, sizeof(small)) < 0);
    /* capacity: the count is returned even when ids do not fit */
    int32_t one[1];
    CHECK(kvs_tokenizer_encode(l.t, "hey hey", 7, false, one, 1) == 2 && one[0] == crafted_id("hey"));
    CHECK(kvs_tokenizer_encode(l.t, "", 0, false, one, 1) == 0);
    loaded_free(&l);
}

static void test_round_trip_bpe(void)
{
    static const char *const pres[] = {"smollm", "gpt2", "llama-bpe", "qwen2"};
    char *buf = malloc(4096);
    for (size_t p = 0; p < KVS_ARRAY_LEN(pres); p++) {
        struct loaded l;
        CHECKF(load_tiny(&l, KVS_TINY_TOK_BPE, pres[p]), "%s", l.err);
        if (!l.t) { loaded_free(&l); continue; }
        int bad = 0;
        for (int it = 0; it < 200; it++) {
            size_t n = random_utf8(buf, 8 + rnd() % 400, false);
            if (!round_trip(l.t, buf, n)) bad++;
        }
        for (int it = 0; it < 200; it++) { /* random bytes: invalid UTF-8 too */
            size_t n = 1 + rnd() % 300;
            for (size_t i = 0; i < n; i++) buf[i] = (char)rnd();
            if (!round_trip(l.t, buf, n)) bad++;
        }
        const char *corpus = kvs_tiny_corpus();
        if (!round_trip(l.t, corpus, strlen(corpus))) bad++;
        CHECKF(bad == 0, "pre %s: %d round trips differ", pres[p], bad);
        /* the learned merges do something: the corpus takes fewer ids than bytes */
        int64_t n;
        int32_t *ids = encode(l.t, corpus, strlen(corpus), false, &n);
        CHECKF(n > 0 && n < (int64_t)strlen(corpus) / 2, "%lld ids for %zu bytes", (long long)n, strlen(corpus));
        free(ids);
        loaded_free(&l);
    }
    free(buf);
}

static void test_spm(void)
{
    struct loaded l;
    CHECKF(load_tiny(&l, KVS_TINY_TOK_SPM, NULL), "%s", l.err);
    if (!l.t) { loaded_free(&l); return; }
    const struct kvs_tokenizer *t = l.t;
    CHECK(kvs_tokenizer_kind(t) == KVS_TOK_SPM);
    CHECK(kvs_tokenizer_add_bos(t));
    CHECK(kvs_tokenizer_bos(t) == 1);
    /* every id of a merged encoding is a vocabulary piece; "▁the" style pieces exist */
    const char *text = "The quick brown fox";
    int64_t n;
    int32_t *ids = encode(t, text, strlen(text), false, &n);
    CHECK(ids && n > 0 && n < (int64_t)strlen(text));
    char piece[64];
    int pl = ids ? kvs_tokenizer_piece(t, ids[0], piece, sizeof(piece)) : -1;
    CHECK(pl > 0 && piece[0] == ' '); /* the space prefix */
    char dec[64];
    CHECK(ids && kvs_tokenizer_decode(t, ids, n, dec, sizeof(dec)) == (int64_t)strlen(text) && strcmp(dec, text) == 0);
    free(ids);
    /* byte fallback: a character outside the vocabulary becomes its UTF-8 bytes */
    ids = encode(t, "\xE4\xB8\xAD", 3, false, &n);
    int byte_ids = 0;
    for (int64_t i = 0; ids && i < n; i++) {
        char p2[16];
        if (kvs_tokenizer_piece(t, ids[i], p2, sizeof(p2)) == 1 && (uint8_t)p2[0] >= 0x80) byte_ids++;
    }
    CHECK(byte_ids == 3);
    free(ids);
    /* specials: <s> as one id only with parse_special */
    ids = encode(t, "<s>hi", 5, true, &n);
    CHECK(ids && n >= 2 && ids[0] == 1);
    free(ids);
    ids = encode(t, "<s>hi", 5, false, &n);
    CHECK(ids && n >= 2 && ids[0] != 1);
    free(ids);
    char *buf = malloc(4096);
    int bad = 0;
    for (int it = 0; it < 200; it++) {
        size_t k = random_utf8(buf, 8 + rnd() % 400, true);
        if (!round_trip(t, buf, k)) bad++;
    }
    for (int it = 0; it < 100; it++) {
        size_t k = 1 + rnd() % 300;
        for (size_t i = 0; i < k; i++) buf[i] = (char)rnd();
        if (!round_trip(t, buf, k)) bad++;
    }
    CHECKF(bad == 0, "%d SPM round trips differ", bad);
    free(buf);
    char *chat = kvs_tokenizer_chat_format(t, NULL, "Hi");
    CHECK(kvs_tokenizer_chat_kind(t) == KVS_CHAT_LLAMA2);
    CHECK(chat && strcmp(chat, "[INST] Hi [/INST]") == 0); /* the caller adds BOS (add_bos) */
    free(chat);
    loaded_free(&l);
}

static void test_chat_formats(void)
{
    static const char smol[] =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
        "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    static const char qwen[] =
        "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a \\'helpful\\' assistant.<|im_end|>\\n' }}"
        "{%- endif %}...";
    static const char llama3[] =
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
        "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";
    static const char llama2[] = "{{ bos_token + '[INST] ' + '<<SYS>>\\n' + content.strip() + ' [/INST]' }}";
    /* ADD_BOS 1: the tokenizer adds BOS, so the template's bos_token is left out of the text */
    struct { const char *tmpl; int add_bos; enum kvs_chat_kind kind; const char *sys, *user, *expect; } cases[] = {
        {smol, 0, KVS_CHAT_CHATML, NULL, "Hi",
         "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
        {smol, 1, KVS_CHAT_CHATML, "Be brief.", "Hi",
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
        {qwen, 0, KVS_CHAT_CHATML, NULL, "Hi",
         "<|im_start|>system\nYou are Qwen, a 'helpful' assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
         "<|im_start|>assistant\n"},
        {"{{'<|im_start|>' + message['role']}}", 0, KVS_CHAT_CHATML, NULL, "Hi",
         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
        {llama3, 0, KVS_CHAT_LLAMA3, " S ", " Hi\n",
         "<|im_start|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {llama3, 1, KVS_CHAT_LLAMA3, NULL, "Hi",
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {llama2, 2, KVS_CHAT_LLAMA2, "Sys", "Hi ",
         "<|im_start|>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST]"},
        {llama2, 1, KVS_CHAT_LLAMA2, NULL, " Hi ", "[INST] Hi [/INST]"},
        {"[INST]", 0, KVS_CHAT_LLAMA2, "Sys", "Hi", "[INST] Sys\n\nHi [/INST]"},
        {"{{ messages }}", 0, KVS_CHAT_NONE, NULL, "Hi", NULL},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(cases); i++) {
        struct loaded l;
        struct crafted c = {.pre = "smollm", .tmpl = cases[i].tmpl, .add_bos = cases[i].add_bos};
        if (!build_crafted(&c, &l) || !l.t) { CHECKF(0, "case %zu: %s", i, l.err); loaded_free(&l); continue; }
        CHECKF(kvs_tokenizer_chat_kind(l.t) == cases[i].kind, "case %zu", i);
        char *got = kvs_tokenizer_chat_format(l.t, cases[i].sys, cases[i].user);
        bool ok = cases[i].expect ? got && strcmp(got, cases[i].expect) == 0 : got == NULL;
        CHECKF(ok, "case %zu: got [%s]", i, got ? got : "(null)");
        free(got);
        loaded_free(&l);
    }
}

static void test_hostile_metadata(void)
{
    static const char *const ok_merges[] = {"h e"};
    struct { struct crafted c; const char *want; } cases[] = {
        {{.pre = "gpt2", .no_tokens = true}, "tokenizer.ggml.tokens is missing"},
        {{.pre = "gpt2", .tokens_wrong_type = true}, "not a string array"},
        {{.pre = "gpt2", .bad_types_len = true}, "token_type"},
        {{.pre = "gpt2", .no_merges = true}, "merges is missing"},
        {{.pre = "gpt2", .merges = ok_merges, .n_merges = 1, .bad_merge = "zzz qqq"}, "not in the vocabulary"},
        {{.pre = "gpt2", .bad_merge = "nospace"}, "no space"},
        {{.pre = "gpt2", .bos = 4000000000u}, "bos_token_id"},
        {{.pre = "gpt2", .bos = 261}, "outside the vocabulary"},
        {{.model = "bert"}, "not supported"},
        {{.pre = "no-such-pre"}, "no-such-pre"},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(cases); i++) {
        struct loaded l;
        bool opened = build_crafted(&cases[i].c, &l);
        CHECKF(opened && !l.t && strstr(l.err, cases[i].want), "case %zu: opened %d, tokenizer %p, err [%s]", i,
               opened, (void *)l.t, l.err);
        loaded_free(&l);
    }
    /* no tokenizer metadata at all */
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.tokenizer = KVS_TINY_TOK_NONE;
    o.n_vocab = 300;
    uint8_t *mem;
    size_t len;
    struct loaded l;
    CHECK(kvs_tiny_build(&o, &mem, &len) == 0 && load_mem(&l, mem, len) && !l.t &&
          strstr(l.err, "tokenizer.ggml.model"));
    loaded_free(&l);
    char err[128];
    CHECK(kvs_tokenizer_new(NULL, err, sizeof(err)) == NULL);
}

/* Random byte mutations of a valid tokenizer GGUF: whatever opens must build or fail cleanly,
 * and whatever builds must encode, decode and format without crashing (run under ASan). */
static void test_mutated_metadata(void)
{
    static const char *const m[] = {"h e", "he y", "Ġ hey", "1 2", "' s"};
    struct crafted c = {.pre = "llama-bpe", .merges = m, .n_merges = KVS_ARRAY_LEN(m),
                        .tmpl = "<|im_start|>system\nDefault<|im_end|>"};
    size_t len;
    uint8_t *orig = crafted_bytes(&c, &len);
    CHECK(orig != NULL);
    if (!orig) return;
    int opened = 0, built = 0, crashed_not = 0;
    char text[600];
    for (int it = 0; it < 600; it++) {
        uint8_t *mem = malloc(len);
        memcpy(mem, orig, len);
        int flips = 1 + (int)(rnd() % 6);
        for (int k = 0; k < flips; k++) {
            /* keep the header; mostly hit text bytes (token texts, merges, keys), sometimes lengths */
            size_t at = 24 + rnd() % (len - 24);
            for (int tries = 0; tries < 8 && orig[at] < 0x20 && rnd() % 8 != 0; tries++) at = 24 + rnd() % (len - 24);
            mem[at] = (rnd() % 3 == 0) ? (uint8_t)rnd() : (uint8_t)(mem[at] ^ (1u << (rnd() % 8)));
        }
        struct loaded l;
        if (load_mem(&l, mem, len)) opened++;
        if (l.t) {
            built++;
            size_t n = random_utf8(text, 8 + rnd() % 500, false);
            int64_t k;
            int32_t *ids = encode(l.t, text, n, rnd() % 2, &k);
            if (ids && k >= 0) {
                char *dec = malloc(4 * n + 64);
                kvs_tokenizer_decode(l.t, ids, k, dec, (int64_t)(4 * n + 64));
                free(dec);
            }
            free(ids);
            free(kvs_tokenizer_chat_format(l.t, rnd() % 2 ? "s" : NULL, "u"));
        } else if (opened && !l.err[0]) {
            CHECKF(0, "failure without a reason");
        }
        crashed_not++;
        loaded_free(&l);
    }
    printf("mutations: %d tried, %d opened, %d built a tokenizer\n", crashed_not, opened, built);
    CHECK(crashed_not == 600 && built > 0 && built < 600);
    free(orig);
}

/* Hex string -> bytes in place; returns the length or -1. */
static long unhex(char *s)
{
    size_t n = strlen(s);
    if (n % 2) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
        s[i] = (char)v;
    }
    return (long)(n / 2);
}

static void test_smollm2_golden(void)
{
    struct kvs_gguf g;
    if (access(SMOLLM2, F_OK) != 0) {
        printf("skipped: model missing (%s)\n", SMOLLM2);
        return;
    }
    bool opened = kvs_gguf_open(&g, SMOLLM2) == KVS_OK;
    CHECKF(opened, "%s", g.err);
    if (!opened) return;
    char err[256];
    struct kvs_tokenizer *t = kvs_tokenizer_new(&g, err, sizeof(err));
    CHECKF(t != NULL, "%s", err);
    kvs_gguf_close(&g); /* the tokenizer keeps its own copies */
    if (!t) return;
    CHECK(kvs_tokenizer_n_vocab(t) == 49152);
    CHECK(kvs_tokenizer_bos(t) == 1 && kvs_tokenizer_eos(t) == 2);
    CHECK(kvs_tokenizer_is_eog(t, 2) && kvs_tokenizer_is_eog(t, 0) && !kvs_tokenizer_is_eog(t, 1));
    CHECK(!kvs_tokenizer_add_bos(t));
    CHECK(kvs_tokenizer_chat_kind(t) == KVS_CHAT_CHATML);
    char *chat = kvs_tokenizer_chat_format(t, NULL, "What is 2+2?");
    CHECK(chat && strcmp(chat, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                               "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                               "<|im_start|>assistant\n") == 0);
    int64_t n;
    int32_t *ids = chat ? encode(t, chat, strlen(chat), true, &n) : NULL;
    CHECK(ids && n > 10 && ids[0] == 1 && ids[n - 4] == 1); /* <|im_start|> assist ant \n */
    free(ids);
    free(chat);

    size_t len;
    char *gold = read_file(GOLDEN, &len);
    CHECKF(gold != NULL, "cannot read %s", GOLDEN);
    int cases = 0;
    char name[128] = "";
    int special = 0;
    char *text = NULL;
    long text_len = -1;
    for (char *line = gold ? strtok(gold, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "case ", 5) == 0) {
            sscanf(line + 5, "%127s %d", name, &special);
        } else if (strncmp(line, "text ", 5) == 0) {
            text = line + 5;
            text_len = unhex(text);
        } else if (strncmp(line, "ids ", 4) == 0 && text && text_len >= 0) {
            int64_t want_n = 0;
            int32_t *want = malloc((strlen(line) / 2 + 1) * sizeof(int32_t));
            for (char *p = line + 4, *q; want && *p; p = q) {
                long v = strtol(p, &q, 10);
                if (q == p) break;
                want[want_n++] = (int32_t)v;
            }
            int32_t *got = encode(t, text, (size_t)text_len, special != 0, &n);
            int64_t first = -1;
            for (int64_t i = 0; got && i < KVS_MIN(n, want_n) && first < 0; i++) {
                if (got[i] != want[i]) first = i;
            }
            if (first < 0 && n != want_n) first = KVS_MIN(n, want_n);
            CHECKF(got && first < 0, "%s: %lld ids, expected %lld; first difference at %lld", name, (long long)n,
                   (long long)want_n, (long long)first);
            if (!special) CHECKF(round_trip(t, text, (size_t)text_len), "%s: round trip", name);
            cases++;
            free(got);
            free(want);
            text = NULL;
        }
    }
    CHECKF(cases >= 3, "%d golden cases", cases);
    free(gold);

    /* speed: the GPL-3 text in well under a second */
    char *gpl = read_file("/usr/share/common-licenses/GPL-3", &len);
    if (gpl) {
        uint64_t t0 = kvs_now_ns();
        int32_t *gid = encode(t, gpl, len, false, &n);
        double ms = (double)(kvs_now_ns() - t0) / 1e6;
        printf("GPL-3: %zu bytes -> %lld ids in %.1f ms (%.1f MB/s)\n", len, (long long)n, ms, (double)len / ms / 1e3);
        CHECKF(gid && n > 0 && ms < 500.0, "%.1f ms", ms);
        CHECK(round_trip(t, gpl, len));
        free(gid);
        free(gpl);
    }
    kvs_tokenizer_delete(t);
}

/* ---------------------------------------------------------------- command-line modes */

static int cli_encode(const char *model, const char *path, bool special)
{
    struct kvs_gguf g;
    if (kvs_gguf_open(&g, model) != KVS_OK) { fprintf(stderr, "%s\n", g.err); return 1; }
    char err[256];
    struct kvs_tokenizer *t = kvs_tokenizer_new(&g, err, sizeof(err));
    kvs_gguf_close(&g);
    if (!t) { fprintf(stderr, "%s\n", err); return 1; }
    size_t len;
    char *text = read_file(path, &len);
    if (!text) { fprintf(stderr, "cannot read %s\n", path); kvs_tokenizer_delete(t); return 1; }
    int64_t n;
    int32_t *ids = encode(t, text, len, special, &n);
    if (!ids || n < 0) { fprintf(stderr, "encode failed (%lld)\n", (long long)n); return 1; }
    for (int64_t i = 0; i < n; i++) printf("%d\n", ids[i]);
    free(ids);
    free(text);
    kvs_tokenizer_delete(t);
    return 0;
}

static int cli_chat(const char *model, const char *user, const char *system)
{
    struct kvs_gguf g;
    if (kvs_gguf_open(&g, model) != KVS_OK) { fprintf(stderr, "%s\n", g.err); return 1; }
    char err[256];
    struct kvs_tokenizer *t = kvs_tokenizer_new(&g, err, sizeof(err));
    kvs_gguf_close(&g);
    if (!t) { fprintf(stderr, "%s\n", err); return 1; }
    char *s = kvs_tokenizer_chat_format(t, system, user);
    if (s) fputs(s, stdout);
    free(s);
    kvs_tokenizer_delete(t);
    return s ? 0 : 1;
}

/* Writes the tiny SPM model the unit tests use (richer: 400 merges) for the reference script. */
static int cli_tiny_spm(const char *path)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.tokenizer = KVS_TINY_TOK_SPM;
    o.n_merges = 400;
    if (kvs_tiny_write(path, &o) != 0) { fprintf(stderr, "%s\n", kvs_tiny_error()); return 1; }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--tiny-spm") == 0) return cli_tiny_spm(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "--chat") == 0) return cli_chat(argv[2], argv[3], argc > 4 ? argv[4] : NULL);
    if (argc == 3 || (argc == 4 && strcmp(argv[3], "--special") == 0)) return cli_encode(argv[1], argv[2], argc == 4);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [MODEL.gguf TEXTFILE [--special] | --chat MODEL.gguf USER [SYSTEM] | --tiny-spm OUT]\n", argv[0]);
        return 2;
    }
    RUN(test_bpe_merges_and_pre);
    RUN(test_special_tokens);
    RUN(test_round_trip_bpe);
    RUN(test_spm);
    RUN(test_chat_formats);
    RUN(test_hostile_metadata);
    RUN(test_mutated_metadata);
    RUN(test_smollm2_golden);
    return kvs_test_summary();
}
