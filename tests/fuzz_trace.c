// fuzz-sources: traces/crc32c.c traces/codec.c traces/reader.c traces/export.c engine/core/kvs.c engine/core/record.c
// fuzz-seeds: "$BUILD/tests/test_traces" --write-seeds "$SEEDS"
/* libFuzzer target for the trace reader (traces/reader.c, codec.c, export.c) over a memory buffer.
 * The first input byte picks a mode: bit 0 repairs the header and chunk CRCs (so the fuzzer reaches
 * the code behind them), bit 1 prepends a valid header, bits 2-3 are the open flags. Then every
 * record is read and formatted, seeks are tried and every export format is written to /dev/null.
 * Every error and recovery note must be one printable line (kvs_text_is_clean).
 * Build with clang -fsanitize=fuzzer,address,undefined (tests/fuzz.sh); -DKVS_FUZZ_MAIN gives a
 * main() that replays files named on the command line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static size_t valid_header(uint8_t *p)
{
    static const char meta[] = "model=fuzz\nkvscope_version=0.1.0\n";
    size_t mlen = sizeof meta - 1, hlen = 64 + mlen + 4;
    memset(p, 0, 64);
    memcpy(p, "\x89KVT\r\n\x1a\n", 8);
    p[8] = 1;
    put32(p + 12, (uint32_t)hlen);
    put32(p + 32, 1);
    put32(p + 36, 1);
    put32(p + 56, 4);
    put32(p + 60, (uint32_t)mlen);
    memcpy(p + 64, meta, mlen);
    put32(p + hlen - 4, kvs_crc32c(0, p, hlen - 4));
    return hlen;
}

/* Recomputes the header CRC and, chunk by chunk, the sync word, a payload length that fits, and
 * both chunk CRCs. */
static void repair(uint8_t *b, size_t n)
{
    if (n < 68) return;
    uint32_t hlen = get32(b + 12);
    if (hlen < 68 || hlen > n) return;
    put32(b + hlen - 4, kvs_crc32c(0, b, hlen - 4));
    size_t off = hlen;
    while (n - off >= 72) {
        put32(b + off, 0xB743564Bu);
        uint32_t comp = get32(b + off + 8);
        if (comp > n - off - 72) { comp = (uint32_t)(n - off - 72); put32(b + off + 8, comp); }
        if (b[off + 5] == 0) put32(b + off + 12, comp);
        put32(b + off + 64, kvs_crc32c(0, b + off + 72, comp));
        put32(b + off + 68, kvs_crc32c(0, b + off, 68));
        off += 72 + (size_t)comp;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *devnull;
    if (!devnull) devnull = fopen("/dev/null", "w");
    if (size < 1 || size > (1u << 20)) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    uint8_t *buf = malloc(size + 256);
    if (!buf) return 0;
    size_t n = 0;
    if (mode & 2) n = valid_header(buf);
    memcpy(buf + n, data, size);
    n += size;
    if (mode & 1) repair(buf, n);
    /* an exact-size copy, so reads past the end are caught by ASan */
    uint8_t *exact = malloc(n ? n : 1);
    memcpy(exact, buf, n);
    free(buf);

    struct kvs_trace *t;
    char err[600];
    unsigned flags = (mode >> 2) & 3;
    enum kvs_status st = kvs_trace_open_mem(&t, exact, n, "fuzz.kvt", flags, err, sizeof err);
    /* every message is one printable line naming the trace, whatever bytes the file holds */
    if (st != KVS_OK && (!strstr(err, "fuzz.kvt") || !kvs_text_is_clean(err, strlen(err)))) abort();
    if (st == KVS_OK) {
        if (kvs_trace_note(t) && !kvs_text_is_clean(kvs_trace_note(t), strlen(kvs_trace_note(t)))) abort();
        (void)kvs_trace_note(t);
        for (size_t i = 0; i < kvs_trace_meta_count(t); i++) (void)kvs_trace_meta_value(t, i);
        struct kvs_record *r;
        struct kvs_trace_where w;
        for (int i = 0; i < 100000 && kvs_trace_next(t, &r, &w) == KVS_OK && r; i++) {
            if (devnull) kvs_record_to_json(r, devnull);
            kvs_record_unref(r);
        }
        uint64_t steps = kvs_trace_n_steps(t), kf, s;
        uint64_t targets[3] = { 0, steps / 2, steps ? steps - 1 : 0 };
        for (int k = 0; k < 3; k++) {
            kvs_trace_seek_step(t, targets[k], &kf);
            for (int i = 0; i < 64 && kvs_trace_next(t, &r, &w) == KVS_OK && r; i++) kvs_record_unref(r);
        }
        (void)kvs_trace_seek_token(t, (uint32_t)(size * 7 % 4096), &s, &kf);
        if (devnull)
            for (int f = KVS_TRACE_FMT_PERFETTO; f <= KVS_TRACE_FMT_JSONL; f++)
                if (kvs_trace_export(t, (enum kvs_trace_format)f, mode & 0x10 ? steps / 3 : 0, UINT64_MAX, devnull,
                                     err, sizeof err) != KVS_OK && !kvs_text_is_clean(err, strlen(err)))
                    abort();
        kvs_trace_close(t);
    }
    free(exact);
    return 0;
}

#ifdef KVS_FUZZ_MAIN
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) { perror(argv[i]); return 1; }
        static uint8_t b[1u << 20];
        size_t n = fread(b, 1, sizeof b, f);
        fclose(f);
        LLVMFuzzerTestOneInput(b, n);
    }
    return 0;
}
#endif
