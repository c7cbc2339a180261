/* Dequantization dumper for the independent reference check (tests/t_dequant_ref.sh compares its
 * output with gguf-py's gguf.quants.dequantize). With no arguments it is a normal self-test.
 *   test_dequant_dump                                 self-test
 *   test_dequant_dump --write-models DIR              tiny models of every type + random.gguf; prints paths
 *   test_dequant_dump --all FILE DIR                  every tensor of FILE to DIR/<name>.f32
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
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-models") == 0) return write_models(argv[2]);
    if (argc == 4 && strcmp(argv[1], "--all") == 0) return dump_all(argv[2], argv[3]);
    if (argc >= 4) return dump_one(argc, argv);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--write-models DIR | --all FILE DIR | FILE TENSOR OUT [ROW0 NROWS]]\n", argv[0]);
        return 2;
    }
    RUN(test_self);
    return kvs_test_summary();
}
