/* Tests for engine/model/gguf.c: tiny models of every tensor type and both architectures round-trip
 * through the reader; hostile input (missing, non-GGUF, truncated at every byte, absurd counts
 * and lengths, overflowing dimensions, bad types, v1, duplicates, bad alignment, random byte
 * corruption) fails cleanly with the expected message and never reads out of bounds (run it
 * under ASan: every buffer handed to the reader is allocated at its exact size). Corrupt models
 * that parse (overlapping or retyped tensors, a shrunk block_count, NaN weights) are refused at
 * load or at the first forward pass, and kvs_escape keeps file bytes on one visible line. */
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "harness.h"
#include "infer.h"
#include "model.h"
#include "quant.h"
#include "tinymodel.h"

/* Opens a copy of BUF[0..LEN) in a buffer of exactly LEN bytes. */
static enum kvs_status open_copy(struct kvs_gguf *g, const uint8_t *buf, size_t len, const char *name)
{
    uint8_t *c = malloc(len ? len : 1);
    memcpy(c, buf, len);
    enum kvs_status st = kvs_gguf_open_mem(g, c, len, name);
    if (st == KVS_OK) {
        /* touch every tensor's first and last byte so ASan sees any bad pointer */
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const uint8_t *d = g->tensors[i].data;
            sink ^= d[0] ^ d[g->tensors[i].nbytes - 1];
        }
        (void)sink;
        kvs_gguf_close(g);
    }
    free(c);
    return st;
}

/* Expects opening B to fail with WANT and a message containing "name: offset " and FRAG. */
static void expect_fail(struct kvs_gbuf *b, enum kvs_status want, const char *frag, const char *what)
{
    struct kvs_gguf g;
    enum kvs_status st = open_copy(&g, b->p, b->len, "crafted.gguf");
    bool has_off = strstr(g.err, "crafted.gguf: offset ") == g.err;
    CHECKF(st == want && strstr(g.err, frag) && has_off, "%s: status %d (want %d), message \"%s\" (want \"%s\")",
           what, st, want, g.err, frag);
    kvs_gbuf_free(b);
}

static void expect_ok(struct kvs_gbuf *b, const char *what)
{
    struct kvs_gguf g;
    enum kvs_status st = open_copy(&g, b->p, b->len, "crafted.gguf");
    CHECKF(st == KVS_OK, "%s: %s", what, g.err);
    kvs_gbuf_free(b);
}

/* ---- round trips ---- */

static bool u32_is(const struct kvs_gguf *g, const char *key, uint32_t want)
{
    uint32_t v;
    return kvs_gguf_get_u32(g, key, &v) && v == want;
}

static void check_model(const struct kvs_gguf *g, const struct kvs_tiny_opts *o, const char *what)
{
    char key[128], buf[64];
    uint32_t hd = o->n_embd / o->n_head;
    uint32_t n_vocab = o->n_vocab ? o->n_vocab : kvs_tiny_vocab_size(o);
    int bad = 0;
#define C(x) do { if (!(x)) { bad++; fprintf(stderr, "   %s: %s\n", what, #x); } } while (0)
    C(kvs_gguf_get_str(g, "general.architecture", buf, sizeof buf) && strcmp(buf, o->arch) == 0);
    snprintf(key, sizeof key, "%s.block_count", o->arch);
    C(u32_is(g, key, o->n_layer));
    snprintf(key, sizeof key, "%s.embedding_length", o->arch);
    C(u32_is(g, key, o->n_embd));
    snprintf(key, sizeof key, "%s.feed_forward_length", o->arch);
    C(u32_is(g, key, o->n_ff));
    snprintf(key, sizeof key, "%s.attention.head_count", o->arch);
    C(u32_is(g, key, o->n_head));
    snprintf(key, sizeof key, "%s.attention.head_count_kv", o->arch);
    C(u32_is(g, key, o->n_head_kv));
    snprintf(key, sizeof key, "%s.rope.dimension_count", o->arch);
    C(u32_is(g, key, hd));
    float f;
    snprintf(key, sizeof key, "%s.rope.freq_base", o->arch);
    C(kvs_gguf_get_f32(g, key, &f) && f == o->rope_theta);
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", o->arch);
    C(kvs_gguf_get_f32(g, key, &f) && f == o->rms_eps);
    C(g->version == o->version);
    C(g->alignment == (o->alignment ? o->alignment : 32));
    C(g->data_offset % g->alignment == 0);
    const struct kvs_gguf_kv *toks = kvs_gguf_find(g, "tokenizer.ggml.tokens");
    if (o->tokenizer != KVS_TINY_TOK_NONE) {
        C(toks && toks->type == KVS_GGUF_ARRAY && toks->v.arr.type == KVS_GGUF_STRING && toks->v.arr.n == n_vocab);
        C(kvs_gguf_get_str(g, "tokenizer.ggml.model", buf, sizeof buf) &&
          strcmp(buf, o->tokenizer == KVS_TINY_TOK_SPM ? "llama" : "gpt2") == 0);
        if (toks && toks->v.arr.n > 3) C(toks->v.arr.strs[1].len > 0);
    } else {
        C(toks == NULL);
    }
    uint32_t want_tensors = 2 + 9 * o->n_layer + (o->tied ? 0 : 1) + (o->rope_llama3 ? 1 : 0) +
                            (strcmp(o->arch, "qwen2") == 0 ? 3 * o->n_layer : 0);
    C(g->n_tensors == want_tensors);
    const struct kvs_gguf_tensor *t = kvs_gguf_tensor(g, "token_embd.weight");
    C(t && t->n_dims == 2 && t->ne[0] == o->n_embd && t->ne[1] == n_vocab && t->type == o->embd_type);
    t = kvs_gguf_tensor(g, "blk.0.attn_k.weight");
    C(t && t->ne[0] == o->n_embd && t->ne[1] == hd * o->n_head_kv && t->type == o->wtype);
    t = kvs_gguf_tensor(g, "blk.0.ffn_down.weight");
    C(t && t->ne[0] == o->n_ff && t->ne[1] == o->n_embd && t->type == o->wtype);
    t = kvs_gguf_tensor(g, "output.weight");
    C(o->tied ? t == NULL : (t && t->type == o->out_type));
    C((kvs_gguf_tensor(g, "blk.0.attn_q.bias") != NULL) == (strcmp(o->arch, "qwen2") == 0));
    C((kvs_gguf_tensor(g, "rope_freqs.weight") != NULL) == o->rope_llama3);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct kvs_gguf_tensor *x = &g->tensors[i];
        uint64_t rb;
        C(kvs_type_row_bytes(x->type, x->ne[0], &rb) && rb * x->ne[1] * x->ne[2] * x->ne[3] == x->nbytes);
        C((const uint8_t *)x->data >= (const uint8_t *)g->map + g->data_offset);
        C((const uint8_t *)x->data + x->nbytes <= (const uint8_t *)g->map + g->size);
        C(x->offset % g->alignment == 0);
    }
    /* the weights are what the writer meant: norms near 1, matrices near N(0, std) */
    t = kvs_gguf_tensor(g, "blk.0.ffn_norm.weight");
    if (t) {
        float *v = malloc(t->ne[0] * sizeof *v);
        kvs_dequant_row(t->type, t->data, v, (int64_t)t->ne[0]);
        double m = 0;
        for (uint64_t i = 0; i < t->ne[0]; i++) m += v[i];
        C(fabs(m / t->ne[0] - 1.0) < 0.1);
        free(v);
    }
    t = kvs_gguf_tensor(g, "blk.0.attn_q.weight");
    if (t) {
        int64_t n = (int64_t)(t->ne[0] * t->ne[1]);
        float *v = malloc((size_t)n * sizeof *v);
        kvs_dequant_row(t->type, t->data, v, n);
        double s2 = 0;
        for (int64_t i = 0; i < n; i++) s2 += (double)v[i] * v[i];
        double sd = sqrt(s2 / n);
        C(sd > o->weight_std * 0.8 && sd < o->weight_std * 1.25);
        free(v);
    }
#undef C
    CHECKF(bad == 0, "%s: %d checks failed", what, bad);
}

static void test_roundtrip(void)
{
    static const uint32_t types[] = {KVS_GGML_F32, KVS_GGML_F16, KVS_GGML_BF16, KVS_GGML_Q8_0, KVS_GGML_Q4_0,
                                     KVS_GGML_Q4_1, KVS_GGML_Q5_0, KVS_GGML_Q5_1, KVS_GGML_Q4_K, KVS_GGML_Q6_K};
    const char *archs[] = {"llama", "qwen2"};
    char path[600];
    for (size_t a = 0; a < 2; a++)
        for (size_t k = 0; k < KVS_ARRAY_LEN(types); k++) {
            struct kvs_tiny_opts o;
            kvs_tiny_defaults(&o);
            o.arch = archs[a];
            o.wtype = types[k];
            o.embd_type = types[(k + 3) % KVS_ARRAY_LEN(types)];
            o.out_type = types[(k + 5) % KVS_ARRAY_LEN(types)];
            bool kq = kvs_type_block_elems(o.wtype) == 256 || kvs_type_block_elems(o.embd_type) == 256 ||
                      kvs_type_block_elems(o.out_type) == 256;
            if (kq) { o.n_embd = 256; o.n_head = 4; o.n_ff = 512; }
            o.tied = k % 2 == 0;
            o.version = k % 3 == 0 ? 2 : 3;
            o.alignment = k % 4 == 1 ? 64 : 0;
            o.tokenizer = k % 3 == 2 ? KVS_TINY_TOK_SPM : KVS_TINY_TOK_BPE;
            o.rope_llama3 = k % 2 == 1;
            o.seed = k + 10 * a;
            char what[96];
            snprintf(what, sizeof what, "%s %s", o.arch, kvs_ggml_type_name(o.wtype));
            uint8_t *buf;
            size_t len;
            if (kvs_tiny_build(&o, &buf, &len)) {
                CHECKF(0, "%s: writer failed: %s", what, kvs_tiny_error());
                continue;
            }
            struct kvs_gguf g;
            enum kvs_status st = kvs_gguf_open_mem(&g, buf, len, what);
            CHECKF(st == KVS_OK, "%s: %s", what, g.err);
            if (st == KVS_OK) check_model(&g, &o, what);
            kvs_gguf_close(&g);
            snprintf(path, sizeof path, "%s/tiny-%s-%s.gguf", kvs_test_tmpdir(), o.arch, kvs_ggml_type_name(o.wtype));
            CHECK(kvs_tiny_write(path, &o) == 0);
            st = kvs_gguf_open(&g, path);
            CHECKF(st == KVS_OK && g.owns_map && g.size == len && memcmp(g.map, buf, len) == 0, "%s: %s", path, g.err);
            kvs_gguf_close(&g);
            kvs_gguf_close(&g); /* closing twice is harmless */
            unlink(path);
            free(buf);
        }
    /* the writer refuses shapes that do not fit the type */
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.wtype = KVS_GGML_Q4_K; /* n_embd 64 is not a multiple of 256 */
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == -1 && strstr(kvs_tiny_error(), "Q4_K"));
    kvs_tiny_defaults(&o);
    o.tokenizer = KVS_TINY_TOK_NONE;
    o.n_vocab = 100;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    struct kvs_gguf g;
    CHECK(kvs_gguf_open_mem(&g, buf, len, "notok") == KVS_OK && g.n_tensors == 20);
    check_model(&g, &o, "no tokenizer");
    kvs_gguf_close(&g);
    free(buf);
}

static void test_getters(void)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    struct kvs_gguf g;
    CHECK(kvs_gguf_open_mem(&g, buf, len, "g") == KVS_OK);
    uint32_t u;
    float f;
    bool b;
    char s[8];
    CHECK(!kvs_gguf_get_u32(&g, "llama.rope.freq_base", &u));  /* float, not int */
    CHECK(!kvs_gguf_get_f32(&g, "llama.block_count", &f));     /* int, not float */
    CHECK(!kvs_gguf_get_u32(&g, "no.such.key", &u));
    CHECK(kvs_gguf_get_bool(&g, "tokenizer.ggml.add_bos_token", &b) && !b);
    CHECK(!kvs_gguf_get_bool(&g, "general.architecture", &b));
    CHECK(kvs_gguf_get_str(&g, "general.name", s, sizeof s) && strlen(s) == 7); /* truncated */
    CHECK(!kvs_gguf_get_str(&g, "llama.block_count", s, sizeof s));
    CHECK(kvs_gguf_tensor(&g, "blk.9.attn_q.weight") == NULL);
    CHECK(strcmp(kvs_ggml_type_name(KVS_GGML_Q4_1), "Q4_1") == 0 && strcmp(kvs_ggml_type_name(4), "unknown") == 0);
    kvs_gguf_close(&g);
    free(buf);

    /* signed and 64-bit integers convert when in range */
    struct kvs_gbuf w = {0};
    kvs_gbuf_header(&w, 3, 0, 3);
    kvs_gbuf_str(&w, "a.i64");
    kvs_gbuf_u32(&w, KVS_GGUF_INT64);
    kvs_gbuf_u64(&w, 7);
    kvs_gbuf_str(&w, "a.neg");
    kvs_gbuf_u32(&w, KVS_GGUF_INT32);
    kvs_gbuf_u32(&w, (uint32_t)-5);
    kvs_gbuf_str(&w, "a.big");
    kvs_gbuf_u32(&w, KVS_GGUF_UINT64);
    kvs_gbuf_u64(&w, 1ull << 40);
    CHECK(kvs_gguf_open_mem(&g, w.p, w.len, "ints") == KVS_OK);
    CHECK(kvs_gguf_get_u32(&g, "a.i64", &u) && u == 7);
    CHECK(!kvs_gguf_get_u32(&g, "a.neg", &u));
    CHECK(!kvs_gguf_get_u32(&g, "a.big", &u));
    CHECK(kvs_gguf_find(&g, "a.neg")->v.i == -5);
    kvs_gguf_close(&g);
    kvs_gbuf_free(&w);
}

/* ---- hostile files ---- */

static void test_files(void)
{
    struct kvs_gguf g;
    char path[600];
    enum kvs_status st = kvs_gguf_open(&g, "/nonexistent/dir/model.gguf");
    CHECKF(st == KVS_ERR_IO && strstr(g.err, "/nonexistent/dir/model.gguf: cannot open: "), "%s", g.err);
    st = kvs_gguf_open(&g, kvs_test_tmpdir());
    CHECKF(st == KVS_ERR_IO && strstr(g.err, "not a regular file"), "%s", g.err);
    snprintf(path, sizeof path, "%s/text.gguf", kvs_test_tmpdir());
    FILE *fp = fopen(path, "w");
    fputs("This is not a model, it is a text file.\n", fp);
    fclose(fp);
    st = kvs_gguf_open(&g, path);
    CHECKF(st == KVS_ERR_FORMAT && strstr(g.err, ": offset 0: not a GGUF file (magic 54 68 69 73"), "%s", g.err);
    fp = fopen(path, "w");
    fclose(fp);
    st = kvs_gguf_open(&g, path);
    CHECKF(st == KVS_ERR_FORMAT && strstr(g.err, "offset 0: empty file"), "%s", g.err);
    unlink(path);
    kvs_gguf_close(&g); /* safe after a failed open */
}

static void test_truncation(void)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.n_layer = 1;
    o.n_embd = 32;
    o.n_head = 2;
    o.n_head_kv = 1;
    o.n_ff = 32;
    o.n_merges = 8;
    o.wtype = KVS_GGML_Q4_1;
    o.embd_type = KVS_GGML_Q8_0;
    o.chat_template = "";
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    struct kvs_gguf g;
    CHECK(kvs_gguf_open_mem(&g, buf, len, "full") == KVS_OK);
    uint64_t need = 0;
    for (uint64_t i = 0; i < g.n_tensors; i++)
        need = KVS_MAX(need, g.data_offset + g.tensors[i].offset + g.tensors[i].nbytes);
    kvs_gguf_close(&g);
    /* every prefix shorter than the last tensor's end fails with an offset; longer ones only lose
     * the trailing alignment padding and stay valid */
    int bad = 0, ok_tail = 0;
    for (size_t cut = 0; cut < len; cut++) {
        enum kvs_status st = open_copy(&g, buf, cut, "cut.gguf");
        if (cut < need) {
            if (st != KVS_ERR_FORMAT || strncmp(g.err, "cut.gguf: offset ", 17) != 0) {
                if (bad++ < 5) fprintf(stderr, "   cut %zu: status %d: %s\n", cut, st, g.err);
            }
        } else {
            ok_tail += st == KVS_OK;
        }
    }
    CHECKF(bad == 0, "%d of %llu truncations did not fail cleanly", bad, (unsigned long long)need);
    CHECK(ok_tail == (int)(len - need));
    fprintf(stderr, "   %zu-byte model: %llu truncations fail with an offset, %d tail cuts stay valid\n", len,
            (unsigned long long)need, ok_tail);
    free(buf);
}

static void test_corruption(void)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.n_layer = 1;
    o.n_embd = 32;
    o.n_head = 2;
    o.n_head_kv = 1;
    o.n_ff = 32;
    o.n_merges = 8;
    o.wtype = KVS_GGML_Q5_0;
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    struct kvs_gguf g;
    CHECK(kvs_gguf_open_mem(&g, buf, len, "c") == KVS_OK);
    uint64_t meta_end = g.data_offset;
    kvs_gguf_close(&g);
    uint8_t *m = malloc(len);
    uint64_t s = 99;
    int ok = 0, failed = 0, no_msg = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(m, buf, len);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t pos = (s >> 20) % meta_end; /* the header and metadata are what the reader parses */
            uint8_t v = (uint8_t)(s >> 56);
            if (it % 3 == 0) v = (uint8_t)(0xFF * ((s >> 8) & 1)); /* 0x00 / 0xFF, good at making huge counts */
            m[pos] = v;
        }
        enum kvs_status st = open_copy(&g, m, len, "c.gguf");
        if (st == KVS_OK) ok++;
        else {
            failed++;
            if (strncmp(g.err, "c.gguf: offset ", 15) != 0) no_msg++;
        }
    }
    CHECKF(no_msg == 0, "%d corrupted files failed without an offset in the message", no_msg);
    fprintf(stderr, "   3000 corrupted copies: %d opened, %d refused, none crashed\n", ok, failed);
    free(m);
    free(buf);
}

/* A minimal valid file: one F32 tensor "t" of 8 elements, KVs from the callback. */
static void minimal(struct kvs_gbuf *b, uint32_t version)
{
    uint64_t ne[1] = {8};
    kvs_gbuf_header(b, version, 1, 1);
    kvs_gbuf_kv_str(b, "general.architecture", "llama");
    kvs_gbuf_tensor(b, "t", 1, ne, KVS_GGML_F32, 0);
    kvs_gbuf_pad(b, 32);
    float z[8] = {0};
    kvs_gbuf_bytes(b, z, sizeof z);
}

static void test_crafted(void)
{
    struct kvs_gbuf b = {0};
    uint64_t ne[5] = {8, 1, 1, 1, 1};
    float z[64] = {0};

    minimal(&b, 3);
    expect_ok(&b, "minimal v3");
    minimal(&b, 2);
    expect_ok(&b, "minimal v2");
    minimal(&b, 1);
    expect_fail(&b, KVS_ERR_UNSUPPORTED, "offset 4: GGUF version 1 is not supported", "v1");
    minimal(&b, 7);
    expect_fail(&b, KVS_ERR_FORMAT, "unknown GGUF version 7", "v7");
    minimal(&b, 0x03000000u);
    expect_fail(&b, KVS_ERR_UNSUPPORTED, "big-endian", "big-endian");

    kvs_gbuf_bytes(&b, "GGUF", 4);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 4: unexpected end of file reading the version", "magic only");
    kvs_gbuf_bytes(&b, "GGU", 3);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 0: not a GGUF file", "3 bytes");

    /* absurd counts */
    kvs_gbuf_header(&b, 3, 1ull << 63, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 8: tensor count 9223372036854775808 is absurd", "huge tensor count");
    kvs_gbuf_header(&b, 3, 0, 1000000);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 16: metadata count 1000000 is absurd", "huge kv count");
    kvs_gbuf_header(&b, 3, 100, 1000);
    expect_fail(&b, KVS_ERR_FORMAT, "cannot fit in the 0 bytes left", "counts beyond the file");

    /* strings */
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_u64(&b, UINT64_MAX);
    kvs_gbuf_bytes(&b, z, 16);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 24: key length 18446744073709551615 exceeds the limit", "huge key length");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_u64(&b, 100);
    kvs_gbuf_bytes(&b, "abcdefgh", 8);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 32: unexpected end of file reading key (need 100 bytes, 8 left)",
                "key past the end");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, KVS_GGUF_STRING);
    kvs_gbuf_u64(&b, 1ull << 40);
    kvs_gbuf_bytes(&b, z, 8);
    expect_fail(&b, KVS_ERR_FORMAT, "string value length 1099511627776 exceeds the limit", "1 TiB string");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "");
    kvs_gbuf_u32(&b, KVS_GGUF_UINT8);
    kvs_gbuf_u8(&b, 0);
    kvs_gbuf_bytes(&b, z, 8);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 24: empty key", "empty key");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_u64(&b, 3);
    kvs_gbuf_bytes(&b, "a\0b", 3);
    kvs_gbuf_u32(&b, KVS_GGUF_UINT8);
    kvs_gbuf_u8(&b, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "key contains a NUL byte", "NUL in key");

    /* value types and arrays */
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, 13);
    kvs_gbuf_u64(&b, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "key 'k': unknown value type 13", "value type 13");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
    kvs_gbuf_u64(&b, 1);
    kvs_gbuf_bytes(&b, z, 16);
    expect_fail(&b, KVS_ERR_FORMAT, "key 'k': nested arrays are not supported", "nested array");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(&b, KVS_GGUF_UINT32);
    kvs_gbuf_u64(&b, 1ull << 62); /* x4 bytes overflows 64 bits */
    kvs_gbuf_bytes(&b, z, 16);
    expect_fail(&b, KVS_ERR_FORMAT, "array of 4611686018427387904 uint32 elements runs past the end", "array overflow");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(&b, KVS_GGUF_STRING);
    kvs_gbuf_u64(&b, 1ull << 61);
    kvs_gbuf_bytes(&b, z, 16);
    expect_fail(&b, KVS_ERR_FORMAT, "array of 2305843009213693952 strings cannot fit", "string array count");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "k");
    kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
    kvs_gbuf_u32(&b, 99);
    kvs_gbuf_u64(&b, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "unknown array element type 99", "array element type");
    kvs_gbuf_header(&b, 3, 0, 2);
    kvs_gbuf_kv_u32(&b, "general.x", 1);
    kvs_gbuf_kv_u32(&b, "general.x", 2);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 49: duplicate key 'general.x'", "duplicate key");

    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_str(&b, "bad\nkey\x1b[2J");
    kvs_gbuf_u32(&b, 77);
    kvs_gbuf_u64(&b, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "key 'bad\\nkey\\x1b[2J': unknown value type 77", "control bytes in a key");

    /* alignment */
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_kv_u32(&b, "general.alignment", 3);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 24: key general.alignment: 3 is not a power of two", "alignment 3");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_kv_u32(&b, "general.alignment", 0);
    expect_fail(&b, KVS_ERR_FORMAT, "general.alignment: 0 is not a power of two", "alignment 0");
    kvs_gbuf_header(&b, 3, 0, 1);
    kvs_gbuf_kv_str(&b, "general.alignment", "32");
    expect_fail(&b, KVS_ERR_FORMAT, "general.alignment has type string", "alignment string");
    kvs_gbuf_header(&b, 3, 1, 1);
    kvs_gbuf_kv_u32(&b, "general.alignment", 8);
    kvs_gbuf_tensor(&b, "t", 1, ne, KVS_GGML_F32, 0);
    kvs_gbuf_pad(&b, 8);
    kvs_gbuf_bytes(&b, z, 32);
    expect_ok(&b, "alignment 8");

    /* tensors */
#define TENSOR_FILE(nd, nev, type, off, data_bytes)                 \
    do {                                                            \
        kvs_gbuf_header(&b, 3, 1, 0);                               \
        kvs_gbuf_tensor(&b, "w", nd, nev, type, off);               \
        kvs_gbuf_pad(&b, 32);                                       \
        kvs_gbuf_bytes(&b, z, data_bytes);                          \
    } while (0)
    TENSOR_FILE(0, ne, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': 0 dimensions (must be 1 to 4)", "0 dims");
    TENSOR_FILE(5, ne, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': 5 dimensions", "5 dims");
    uint64_t big[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1};
    TENSOR_FILE(3, big, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': element count overflows", "dims overflow");
    uint64_t big2[2] = {1ull << 61, 2};
    TENSOR_FILE(2, big2, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': byte size overflows", "bytes overflow");
    uint64_t zero[2] = {8, 0};
    TENSOR_FILE(2, zero, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': dimension 1 is 0", "zero dim");
    uint64_t neg[1] = {UINT64_MAX};
    TENSOR_FILE(1, neg, KVS_GGML_F32, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "dimension 0 is 18446744073709551615", "negative dim");
    TENSOR_FILE(1, ne, 4, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': unknown ggml type id 4", "type 4");
    TENSOR_FILE(1, ne, 200, 0, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': unknown ggml type id 200", "type 200");
    uint64_t kne[1] = {256};
    TENSOR_FILE(1, kne, KVS_GGML_Q2_K, 0, 96);
    expect_fail(&b, KVS_ERR_UNSUPPORTED, "tensor 'w': type Q2_K is not supported", "Q2_K");
    uint64_t odd[1] = {33};
    TENSOR_FILE(1, odd, KVS_GGML_Q4_0, 0, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "a row of 33 elements is not a whole number of Q4_0 blocks (32)", "partial block");
    TENSOR_FILE(1, ne, KVS_GGML_F32, 16, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "data offset 16 is not a multiple of the alignment 32", "unaligned offset");
    TENSOR_FILE(1, ne, KVS_GGML_F32, 32, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': 32 bytes of data at data offset 32 run past the end of the file",
                "data past end");
    TENSOR_FILE(1, ne, KVS_GGML_F32, UINT64_MAX - 31, 32);
    expect_fail(&b, KVS_ERR_FORMAT, "run past the end of the file", "offset overflow");
    TENSOR_FILE(1, ne, KVS_GGML_F32, 0, 31);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'w': 32 bytes of data at data offset 0 run past", "one byte short");
    kvs_gbuf_header(&b, 3, 1, 0);
    kvs_gbuf_tensor(&b, "w", 1, ne, KVS_GGML_F32, 0);
    expect_fail(&b, KVS_ERR_FORMAT, "unexpected end of file before the data section", "no data section");
    kvs_gbuf_header(&b, 3, 2, 0);
    kvs_gbuf_tensor(&b, "w", 1, ne, KVS_GGML_F32, 0);
    kvs_gbuf_tensor(&b, "w", 1, ne, KVS_GGML_F32, 32);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "duplicate tensor 'w'", "duplicate tensor");
    kvs_gbuf_header(&b, 3, 1, 0);
    kvs_gbuf_str(&b, "");
    kvs_gbuf_bytes(&b, z, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "offset 24: empty tensor name", "empty tensor name");
#undef TENSOR_FILE
}


/* ---- tensor data layout: overlaps, gaps and retyped tensors ---- */

/* Offset of the u32 type field of tensor NAME's descriptor in a GGUF buffer (0 when absent). */
static size_t tensor_type_at(const uint8_t *buf, size_t len, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 8; i + nl + 4 <= len; i++) {
        uint64_t sl;
        memcpy(&sl, buf + i - 8, 8);
        if (sl != nl || memcmp(buf + i, name, nl) != 0) continue;
        uint32_t nd;
        memcpy(&nd, buf + i + nl, 4);
        if (nd < 1 || nd > 4) continue;
        return i + nl + 4 + 8 * (size_t)nd;
    }
    return 0;
}

static void test_layout(void)
{
    struct kvs_gbuf b = {0};
    uint8_t z[256] = {0};
    uint64_t n16[1] = {16}, n8[1] = {8};
    kvs_gbuf_header(&b, 3, 2, 0);
    kvs_gbuf_tensor(&b, "a", 1, n16, KVS_GGML_F32, 0);
    kvs_gbuf_tensor(&b, "b", 1, n8, KVS_GGML_F32, 32);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "tensor 'b' (F32, data offset 32) overlaps tensor 'a' (F32, 64 bytes at data offset 0)",
                "overlap");
    kvs_gbuf_header(&b, 3, 2, 0);
    kvs_gbuf_tensor(&b, "a", 1, n8, KVS_GGML_F32, 0);
    kvs_gbuf_tensor(&b, "b", 1, n8, KVS_GGML_F32, 64);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 96);
    expect_fail(&b, KVS_ERR_FORMAT, "32 unused bytes before tensor 'b' (F32, data offset 64) after tensor 'a'", "gap");
    kvs_gbuf_header(&b, 3, 1, 0);
    kvs_gbuf_tensor(&b, "w", 1, n8, KVS_GGML_F32, 32);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 64);
    expect_fail(&b, KVS_ERR_FORMAT, "32 unused bytes before tensor 'w' (F32, data offset 32):", "gap at the start");
    kvs_gbuf_header(&b, 3, 1, 0);
    kvs_gbuf_tensor(&b, "w", 1, n8, KVS_GGML_F32, 0);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 96);
    expect_fail(&b, KVS_ERR_FORMAT, "64 bytes after the last tensor 'w' (F32, 32 bytes at data offset 0)", "tail");
    /* descriptors listed out of offset order are fine as long as the data tiles */
    kvs_gbuf_header(&b, 3, 2, 0);
    kvs_gbuf_tensor(&b, "b", 1, n8, KVS_GGML_F32, 32);
    kvs_gbuf_tensor(&b, "a", 1, n8, KVS_GGML_F32, 0);
    kvs_gbuf_pad(&b, 32);
    kvs_gbuf_bytes(&b, z, 64);
    expect_ok(&b, "permuted descriptors");

    /* a real tiny model whose tensor's declared type no longer matches its bytes */
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.wtype = KVS_GGML_Q4_1;
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    size_t at = tensor_type_at(buf, len, "blk.0.attn_k.weight");
    CHECK(at > 0);
    struct kvs_gguf g;
    uint32_t types[3] = {KVS_GGML_F32, KVS_GGML_Q4_0, KVS_GGML_Q8_0};
    for (int k = 0; k < 3 && at; k++) {
        uint32_t old;
        memcpy(&old, buf + at, 4);
        memcpy(buf + at, &types[k], 4);
        enum kvs_status st = open_copy(&g, buf, len, "retyped.gguf");
        CHECKF(st == KVS_ERR_FORMAT && strncmp(g.err, "retyped.gguf: offset ", 21) == 0 &&
                   (strstr(g.err, "does not match its data") || strstr(g.err, "overlaps") ||
                    strstr(g.err, "run past the end")) && strstr(g.err, "blk.0.attn_k.weight"),
               "Q4_1 retyped as %s: status %d: %s", kvs_ggml_type_name(types[k]), st, g.err);
        memcpy(buf + at, &old, 4);
    }
    CHECK(open_copy(&g, buf, len, "restored.gguf") == KVS_OK);
    free(buf);
}

/* ---- models that parse but must not run ---- */

/* Writes BUF to DIR/NAME and returns the path (static storage). */
static const char *write_tmp(const char *name, const uint8_t *buf, size_t len)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", kvs_test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    CHECK(f && fwrite(buf, 1, len, f) == len);
    if (f) fclose(f);
    return path;
}

static void test_model_refused(void)
{
    struct kvs_tiny_opts o;
    kvs_tiny_defaults(&o);
    o.n_layer = 3;
    uint8_t *buf;
    size_t len;
    CHECK(kvs_tiny_build(&o, &buf, &len) == 0);
    struct kvs_model *m = NULL;
    char err[512];
    /* block_count 3 -> 1 with three layers' tensors present */
    uint8_t *p = memmem(buf, len, "llama.block_count", 17);
    CHECK(p != NULL);
    if (p) {
        uint32_t one = 1, three;
        memcpy(&three, p + 17 + 4, 4);
        CHECK(three == 3);
        memcpy(p + 17 + 4, &one, 4);
        const char *path = write_tmp("layers.gguf", buf, len);
        enum kvs_status st = kvs_model_load(&m, path, err, sizeof err);
        CHECKF(st == KVS_ERR_FORMAT && strstr(err, path) &&
                   strstr(err, "llama.block_count is 1 but the file holds tensor blk.1.") && !strchr(err, '\n'),
               "block_count 1: status %d: %s", st, err);
        kvs_model_delete(m);
        m = NULL;
        memcpy(p + 17 + 4, &three, 4);
    }
    /* NaN and Inf in a weight are refused at load, naming the tensor; a huge finite weight loads
     * but overflows, and the first forward pass stops with the model's name instead of producing
     * text from Inf/NaN logits */
    struct kvs_gguf g;
    CHECK(kvs_gguf_open_mem(&g, buf, len, "tiny") == KVS_OK);
    const struct kvs_gguf_tensor *t = kvs_gguf_tensor(&g, "output_norm.weight");
    size_t off = t ? (size_t)((const uint8_t *)t->data - buf) : 0;
    kvs_gguf_close(&g);
    CHECK(off > 0);
    const float bad[3] = {NAN, -INFINITY, 3e38f};
    for (int k = 0; k < 3 && off; k++) {
        float keep[64];
        memcpy(keep, buf + off, sizeof keep);
        memcpy(buf + off + 4 * 5, &bad[k], 4);
        for (int i = 0; k == 2 && i < 64; i++) memcpy(buf + off + 4 * i, &bad[k], 4); /* x/rms * 3e38 */
        const char *path = write_tmp("nan.gguf", buf, len);
        enum kvs_status lst = kvs_model_load(&m, path, err, sizeof err);
        if (k < 2)
            CHECKF(lst == KVS_ERR_FORMAT && strstr(err, path) &&
                       strstr(err, "tensor output_norm.weight (F32): element 5 is NaN or Inf"),
                   "%g in output_norm: status %d: %s", (double)bad[k], lst, err);
        else
            CHECKF(lst == KVS_OK, "3e38 in output_norm: %s", err);
        if (m) {
            struct kvs_method_config mc;
            kvs_method_parse(&mc, "full", NULL, 0);
            struct kvs_press *pr = NULL;
            struct kvs_ctx *ctx = NULL;
            struct kvs_ctx_params cp;
            kvs_ctx_params_default(&cp);
            cp.n_ctx = 64;
            cp.n_threads = 1;
            CHECK(kvs_press_new(&pr, m, &mc, 64, NULL, NULL, err, sizeof err) == KVS_OK);
            CHECK(pr && kvs_ctx_new(&ctx, m, pr, &cp, err, sizeof err) == KVS_OK);
            if (ctx) {
                int32_t ids[3] = {5, 6, 7};
                enum kvs_status st = kvs_ctx_eval(ctx, ids, 3, NULL);
                const char *e = kvs_ctx_error(ctx);
                CHECKF(st == KVS_ERR_FORMAT && strstr(e, path) && strstr(e, "non-finite logits"),
                       "3e38 in output_norm: status %d: %s", st, e);
            }
            kvs_ctx_delete(ctx);
            kvs_press_delete(pr);
            kvs_model_delete(m);
            m = NULL;
        }
        memcpy(buf + off, keep, sizeof keep);
    }
    free(buf);
}

/* ---- kvs_escape: one visible line from any bytes ---- */

static void expect_escape(const char *in, size_t n, const char *want)
{
    char out[256], twice[256];
    size_t w = kvs_escape(out, sizeof out, in, n);
    CHECKF(strcmp(out, want) == 0 && w == strlen(want), "escape gave \"%s\", want \"%s\"", out, want);
    kvs_escape(twice, sizeof twice, out, strlen(out));
    CHECKF(strcmp(out, twice) == 0, "escaping twice changed \"%s\" to \"%s\"", out, twice);
    CHECK(kvs_text_is_clean(out, strlen(out)));
}

static void test_escape(void)
{
    expect_escape("plain text", 10, "plain text");
    expect_escape("a\x1b[2J\x07\n\xff", 8, "a\\x1b[2J\\x07\\n\\xff");
    expect_escape("tab\tcr\r\x7f", 8, "tab\\tcr\\r\\x7f");
    expect_escape("nul\0x", 5, "nul\\x00x");
    expect_escape("\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80", 9, "\xc3\xa9\xe2\x96\x81\xf0\x9f\x98\x80"); /* é ▁ 😀 */
    expect_escape("\xc2\x9b" "31m", 5, "\\xc2\\x9b31m");         /* C1 CSI */
    expect_escape("\xc0\xaf", 2, "\\xc0\\xaf");                   /* overlong '/' */
    expect_escape("\xed\xa0\x80", 3, "\\xed\\xa0\\x80");          /* surrogate */
    expect_escape("\xe2\x96", 2, "\\xe2\\x96");                   /* cut sequence */
    expect_escape("\xf4\x90\x80\x80", 4, "\\xf4\\x90\\x80\\x80"); /* above U+10FFFF */
    expect_escape("back\\slash", 10, "back\\slash");
    /* output is cut only between whole escapes or characters */
    char small[6];
    CHECK(kvs_escape(small, sizeof small, "ab\x1b", 3) == 2 && strcmp(small, "ab") == 0);
    CHECK(kvs_escape(small, sizeof small, "ab\xc3\xa9\xc3\xa9", 6) == 4 && strcmp(small, "ab\xc3\xa9") == 0);
    CHECK(kvs_escape(small, 1, "abc", 3) == 0 && small[0] == 0);
    /* kvs_seterr escapes what it formats, so every engine and trace message is one line */
    char e[64];
    kvs_seterr(e, sizeof e, "%s: key '%s'", "f.gguf", "x\x1b]0;pwned\x07\ny\xff");
    CHECKF(strcmp(e, "f.gguf: key 'x\\x1b]0;pwned\\x07\\ny\\xff'") == 0, "%s", e);
}

int main(void)
{
    RUN(test_roundtrip);
    RUN(test_getters);
    RUN(test_files);
    RUN(test_truncation);
    RUN(test_corruption);
    RUN(test_crafted);
    RUN(test_layout);
    RUN(test_model_refused);
    RUN(test_escape);
    return kvs_test_summary();
}
