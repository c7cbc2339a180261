/* Allocation and reference counting of step records. Depends on libc only. */
#include "record.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

const char *kvs_op_name(enum kvs_op op)
{
    static const char *names[KVS_OP_COUNT] = {
        "matmul", "attention", "rmsnorm", "rope", "store", "merge", "quant", "evict", "logits", "sample", "svd",
        "fallback",
    };
    return (unsigned)op < KVS_OP_COUNT ? names[op] : "?";
}

static const char *const ckv_keys_names[] = {"auto", "fp32", "bf16", "int8"};

const char *kvs_ckv_keys_name(uint32_t k)
{
    return k < sizeof ckv_keys_names / sizeof ckv_keys_names[0] ? ckv_keys_names[k] : NULL;
}

bool kvs_ckv_keys_parse(const char *name, uint32_t *out)
{
    for (uint32_t k = 0; name && k < sizeof ckv_keys_names / sizeof ckv_keys_names[0]; k++)
        if (!strcmp(name, ckv_keys_names[k])) {
            *out = k;
            return true;
        }
    return false;
}

struct kvs_record *kvs_record_new(uint32_t type, uint32_t matrix_floats)
{
    size_t base = offsetof(struct kvs_record, u);
    size_t size;
    switch (type) {
    case KVS_REC_RUN: size = base + sizeof(struct kvs_rec_run); break;
    case KVS_REC_STEP: size = base + sizeof(struct kvs_rec_step); break;
    case KVS_REC_QUALITY: size = base + sizeof(struct kvs_rec_quality); break;
    case KVS_REC_KERNEL: size = base + sizeof(struct kvs_rec_kernel); break;
    case KVS_REC_END: size = base + sizeof(struct kvs_rec_end); break;
    case KVS_REC_LOG: size = base + sizeof(struct kvs_rec_log); break;
    case KVS_REC_MATRIX:
        if (matrix_floats > (1u << 24)) return NULL;
        size = base + sizeof(struct kvs_rec_matrix) + (size_t)matrix_floats * sizeof(float);
        break;
    default: return NULL;
    }
    if (size < sizeof(struct kvs_record) && type != KVS_REC_MATRIX) size = sizeof(struct kvs_record);
    struct kvs_record *r = calloc(1, size);
    if (!r) return NULL;
    r->type = type;
    r->bytes = (uint32_t)size;
    r->refs = 1;
    return r;
}

struct kvs_record *kvs_record_clone(const struct kvs_record *r)
{
    if (!r) return NULL;
    struct kvs_record *c = malloc(r->bytes);
    if (!c) return NULL;
    memcpy(c, r, r->bytes);
    c->refs = 1;
    return c;
}

struct kvs_record *kvs_record_ref(struct kvs_record *r)
{
    if (r) __atomic_add_fetch(&r->refs, 1, __ATOMIC_RELAXED);
    return r;
}

void kvs_record_unref(struct kvs_record *r)
{
    if (r && __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0) free(r);
}
