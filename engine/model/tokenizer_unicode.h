/* Private to the tokenizer: Unicode code point classes (letters, numbers, White_Space) that the
 * byte-level BPE pre-tokenizer regexes need. The table lives in tokenizer_unicode.c, generated
 * by tests/ref/gen_unicode.py. Depends on <stdint.h> only. */
#ifndef KVS_TOKENIZER_UNICODE_H
#define KVS_TOKENIZER_UNICODE_H

#include <stdint.h>

enum { KVS_UC_L = 1, KVS_UC_N = 2, KVS_UC_S = 4 };

struct kvs_unicode_range {
    uint32_t lo, hi; /* inclusive code point range */
    uint32_t flags;  /* one of KVS_UC_* */
};

extern const char kvs_unicode_version[];
extern const struct kvs_unicode_range kvs_unicode_ranges[];
extern const uint32_t kvs_unicode_n_ranges;

#endif
