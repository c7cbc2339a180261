/* GGUF (v2, v3) reader: maps a file, validates every offset and size before use, and exposes
 * metadata and tensor descriptors. Depends on libc only. The file is untrusted input. */
#ifndef KVS_GGUF_H
#define KVS_GGUF_H

#include "kvs.h"

/* ggml tensor type ids as stored in GGUF files. */
enum kvs_ggml_type {
    KVS_GGML_F32 = 0,
    KVS_GGML_F16 = 1,
    KVS_GGML_Q4_0 = 2,
    KVS_GGML_Q4_1 = 3,
    KVS_GGML_Q5_0 = 6,
    KVS_GGML_Q5_1 = 7,
    KVS_GGML_Q8_0 = 8,
    KVS_GGML_Q8_1 = 9,
    KVS_GGML_Q2_K = 10,
    KVS_GGML_Q3_K = 11,
    KVS_GGML_Q4_K = 12,
    KVS_GGML_Q5_K = 13,
    KVS_GGML_Q6_K = 14,
    KVS_GGML_Q8_K = 15,
    KVS_GGML_BF16 = 30,
};

/* GGUF metadata value types. */
enum kvs_gguf_vtype {
    KVS_GGUF_UINT8 = 0, KVS_GGUF_INT8 = 1, KVS_GGUF_UINT16 = 2, KVS_GGUF_INT16 = 3,
    KVS_GGUF_UINT32 = 4, KVS_GGUF_INT32 = 5, KVS_GGUF_FLOAT32 = 6, KVS_GGUF_BOOL = 7,
    KVS_GGUF_STRING = 8, KVS_GGUF_ARRAY = 9, KVS_GGUF_UINT64 = 10, KVS_GGUF_INT64 = 11,
    KVS_GGUF_FLOAT64 = 12,
};

struct kvs_gguf_str {
    const char *ptr; /* points into the mapping; NOT NUL-terminated */
    uint64_t len;
};

struct kvs_gguf_kv {
    char *key;     /* NUL-terminated copy, owned by the kvs_gguf */
    uint32_t type; /* enum kvs_gguf_vtype */
    union {
        uint64_t u;   /* unsigned ints and bool */
        int64_t i;    /* signed ints */
        double f;     /* floats */
        struct kvs_gguf_str str;
        struct {
            uint32_t type;      /* element type; nested arrays are rejected */
            uint64_t n;         /* element count */
            const void *data;   /* raw little-endian elements in the mapping (non-string types) */
            struct kvs_gguf_str *strs; /* string arrays: n entries, owned by the kvs_gguf */
        } arr;
    } v;
};

struct kvs_gguf_tensor {
    char *name;        /* NUL-terminated copy */
    uint32_t n_dims;   /* 1..4 */
    uint64_t ne[4];    /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint32_t type;     /* enum kvs_ggml_type */
    uint64_t offset;   /* relative to the data section */
    uint64_t nbytes;   /* validated: fits inside the file */
    const void *data;  /* points into the mapping */
};

struct kvs_gguf {
    char path[512];
    void *map;         /* whole file (mmap or caller memory) */
    uint64_t size;
    bool owns_map;     /* true when opened from a path (munmap on close) */
    uint32_t version;
    uint64_t n_kv;
    struct kvs_gguf_kv *kv;
    uint64_t n_tensors;
    struct kvs_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;
    char err[512];     /* last error: "FILE: offset N: what was wrong" */
};

/* Opens and validates PATH. On failure returns an error and g->err names the file, the offset or
 * field and the problem; g needs no close then. On success the caller must kvs_gguf_close(g). */
enum kvs_status kvs_gguf_open(struct kvs_gguf *g, const char *path);

/* Same as kvs_gguf_open over caller memory (fuzzing, tests). DATA must outlive g. */
enum kvs_status kvs_gguf_open_mem(struct kvs_gguf *g, const void *data, uint64_t size, const char *name);

/* Frees everything g owns; safe on a zeroed struct. Invalidates every pointer handed out. */
void kvs_gguf_close(struct kvs_gguf *g);

/* Metadata lookup: NULL when absent. */
const struct kvs_gguf_kv *kvs_gguf_find(const struct kvs_gguf *g, const char *key);

/* Typed getters: return false when absent or of an incompatible type (ints convert when in
 * range; floats accept any float type). */
bool kvs_gguf_get_u32(const struct kvs_gguf *g, const char *key, uint32_t *out);
bool kvs_gguf_get_f32(const struct kvs_gguf *g, const char *key, float *out);
bool kvs_gguf_get_bool(const struct kvs_gguf *g, const char *key, bool *out);
/* Copies a string value into buf (NUL-terminated, truncated to cap). */
bool kvs_gguf_get_str(const struct kvs_gguf *g, const char *key, char *buf, size_t cap);

/* Tensor lookup by name: NULL when absent. */
const struct kvs_gguf_tensor *kvs_gguf_tensor(const struct kvs_gguf *g, const char *name);

/* Human-readable names. */
const char *kvs_ggml_type_name(uint32_t type);

#endif
