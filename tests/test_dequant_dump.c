/* Dequantization dumper for the independent reference check (tests/t_dequant_ref.sh compares its
 * output with gguf-py's gguf.quants.dequantize). With no arguments it is a normal self-test.
 *   test_dequant_dump                                 self-test
 *   test_dequant_dump --write-models DIR              tiny models of every type + random.gguf; prints paths
 *   test_dequant_dump --all FILE DIR                  every tensor of FILE to DIR/<name>.f32
 *   test_dequant_dump --write-seeds DIR               small GGUF files: a fuzzing corpus (tests/fuzz.sh)
 *   test_dequant_dump FILE TENSOR OUT [ROW0 NROWS]    fp32 of rows [ROW0, ROW0+NROWS) (default all) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "harness.h"
#include "quant.h"
#include "tinymodel.h"

static const uint32_t model_types[] = {KVS_GGML_F32, KVS_GGML_F16, KVS_GGML_BF16, KVS_GGML_Q8_0, KVS_GGML_Q4_0,
                                       KVS_GGML_Q4_1, KVS_GGML_Q5_0, KVS_GGML_Q5_1, KVS_GGML_Q4_K, KVS_GGML_Q6_K};

/* Writes rows [row0, row0+nrows) of T as fp32 to OUT. Returns 0 or -1 with a message on stderr. */
static int dump(const struct kvs_gguf_tensor *t, uint64_t row0, uint64_t nrows, const char *out)
{
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3], rb;
    if (row0 > rows || nrows > rows - row0) {
        fprintf(stderr, "%s: rows [%llu, +%llu) outside %llu rows\n", t->name, (unsigned long long)row0,
                (unsigned long long)nrows, (unsigned long long)rows);
        return -1;
    }
    if (!kvs_type_row_bytes(t->type, t->ne[0], &rb)) return -1;
    FILE *fp = fopen(out, "wb");
    float *y = malloc(t->ne[0] * sizeof *y);
    if (!fp || !y) {
        fprintf(stderr, "%s: cannot write\n", out);
        if (fp) fclose(fp);
        free(y);
        return -1;
    }
    int rc = 0;
    for (uint64_t r = row0; r < row0 + nrows && rc == 0; r++) {
        kvs_dequant_row(t->type, (const uint8_t *)t->data + r * rb, y, (int64_t)t->ne[0]);
        if (fwrite(y, sizeof *y, t->ne[0], fp) != t->ne[0]) rc = -1;
    }
    if (fclose(fp) != 0) rc = -1;
    free(y);
    return rc;
}

/* A GGUF of one 8 x 512 tensor per type filled with random bytes (every bit pattern a layout
 * can hold) and finite fp16 scales. */
static int write_random(const char *path)
{
    struct kvs_gbuf b = {0};
    uint64_t ne[2] = {512, 8}, off = 0, rb;
    size_t n = KVS_ARRAY_LEN(model_types);
    kvs_gbuf_header(&b, 3, n, 1);
    kvs_gbuf_kv_str(&b, "general.architecture", "random");
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "rand.%s", kvs_ggml_type_name(model_types[i]));
        kvs_gbuf_tensor(&b, name, 2, ne, model_types[i], off);
        kvs_type_row_bytes(model_types[i], ne[0], &rb);
        off += (rb * ne[1] + 31) / 32 * 32;
    }
    kvs_gbuf_pad(&b, 32);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = model_types[i], bb = kvs_type_block_bytes(t);
        kvs_type_row_bytes(t, ne[0], &rb);
        size_t nbytes = rb * ne[1];
        uint8_t *p = malloc(nbytes);
        if (!p) return -1;
        for (size_t k = 0; k < nbytes; k++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            p[k] = (uint8_t)(s >> 24);
        }
        for (size_t blk = 0; blk < nbytes / bb; blk++) {
            uint8_t *q = p + blk * bb;
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            uint16_t h0 = kvs_fp32_to_fp16((float)((int)(s % 2001) - 1000) * 1e-4f);
            uint16_t h1 = kvs_fp32_to_fp16((float)((int)((s >> 20) % 2001) - 1000) * 1e-4f);
            if (t == KVS_GGML_F16) {
                memcpy(q, &h0, 2);
            } else if (t == KVS_GGML_F32) {
                float f = (float)((int)(s % 2001) - 1000) * 1e-3f;
                memcpy(q, &f, 4);
            } else if (t == KVS_GGML_BF16) {
                uint16_t v = (uint16_t)(0x3800 + (s >> 40) % 0x1000) | (uint16_t)((s & 1) << 15);
                memcpy(q, &v, 2);
            } else if (t == KVS_GGML_Q6_K) {
                memcpy(q + 208, &h0, 2);
            } else {
                memcpy(q, &h0, 2);
                if (t == KVS_GGML_Q4_1 || t == KVS_GGML_Q5_1 || t == KVS_GGML_Q4_K) memcpy(q + 2, &h1, 2);
            }
        }
        kvs_gbuf_bytes(&b, p, nbytes);
        kvs_gbuf_pad(&b, 32);
        free(p);
    }
    FILE *fp = fopen(path, "wb");
    int rc = (!b.oom && fp && fwrite(b.p, 1, b.len, fp) == b.len) ? 0 : -1;
    if (fp && fclose(fp) != 0) rc = -1;
    kvs_gbuf_free(&b);
    return rc;
}

static int write_models(const char *dir)
{
    char path[1024];
    mkdir(dir, 0755);
    for (size_t i = 0; i < KVS_ARRAY_LEN(model_types); i++) {
        struct kvs_tiny_opts o;
        kvs_tiny_defaults(&o);
        o.wtype = o.embd_type = o.out_type = model_types[i];
        o.tied = false;
        o.arch = i % 2 ? "qwen2" : "llama";
        o.rope_llama3 = i % 2 == 0;
        o.n_layer = 1;
        o.seed = 100 + i;
        if (kvs_type_block_elems(o.wtype) == 256) {
            o.n_embd = 256;
            o.n_ff = 512;
        }
        snprintf(path, sizeof path, "%s/tiny-%s.gguf", dir, kvs_ggml_type_name(o.wtype));
        if (kvs_tiny_write(path, &o)) {
            fprintf(stderr, "%s: %s\n", path, kvs_tiny_error());
            return 1;
        }
        printf("%s\n", path);
    }
    snprintf(path, sizeof path, "%s/random.gguf", dir);
    if (write_random(path)) {
        fprintf(stderr, "%s: cannot write\n", path);
        return 1;
    }
    printf("%s\n", path);
    return 0;
}

/* Small files that between them reach every branch of the reader: both versions, every value
 * type, string arrays, an alignment key, several tensor types, both tokenizers. */
static int write_seeds(const char *dir)
{
    char path[1024];
    mkdir(dir, 0755);
    static const struct { uint32_t w, e; const char *arch; int tok; uint32_t ver, align; } m[] = {
        {KVS_GGML_F32, KVS_GGML_F32, "llama", KVS_TINY_TOK_NONE, 3, 0},
        {KVS_GGML_Q4_1, KVS_GGML_Q8_0, "llama", KVS_TINY_TOK_NONE, 2, 64},
        {KVS_GGML_Q5_0, KVS_GGML_F16, "qwen2", KVS_TINY_TOK_NONE, 3, 8},
        {KVS_GGML_Q4_0, KVS_GGML_BF16, "llama", KVS_TINY_TOK_BPE, 3, 0},
        {KVS_GGML_Q6_K, KVS_GGML_Q4_K, "llama", KVS_TINY_TOK_NONE, 3, 0},
    };
    for (size_t i = 0; i < KVS_ARRAY_LEN(m); i++) {
        struct kvs_tiny_opts o;
        kvs_tiny_defaults(&o);
        o.wtype = m[i].w;
        o.embd_type = m[i].e;
        o.arch = m[i].arch;
        o.tokenizer = m[i].tok;
        o.version = m[i].ver;
        o.alignment = m[i].align;
        o.n_layer = 1;
        o.n_embd = kvs_type_block_elems(o.wtype) == 256 ? 256 : 32;
        o.n_ff = o.n_embd;
        o.n_head = 2;
        o.n_head_kv = 1;
        o.n_vocab = m[i].tok == KVS_TINY_TOK_NONE ? 4 : 0;
        o.n_merges = 4;
        o.chat_template = "";
        o.rope_llama3 = i == 0;
        snprintf(path, sizeof path, "%s/seed-%zu.gguf", dir, i);
        if (kvs_tiny_write(path, &o)) {
            fprintf(stderr, "%s: %s\n", path, kvs_tiny_error());
            return 1;
        }
    }
    /* every metadata value type, arrays of each, and a 2-D tensor */
    struct kvs_gbuf b = {0};
    uint64_t ne[2] = {32, 2};
    kvs_gbuf_header(&b, 3, 1, 14);
    for (uint32_t t = 0; t <= KVS_GGUF_FLOAT64; t++) {
        char key[32];
        snprintf(key, sizeof key, "seed.type%u", t);
        kvs_gbuf_str(&b, key);
        if (t == KVS_GGUF_ARRAY) {
            static const char *const strs[] = {"a", "bc", ""};
            kvs_gbuf_u32(&b, KVS_GGUF_ARRAY);
            kvs_gbuf_u32(&b, KVS_GGUF_STRING);
            kvs_gbuf_u64(&b, 3);
            for (int k = 0; k < 3; k++) kvs_gbuf_str(&b, strs[k]);
            continue;
        }
        kvs_gbuf_u32(&b, t);
        if (t == KVS_GGUF_STRING) kvs_gbuf_str(&b, "value");
        else kvs_gbuf_bytes(&b, "\x01\x02\x03\x04\x05\x06\x07\x08", t == KVS_GGUF_BOOL ? 1 : t <= 1 ? 1 : t <= 3 ? 2 : t <= 6 ? 4 : 8);
    }
    int32_t iv[3] = {1, -2, 3};
    kvs_gbuf_kv_i32s(&b, "seed.i32s", iv, 3);
    kvs_gbuf_tensor(&b, "t", 2, ne, KVS_GGML_Q8_0, 0);
    kvs_gbuf_pad(&b, 32);
    uint8_t blocks[68] = {0x00, 0x3C, 1, 2, 3};
    kvs_gbuf_bytes(&b, blocks, sizeof blocks);
    snprintf(path, sizeof path, "%s/seed-types.gguf", dir);
    FILE *fp = fopen(path, "wb");
    int rc = (!b.oom && fp && fwrite(b.p, 1, b.len, fp) == b.len) ? 0 : 1;
    if (fp && fclose(fp) != 0) rc = 1;
    kvs_gbuf_free(&b);
    return rc;
}

static int dump_all(const char *file, const char *dir)
{
    struct kvs_gguf g;
    if (kvs_gguf_open(&g, file) != KVS_OK) {
        fprintf(stderr, "%s\n", g.err);
        return 1;
    }
    mkdir(dir, 0755);
    int rc = 0;
    for (uint64_t i = 0; i < g.n_tensors && rc == 0; i++) {
        char out[1024];
        snprintf(out, sizeof out, "%s/%s.f32", dir, g.tensors[i].name);
        const struct kvs_gguf_tensor *t = &g.tensors[i];
        rc = dump(t, 0, t->ne[1] * t->ne[2] * t->ne[3], out) ? 1 : 0;
    }
    kvs_gguf_close(&g);
    return rc;
}

static int dump_one(int argc, char **argv)
{
    struct kvs_gguf g;
    if (kvs_gguf_open(&g, argv[1]) != KVS_OK) {
        fprintf(stderr, "%s\n", g.err);
        return 1;
    }
    const struct kvs_gguf_tensor *t = kvs_gguf_tensor(&g, argv[2]);
    int rc = 1;
    if (!t) {
        fprintf(stderr, "%s: no tensor '%s'\n", argv[1], argv[2]);
    } else {
        uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        uint64_t r0 = argc > 4 ? strtoull(argv[4], NULL, 10) : 0;
        uint64_t nr = argc > 5 ? strtoull(argv[5], NULL, 10) : rows - (r0 < rows ? r0 : rows);
        rc = dump(t, r0, nr, argv[3]) ? 1 : 0;
    }
    kvs_gguf_close(&g);
    return rc;
}

/* Self-test: the dump of each tiny model's tensors reads back as what kvs_dequant_row gives. */
static void test_self(void)
{
    char dir[600], path[1024], out[1100];
    snprintf(dir, sizeof dir, "%s/dequant-dump", kvs_test_tmpdir());
    mkdir(dir, 0755);
    FILE *saved = stdout;
    stdout = fopen("/dev/null", "w");
    int rc = write_models(dir);
    fclose(stdout);
    stdout = saved;
    CHECK(rc == 0);
    for (size_t i = 0; i < KVS_ARRAY_LEN(model_types); i++) {
        snprintf(path, sizeof path, "%s/tiny-%s.gguf", dir, kvs_ggml_type_name(model_types[i]));
        struct kvs_gguf g;
        if (kvs_gguf_open(&g, path) != KVS_OK) {
            CHECKF(0, "%s", g.err);
            continue;
        }
        const struct kvs_gguf_tensor *t = kvs_gguf_tensor(&g, "blk.0.ffn_up.weight");
        CHECK(t && t->type == model_types[i]);
        if (!t) { kvs_gguf_close(&g); continue; }
        snprintf(out, sizeof out, "%s/up.f32", dir);
        CHECK(dump(t, 1, 2, out) == 0);
        float *want = malloc(2 * t->ne[0] * sizeof *want), *got = calloc(2 * t->ne[0], sizeof *got);
        uint64_t rb;
        kvs_type_row_bytes(t->type, t->ne[0], &rb);
        kvs_dequant_row(t->type, (const uint8_t *)t->data + rb, want, (int64_t)(2 * t->ne[0]));
        FILE *fp = fopen(out, "rb");
        size_t n = fp ? fread(got, sizeof *got, 2 * t->ne[0] + 1, fp) : 0;
        if (fp) fclose(fp);
        CHECKF(n == 2 * t->ne[0] && memcmp(got, want, n * sizeof *got) == 0, "%s: dump differs", path);
        CHECK(dump(t, t->ne[1], 1, out) == -1); /* past the last row */
        free(want);
        free(got);
        kvs_gguf_close(&g);
    }
    snprintf(path, sizeof path, "%s/random.gguf", dir);
    struct kvs_gguf g;
    CHECKF(kvs_gguf_open(&g, path) == KVS_OK && g.n_tensors == KVS_ARRAY_LEN(model_types), "%s", g.err);
    kvs_gguf_close(&g);
    /* the fuzzing seeds are valid files */
    snprintf(dir, sizeof dir, "%s/seeds", kvs_test_tmpdir());
    CHECK(write_seeds(dir) == 0);
    for (int i = 0; i < 6; i++) {
        if (i < 5) snprintf(path, sizeof path, "%s/seed-%d.gguf", dir, i);
        else snprintf(path, sizeof path, "%s/seed-types.gguf", dir);
        CHECKF(kvs_gguf_open(&g, path) == KVS_OK, "%s", g.err);
        if (i == 5) {
            CHECK(g.n_kv == 14 && g.kv[8].type == KVS_GGUF_STRING && g.kv[9].v.arr.n == 3 &&
                  g.kv[9].v.arr.strs[1].len == 2 && g.kv[12].type == KVS_GGUF_FLOAT64);
        }
        kvs_gguf_close(&g);
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-models") == 0) return write_models(argv[2]);
    if (argc == 4 && strcmp(argv[1], "--all") == 0) return dump_all(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) return write_seeds(argv[2]);
    if (argc >= 4) return dump_one(argc, argv);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--write-models DIR | --write-seeds DIR | --all FILE DIR | FILE TENSOR OUT [ROW0 NROWS]]\n", argv[0]);
        return 2;
    }
    RUN(test_self);
    return kvs_test_summary();
}
