/* GGUF v2/v3 reader. The file is untrusted: every count, length, offset and size is checked with
 * overflow-safe arithmetic against the bytes that are really there before it is used, so a bad or
 * truncated file fails with "FILE: offset N: what was wrong" and never reads out of bounds; the
 * tensors' data must tile the data section, so overlapping or retyped tensors are refused.
 * Depends on libc, POSIX mmap and engine/model/quant.h (block sizes); never prints. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

/* Sanity limits: far above any real model, low enough that a hostile header cannot make us
 * allocate or loop without bound. */
#define MAX_KV 1000000ull
#define MAX_TENSORS 1000000ull
#define MAX_STRING (1ull << 30)
#define MAX_KEY 65535ull
#define MAX_NAME 4096ull
#define MAX_ALIGN (1ull << 30)

static const char *const type_names[] = {
    [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [6] = "Q5_0", [7] = "Q5_1", [8] = "Q8_0",
    [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K", [12] = "Q4_K", [13] = "Q5_K", [14] = "Q6_K",
    [15] = "Q8_K", [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S",
    [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS", [24] = "I8", [25] = "I16",
    [26] = "I32", [27] = "I64", [28] = "F64", [29] = "IQ1_M", [30] = "BF16", [31] = "Q4_0_4_4",
    [32] = "Q4_0_4_8", [33] = "Q4_0_8_8", [34] = "TQ1_0", [35] = "TQ2_0", [36] = "IQ4_NL_4_4",
    [37] = "IQ4_NL_4_8", [38] = "IQ4_NL_8_8", [39] = "MXFP4",
};

static bool type_known(uint32_t type)
{
    return type < KVS_ARRAY_LEN(type_names) && type_names[type];
}

const char *kvs_ggml_type_name(uint32_t type)
{
    return type_known(type) ? type_names[type] : "unknown";
}

static const char *vtype_name(uint32_t t)
{
    static const char *const n[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                    "bool", "string", "array", "uint64", "int64", "float64"};
    return t < KVS_ARRAY_LEN(n) ? n[t] : "unknown";
}

/* Element size of a fixed-size value type; 0 for string/array/unknown. */
static uint64_t vtype_size(uint32_t t)
{
    switch (t) {
    case KVS_GGUF_UINT8: case KVS_GGUF_INT8: case KVS_GGUF_BOOL: return 1;
    case KVS_GGUF_UINT16: case KVS_GGUF_INT16: return 2;
    case KVS_GGUF_UINT32: case KVS_GGUF_INT32: case KVS_GGUF_FLOAT32: return 4;
    case KVS_GGUF_UINT64: case KVS_GGUF_INT64: case KVS_GGUF_FLOAT64: return 8;
    }
    return 0;
}

struct rd {
    struct kvs_gguf *g;
    const uint8_t *p;
    uint64_t size, pos;
};

static enum kvs_status ferr(struct kvs_gguf *g, enum kvs_status st, uint64_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum kvs_status ferr(struct kvs_gguf *g, enum kvs_status st, uint64_t off, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* keys and tensor names come from the file: kvs_seterr escapes them onto one printable line */
    kvs_seterr(g->err, sizeof g->err, "%s: offset %llu: %s", g->path, (unsigned long long)off, msg);
    return st;
}

/* Ensures N bytes remain at the read position. */
static enum kvs_status need(struct rd *r, uint64_t n, const char *what)
{
    if (n > r->size - r->pos)
        return ferr(r->g, KVS_ERR_FORMAT, r->pos, "unexpected end of file reading %s (need %llu bytes, %llu left)",
                    what, (unsigned long long)n, (unsigned long long)(r->size - r->pos));
    return KVS_OK;
}

static enum kvs_status rd_u32(struct rd *r, uint32_t *v, const char *what)
{
    enum kvs_status st = need(r, 4, what);
    if (st) return st;
    memcpy(v, r->p + r->pos, 4);
    r->pos += 4;
    return KVS_OK;
}

static enum kvs_status rd_u64(struct rd *r, uint64_t *v, const char *what)
{
    enum kvs_status st = need(r, 8, what);
    if (st) return st;
    memcpy(v, r->p + r->pos, 8);
    r->pos += 8;
    return KVS_OK;
}

static enum kvs_status rd_str(struct rd *r, struct kvs_gguf_str *s, uint64_t limit, const char *what)
{
    uint64_t at = r->pos, len;
    enum kvs_status st = rd_u64(r, &len, what);
    if (st) return st;
    if (len > limit)
        return ferr(r->g, KVS_ERR_FORMAT, at, "%s length %llu exceeds the limit of %llu bytes", what,
                    (unsigned long long)len, (unsigned long long)limit);
    if ((st = need(r, len, what))) return st;
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += len;
    return KVS_OK;
}

/* NUL-terminated copy of a key or tensor name; empty strings and embedded NULs are refused. */
static enum kvs_status rd_name(struct rd *r, char **out, uint64_t limit, const char *what)
{
    uint64_t at = r->pos;
    struct kvs_gguf_str s;
    enum kvs_status st = rd_str(r, &s, limit, what);
    if (st) return st;
    if (s.len == 0) return ferr(r->g, KVS_ERR_FORMAT, at, "empty %s", what);
    if (memchr(s.ptr, 0, s.len)) return ferr(r->g, KVS_ERR_FORMAT, at, "%s contains a NUL byte", what);
    char *c = malloc(s.len + 1);
    if (!c) return ferr(r->g, KVS_ERR_NOMEM, at, "out of memory copying a %s", what);
    memcpy(c, s.ptr, s.len);
    c[s.len] = 0;
    *out = c;
    return KVS_OK;
}

static enum kvs_status rd_scalar(struct rd *r, uint32_t type, struct kvs_gguf_kv *kv)
{
    uint64_t n = vtype_size(type);
    enum kvs_status st = need(r, n, "a metadata value");
    if (st) return st;
    const uint8_t *p = r->p + r->pos;
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } v;
    memcpy(&v, p, n);
    switch (type) {
    case KVS_GGUF_UINT8: kv->v.u = v.u8; break;
    case KVS_GGUF_INT8: kv->v.i = v.i8; break;
    case KVS_GGUF_UINT16: kv->v.u = v.u16; break;
    case KVS_GGUF_INT16: kv->v.i = v.i16; break;
    case KVS_GGUF_UINT32: kv->v.u = v.u32; break;
    case KVS_GGUF_INT32: kv->v.i = v.i32; break;
    case KVS_GGUF_FLOAT32: kv->v.f = v.f32; break;
    case KVS_GGUF_BOOL: kv->v.u = v.u8 != 0; break;
    case KVS_GGUF_UINT64: kv->v.u = v.u64; break;
    case KVS_GGUF_INT64: kv->v.i = v.i64; break;
    case KVS_GGUF_FLOAT64: kv->v.f = v.f64; break;
    }
    r->pos += n;
    return KVS_OK;
}

static enum kvs_status rd_value(struct rd *r, struct kvs_gguf_kv *kv)
{
    uint64_t at = r->pos;
    enum kvs_status st = rd_u32(r, &kv->type, "a metadata value type");
    if (st) return st;
    if (kv->type > KVS_GGUF_FLOAT64)
        return ferr(r->g, KVS_ERR_FORMAT, at, "key '%s': unknown value type %u", kv->key, kv->type);
    if (kv->type == KVS_GGUF_STRING) return rd_str(r, &kv->v.str, MAX_STRING, "a string value");
    if (kv->type != KVS_GGUF_ARRAY) return rd_scalar(r, kv->type, kv);

    at = r->pos;
    uint32_t et;
    uint64_t n;
    if ((st = rd_u32(r, &et, "an array element type"))) return st;
    if (et == KVS_GGUF_ARRAY)
        return ferr(r->g, KVS_ERR_FORMAT, at, "key '%s': nested arrays are not supported", kv->key);
    if (et > KVS_GGUF_FLOAT64)
        return ferr(r->g, KVS_ERR_FORMAT, at, "key '%s': unknown array element type %u", kv->key, et);
    at = r->pos;
    if ((st = rd_u64(r, &n, "an array length"))) return st;
    kv->v.arr.type = et;
    if (et != KVS_GGUF_STRING) {
        uint64_t bytes;
        if (!kvs_mul_ok(n, vtype_size(et), &bytes) || bytes > r->size - r->pos)
            return ferr(r->g, KVS_ERR_FORMAT, at, "key '%s': array of %llu %s elements runs past the end of the file",
                        kv->key, (unsigned long long)n, vtype_name(et));
        kv->v.arr.n = n;
        kv->v.arr.data = r->p + r->pos;
        r->pos += bytes;
        return KVS_OK;
    }
    /* every string takes at least its 8-byte length: bound the count before allocating */
    if (n > (r->size - r->pos) / 8)
        return ferr(r->g, KVS_ERR_FORMAT, at, "key '%s': array of %llu strings cannot fit in the %llu bytes left",
                    kv->key, (unsigned long long)n, (unsigned long long)(r->size - r->pos));
    kv->v.arr.strs = calloc(n ? n : 1, sizeof *kv->v.arr.strs);
    if (!kv->v.arr.strs) return ferr(r->g, KVS_ERR_NOMEM, at, "key '%s': out of memory", kv->key);
    kv->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++)
        if ((st = rd_str(r, &kv->v.arr.strs[i], MAX_STRING, "a string array element"))) return st;
    kv->v.arr.data = NULL;
    return KVS_OK;
}

struct named { const char *s; uint64_t off; };

static int cmp_named(const void *a, const void *b)
{
    const struct named *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    if (c) return c;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Finds a duplicate among N names; returns its index in the sorted copy (the later one) or -1. */
static enum kvs_status check_unique(struct kvs_gguf *g, struct named *v, uint64_t n, const char *what)
{
    if (n < 2) return KVS_OK;
    qsort(v, n, sizeof *v, cmp_named);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(v[i - 1].s, v[i].s) == 0)
            return ferr(g, KVS_ERR_FORMAT, v[i].off, "duplicate %s '%s'", what, v[i].s);
    return KVS_OK;
}

static bool int_value(const struct kvs_gguf_kv *kv, uint64_t *out)
{
    switch (kv->type) {
    case KVS_GGUF_UINT8: case KVS_GGUF_UINT16: case KVS_GGUF_UINT32: case KVS_GGUF_UINT64:
        *out = kv->v.u;
        return true;
    case KVS_GGUF_INT8: case KVS_GGUF_INT16: case KVS_GGUF_INT32: case KVS_GGUF_INT64:
        if (kv->v.i < 0) return false;
        *out = (uint64_t)kv->v.i;
        return true;
    }
    return false;
}

static void free_parsed(struct kvs_gguf *g)
{
    if (g->kv) {
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            if (g->kv[i].type == KVS_GGUF_ARRAY) free(g->kv[i].v.arr.strs);
        }
        free(g->kv);
    }
    if (g->tensors) {
        for (uint64_t i = 0; i < g->n_tensors; i++) free(g->tensors[i].name);
        free(g->tensors);
    }
    g->kv = NULL;
    g->tensors = NULL;
    g->n_kv = g->n_tensors = 0;
}

static enum kvs_status parse_tensor(struct rd *r, struct kvs_gguf_tensor *t)
{
    struct kvs_gguf *g = r->g;
    enum kvs_status st = rd_name(r, &t->name, MAX_NAME, "tensor name");
    if (st) return st;
    uint64_t at = r->pos;
    if ((st = rd_u32(r, &t->n_dims, "a tensor dimension count"))) return st;
    if (t->n_dims < 1 || t->n_dims > 4)
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': %u dimensions (must be 1 to 4)", t->name, t->n_dims);
    uint64_t nrows = 1;
    for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        at = r->pos;
        if ((st = rd_u64(r, &t->ne[d], "a tensor dimension"))) return st;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': dimension %u is %llu", t->name, d,
                        (unsigned long long)t->ne[d]);
        if (d > 0 && (!kvs_mul_ok(nrows, t->ne[d], &nrows) || nrows > (uint64_t)INT64_MAX))
            return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': element count overflows", t->name);
    }
    uint64_t nel;
    if (!kvs_mul_ok(nrows, t->ne[0], &nel) || nel > (uint64_t)INT64_MAX)
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': element count overflows", t->name);
    at = r->pos;
    if ((st = rd_u32(r, &t->type, "a tensor type"))) return st;
    if (!type_known(t->type))
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': unknown ggml type id %u", t->name, t->type);
    if (!kvs_type_supported(t->type))
        return ferr(g, KVS_ERR_UNSUPPORTED, at, "tensor '%s': type %s is not supported", t->name,
                    kvs_ggml_type_name(t->type));
    uint64_t row;
    if (!kvs_type_row_bytes(t->type, t->ne[0], &row))
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': a row of %llu elements is not a whole number of %s blocks (%u)",
                    t->name, (unsigned long long)t->ne[0], kvs_ggml_type_name(t->type),
                    kvs_type_block_elems(t->type));
    if (!kvs_mul_ok(row, nrows, &t->nbytes))
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': byte size overflows", t->name);
    at = r->pos;
    if ((st = rd_u64(r, &t->offset, "a tensor data offset"))) return st;
    if (t->offset % g->alignment)
        return ferr(g, KVS_ERR_FORMAT, at, "tensor '%s': data offset %llu is not a multiple of the alignment %llu",
                    t->name, (unsigned long long)t->offset, (unsigned long long)g->alignment);
    return KVS_OK;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct kvs_gguf_tensor *x = *(const struct kvs_gguf_tensor *const *)a,
                                 *y = *(const struct kvs_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Tensor data must tile the data section: sorted by offset, each tensor starts where the one
 * before it ends (rounded up to the alignment) and the file ends within one alignment of the last.
 * An overlap means two tensors share bytes; a gap or a tail means a descriptor's type or shape
 * no longer matches the bytes written for it. Both would otherwise run silently to garbage. */
static enum kvs_status check_layout(struct kvs_gguf *g)
{
    if (g->n_tensors == 0) return KVS_OK;
    const struct kvs_gguf_tensor **by = malloc(g->n_tensors * sizeof *by);
    if (!by) return ferr(g, KVS_ERR_NOMEM, g->data_offset, "out of memory sorting %llu tensors",
                         (unsigned long long)g->n_tensors);
    for (uint64_t i = 0; i < g->n_tensors; i++) by[i] = &g->tensors[i];
    qsort(by, g->n_tensors, sizeof *by, cmp_by_offset);
    enum kvs_status st = KVS_OK;
    uint64_t expect = 0; /* data offset where the next tensor should start */
    const struct kvs_gguf_tensor *prev = NULL;
    for (uint64_t i = 0; i < g->n_tensors && !st; i++) {
        const struct kvs_gguf_tensor *t = by[i];
        /* offsets and sizes were checked against the file size: no overflow below */
        if (prev && t->offset < prev->offset + prev->nbytes)
            st = ferr(g, KVS_ERR_FORMAT, g->data_offset + t->offset,
                      "tensor '%s' (%s, data offset %llu) overlaps tensor '%s' (%s, %llu bytes at data offset %llu)",
                      t->name, kvs_ggml_type_name(t->type), (unsigned long long)t->offset, prev->name,
                      kvs_ggml_type_name(prev->type), (unsigned long long)prev->nbytes,
                      (unsigned long long)prev->offset);
        else if (t->offset != expect)
            st = ferr(g, KVS_ERR_FORMAT, g->data_offset + expect,
                      "%llu unused bytes before tensor '%s' (%s, data offset %llu)%s%s%s: a tensor's type or shape "
                      "does not match its data", (unsigned long long)(t->offset - expect), t->name,
                      kvs_ggml_type_name(t->type), (unsigned long long)t->offset, prev ? " after tensor '" : "",
                      prev ? prev->name : "", prev ? "'" : "");
        expect = (t->offset + t->nbytes + g->alignment - 1) / g->alignment * g->alignment;
        prev = t;
    }
    uint64_t end = g->data_offset + prev->offset + prev->nbytes;
    if (!st && g->size - end >= g->alignment)
        st = ferr(g, KVS_ERR_FORMAT, end,
                  "%llu bytes after the last tensor '%s' (%s, %llu bytes at data offset %llu): a tensor's type or "
                  "shape does not match its data", (unsigned long long)(g->size - end), prev->name,
                  kvs_ggml_type_name(prev->type), (unsigned long long)prev->nbytes, (unsigned long long)prev->offset);
    free(by);
    return st;
}

static enum kvs_status parse(struct kvs_gguf *g)
{
    struct rd r = {g, g->map, g->size, 0};
    enum kvs_status st;
    if (g->size < 4)
        return ferr(g, KVS_ERR_FORMAT, 0, "not a GGUF file (%llu bytes, too short for the magic)",
                    (unsigned long long)g->size);
    if (memcmp(g->map, "GGUF", 4) != 0) {
        const uint8_t *m = g->map;
        return ferr(g, KVS_ERR_FORMAT, 0, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                    m[0], m[1], m[2], m[3]);
    }
    r.pos = 4;
    if ((st = rd_u32(&r, &g->version, "the version"))) return st;
    if (g->version == 1)
        return ferr(g, KVS_ERR_UNSUPPORTED, 4, "GGUF version 1 is not supported (re-convert the model; "
                                               "versions 2 and 3 are read)");
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return ferr(g, KVS_ERR_UNSUPPORTED, 4, "big-endian GGUF files are not supported");
    if (g->version != 2 && g->version != 3)
        return ferr(g, KVS_ERR_FORMAT, 4, "unknown GGUF version %u", g->version);
    uint64_t n_tensors, n_kv;
    if ((st = rd_u64(&r, &n_tensors, "the tensor count"))) return st;
    if ((st = rd_u64(&r, &n_kv, "the metadata count"))) return st;
    if (n_tensors >= MAX_TENSORS)
        return ferr(g, KVS_ERR_FORMAT, 8, "tensor count %llu is absurd (limit %llu)", (unsigned long long)n_tensors,
                    MAX_TENSORS);
    if (n_kv >= MAX_KV)
        return ferr(g, KVS_ERR_FORMAT, 16, "metadata count %llu is absurd (limit %llu)", (unsigned long long)n_kv,
                    MAX_KV);
    /* a pair takes at least 8+1+4+1 bytes and a tensor descriptor 8+1+4+8+4+8 */
    if (n_kv * 14 + n_tensors * 33 > g->size - r.pos)
        return ferr(g, KVS_ERR_FORMAT, 8, "%llu tensors and %llu metadata pairs cannot fit in the %llu bytes left",
                    (unsigned long long)n_tensors, (unsigned long long)n_kv,
                    (unsigned long long)(g->size - r.pos));

    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    struct named *names = malloc((KVS_MAX(n_kv, n_tensors) + 1) * sizeof *names);
    uint64_t *kv_off = malloc((n_kv + 1) * sizeof *kv_off);
    if (!g->kv || !g->tensors || !names || !kv_off) {
        free(names);
        free(kv_off);
        return ferr(g, KVS_ERR_NOMEM, r.pos, "out of memory for %llu tensors and %llu pairs",
                    (unsigned long long)n_tensors, (unsigned long long)n_kv);
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        names[i].off = kv_off[i] = r.pos;
        g->n_kv = i + 1; /* so free_parsed releases what this entry holds */
        if ((st = rd_name(&r, &g->kv[i].key, MAX_KEY, "key"))) goto out;
        names[i].s = g->kv[i].key;
        if ((st = rd_value(&r, &g->kv[i]))) goto out;
    }
    if ((st = check_unique(g, names, n_kv, "key"))) goto out;

    g->alignment = 32;
    const struct kvs_gguf_kv *al = kvs_gguf_find(g, "general.alignment");
    if (al) {
        uint64_t a, at = kv_off[al - g->kv];
        if (!int_value(al, &a)) {
            st = ferr(g, KVS_ERR_FORMAT, at, "key general.alignment has type %s, not an unsigned integer",
                      vtype_name(al->type));
            goto out;
        }
        if (a == 0 || (a & (a - 1)) || a > MAX_ALIGN) {
            st = ferr(g, KVS_ERR_FORMAT, at, "key general.alignment: %llu is not a power of two up to %llu",
                      (unsigned long long)a, MAX_ALIGN);
            goto out;
        }
        g->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        names[i].off = r.pos;
        g->n_tensors = i + 1;
        if ((st = parse_tensor(&r, &g->tensors[i]))) goto out;
        names[i].s = g->tensors[i].name;
    }
    if ((st = check_unique(g, names, n_tensors, "tensor"))) goto out;

    /* the data section starts at the next multiple of the alignment */
    uint64_t pad = (g->alignment - r.pos % g->alignment) % g->alignment;
    g->data_offset = r.pos + pad; /* r.pos <= size and pad < 2^30: no overflow */
    if (n_tensors > 0 && g->data_offset > g->size) {
        st = ferr(g, KVS_ERR_FORMAT, r.pos, "unexpected end of file before the data section (aligned to %llu, "
                  "file size %llu)", (unsigned long long)g->alignment, (unsigned long long)g->size);
        goto out;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct kvs_gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (!kvs_add_ok(g->data_offset, t->offset, &start) || !kvs_add_ok(start, t->nbytes, &end) || end > g->size) {
            st = ferr(g, KVS_ERR_FORMAT, kvs_add_ok(g->data_offset, t->offset, &start) ? start : g->data_offset,
                      "tensor '%s': %llu bytes of data at data offset %llu run past the end of the file (size %llu)",
                      t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset,
                      (unsigned long long)g->size);
            goto out;
        }
        t->data = (const uint8_t *)g->map + start;
    }
    if ((st = check_layout(g))) goto out;
    st = KVS_OK;
out:
    free(names);
    free(kv_off);
    return st;
}

static enum kvs_status finish(struct kvs_gguf *g)
{
    enum kvs_status st = parse(g);
    if (st) {
        free_parsed(g);
        if (g->owns_map && g->map) munmap(g->map, g->size);
        g->map = NULL;
        g->owns_map = false;
    }
    return st;
}

static void set_path(struct kvs_gguf *g, const char *name)
{
    memset(g, 0, sizeof *g);
    snprintf(g->path, sizeof g->path, "%s", name ? name : "(memory)");
}

enum kvs_status kvs_gguf_open_mem(struct kvs_gguf *g, const void *data, uint64_t size, const char *name)
{
    set_path(g, name);
    if (!data && size) return ferr(g, KVS_ERR_ARG, 0, "no data");
    g->map = (void *)data;
    g->size = size;
    g->owns_map = false;
    return finish(g);
}

enum kvs_status kvs_gguf_open(struct kvs_gguf *g, const char *path)
{
    set_path(g, path);
    /* a FIFO or device is refused before it can block the open */
    int fd = kvs_open_regular(path, g->err, sizeof g->err);
    if (fd < 0) return KVS_ERR_IO;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        kvs_seterr(g->err, sizeof g->err, "%s: cannot stat: %s", g->path, strerror(errno));
        close(fd);
        return KVS_ERR_IO;
    }
    g->size = (uint64_t)sb.st_size;
    if (g->size == 0) {
        close(fd);
        return ferr(g, KVS_ERR_FORMAT, 0, "empty file, not a GGUF file");
    }
    if (g->size > SIZE_MAX) {
        close(fd);
        return ferr(g, KVS_ERR_IO, 0, "file too large to map");
    }
    void *m = mmap(NULL, (size_t)g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    close(fd);
    if (m == MAP_FAILED) {
        kvs_seterr(g->err, sizeof g->err, "%s: cannot map %llu bytes: %s", g->path, (unsigned long long)g->size,
                   strerror(mmap_errno));
        return KVS_ERR_IO;
    }
    g->map = m;
    g->owns_map = true;
    return finish(g);
}

void kvs_gguf_close(struct kvs_gguf *g)
{
    if (!g) return;
    free_parsed(g);
    if (g->owns_map && g->map) munmap(g->map, g->size);
    g->map = NULL;
    g->owns_map = false;
    g->size = 0;
}

const struct kvs_gguf_kv *kvs_gguf_find(const struct kvs_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    return NULL;
}

bool kvs_gguf_get_u32(const struct kvs_gguf *g, const char *key, uint32_t *out)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, key);
    uint64_t v;
    if (!kv || !int_value(kv, &v) || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

bool kvs_gguf_get_f32(const struct kvs_gguf *g, const char *key, float *out)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, key);
    if (!kv || (kv->type != KVS_GGUF_FLOAT32 && kv->type != KVS_GGUF_FLOAT64)) return false;
    *out = (float)kv->v.f;
    return true;
}

bool kvs_gguf_get_bool(const struct kvs_gguf *g, const char *key, bool *out)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, key);
    if (!kv || kv->type != KVS_GGUF_BOOL) return false;
    *out = kv->v.u != 0;
    return true;
}

bool kvs_gguf_get_str(const struct kvs_gguf *g, const char *key, char *buf, size_t cap)
{
    const struct kvs_gguf_kv *kv = kvs_gguf_find(g, key);
    if (!kv || kv->type != KVS_GGUF_STRING || cap == 0) return false;
    size_t n = kv->v.str.len < cap - 1 ? (size_t)kv->v.str.len : cap - 1;
    memcpy(buf, kv->v.str.ptr, n);
    buf[n] = 0;
    return true;
}

const struct kvs_gguf_tensor *kvs_gguf_tensor(const struct kvs_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name && strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    return NULL;
}
