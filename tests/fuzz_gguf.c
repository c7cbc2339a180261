/* libFuzzer target for the GGUF reader: kvs_gguf_open_mem over arbitrary bytes; on success every
 * metadata string and array is touched and every tensor's first and last block is dequantized,
 * so a descriptor that points outside the input shows up under ASan; accepted tensors must not
 * overlap. A failure must leave one printable line (kvs_text_is_clean) naming the input and, for
 * malformed bytes, an offset. Built by tests/fuzz.sh.
 * fuzz-sources: engine/model/gguf.c engine/model/quant.c engine/model/quant_simd.c engine/core/kvs.c
 * fuzz-seeds: "$BUILD/tests/test_dequant_dump" --write-seeds "$SEEDS" */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kvs_gguf g;
    enum kvs_status st = kvs_gguf_open_mem(&g, data, size, "fuzz");
    if (st != KVS_OK) {
        /* one printable line: no control byte or invalid UTF-8 from the file gets through */
        if (strncmp(g.err, "fuzz: ", 6) != 0 || !kvs_text_is_clean(g.err, strlen(g.err))) abort();
        if (st == KVS_ERR_FORMAT && !strstr(g.err, "offset ")) abort();
        return 0;
    }
    /* an accepted file's tensors never share bytes */
    for (uint64_t i = 0; i < g.n_tensors; i++)
        for (uint64_t j = i + 1; j < g.n_tensors && j < i + 64; j++) {
            const struct kvs_gguf_tensor *a = &g.tensors[i], *b = &g.tensors[j];
            if (a->offset < b->offset + b->nbytes && b->offset < a->offset + a->nbytes) abort();
        }
    volatile uint32_t sink = 0;
    for (uint64_t i = 0; i < g.n_kv; i++) {
        const struct kvs_gguf_kv *kv = &g.kv[i];
        sink += (uint32_t)strlen(kv->key);
        if (kv->type == KVS_GGUF_STRING && kv->v.str.len) sink += (uint8_t)kv->v.str.ptr[kv->v.str.len - 1];
        if (kv->type == KVS_GGUF_ARRAY) {
            if (kv->v.arr.type == KVS_GGUF_STRING) {
                for (uint64_t k = 0; k < kv->v.arr.n; k++)
                    if (kv->v.arr.strs[k].len) sink += (uint8_t)kv->v.arr.strs[k].ptr[kv->v.arr.strs[k].len - 1];
            } else if (kv->v.arr.n) {
                sink += ((const uint8_t *)kv->v.arr.data)[0];
            }
        }
    }
    uint32_t u;
    float f;
    bool b;
    char s[16];
    sink += kvs_gguf_get_u32(&g, "general.alignment", &u) + kvs_gguf_get_f32(&g, "llama.rope.freq_base", &f) +
            kvs_gguf_get_bool(&g, "tokenizer.ggml.add_bos_token", &b) +
            kvs_gguf_get_str(&g, "general.architecture", s, sizeof s);
    float y[256];
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const struct kvs_gguf_tensor *t = &g.tensors[i];
        if (kvs_gguf_tensor(&g, t->name) == NULL) abort();
        uint32_t be = kvs_type_block_elems(t->type), bb = kvs_type_block_bytes(t->type);
        if (be == 0 || t->nbytes % bb) abort();
        if (t->nbytes == 0) continue;
        kvs_dequant_row(t->type, t->data, y, be);
        kvs_dequant_row(t->type, (const uint8_t *)t->data + t->nbytes - bb, y, be);
        uint32_t bits;
        memcpy(&bits, &y[be - 1], 4);
        sink += bits;
    }
    (void)sink;
    kvs_gguf_close(&g);
    return 0;
}
