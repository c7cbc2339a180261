/* Internals shared by the trace library's files: on-disk constants and layouts, little-endian
 * byte helpers, a growable byte buffer, record (de)serialization, chunk (de)coding and the index.
 * Not for use outside traces/ (tests/test_traces.c builds files byte by byte from the man page). */
#ifndef KVS_TRACE_INT_H
#define KVS_TRACE_INT_H

#include <string.h>

#include "trace.h"

/* ---- file layout (man/kvscope-trace.5) ---- */
#define KVT_MAGIC "\x89KVT\r\n\x1a\n"
#define KVT_HDR_FIXED 64u          /* fixed header before the metadata block */
#define KVT_META_MAX 65536u        /* metadata block bound */
#define KVT_CHUNK_HDR 72u
#define KVT_SYNC 0xB743564Bu       /* bytes "KVC\xb7" */
#define KVT_TRAILER 16u
#define KVT_TRAILER_MAGIC "KVTEND\r\n"
#define KVT_RAW_MAX (64u << 20)    /* uncompressed payload bound */
#define KVT_ZLIB_RATIO 1032u       /* deflate cannot expand better than ~1032:1 */
#define KVT_INCOMPAT_KNOWN 0ull    /* incompatible features this version understands */
#define KVT_CLOCK_MONOTONIC 1u
#define KVT_NO_STEP UINT64_MAX

enum kvt_chunk_type { KVT_CH_DATA = 1, KVT_CH_KEYFRAME = 2, KVT_CH_INDEX = 3, KVT_CH_FOOTER = 4 };
enum kvt_codec { KVT_CODEC_NONE = 0, KVT_CODEC_ZLIB = 1 };

struct kvt_chunk_hdr {
    uint32_t sync;
    uint8_t type, codec;
    uint16_t flags;
    uint32_t comp_len, raw_len;
    uint64_t seq;
    uint64_t first_ts, last_ts;
    uint64_t first_step;   /* data: trace step of its first STEP (KVT_NO_STEP: none); keyframe: the
                            * step it precedes */
    uint32_t n_steps, n_records;
    uint32_t tok_lo, tok_hi;
    uint32_t payload_crc, header_crc;
};

/* One keyframe interval of the index: replaying from OFFSET (a keyframe chunk, or the first chunk
 * for the interval at step 0) reaches steps [step, step + n_steps). */
struct kvt_index_entry {
    uint64_t offset, step, n_steps, ts;
    uint32_t tok_lo, tok_hi;
};
#define KVT_INDEX_ENTRY_BYTES 40u

/* ---- little-endian helpers ---- */
static inline void kvt_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void kvt_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void kvt_put64(uint8_t *p, uint64_t v) { kvt_put32(p, (uint32_t)v); kvt_put32(p + 4, (uint32_t)(v >> 32)); }
static inline uint16_t kvt_get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t kvt_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t kvt_get64(const uint8_t *p) { return kvt_get32(p) | ((uint64_t)kvt_get32(p + 4) << 32); }
static inline uint32_t kvt_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float kvt_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---- growable buffer (writes) ---- */
struct kvt_buf {
    uint8_t *p;
    size_t len, cap;
    bool oom;   /* sticky: an append failed */
};
void kvt_buf_free(struct kvt_buf *b);
/* Reserves N more bytes and returns where to write them (NULL and b->oom on failure). */
uint8_t *kvt_buf_grow(struct kvt_buf *b, size_t n);
void kvt_buf_u8(struct kvt_buf *b, uint8_t v);
void kvt_buf_u16(struct kvt_buf *b, uint16_t v);
void kvt_buf_u32(struct kvt_buf *b, uint32_t v);
void kvt_buf_u64(struct kvt_buf *b, uint64_t v);
void kvt_buf_f32(struct kvt_buf *b, float v);
void kvt_buf_bytes(struct kvt_buf *b, const void *p, size_t n);

/* ---- records in a chunk payload: u16 type, u16 flags, u32 body length, body ---- */
#define KVT_REC_HDR 8u

/* Appends R's framing and body. Returns false on OOM. */
bool kvt_record_encode(struct kvt_buf *b, const struct kvs_record *r);

/* Decodes the record at P (AVAIL bytes left in the payload). On success *used is the bytes taken
 * and *out the record (NULL for an unknown type, skipped by length). KVS_ERR_FORMAT with a message
 * in ERR (relative to the record start) when the framing or body is malformed. */
enum kvs_status kvt_record_decode(const uint8_t *p, size_t avail, size_t *used, struct kvs_record **out,
                                  char *err, size_t errlen);

/* ---- chunks ---- */
void kvt_chunk_hdr_encode(uint8_t out[KVT_CHUNK_HDR], struct kvt_chunk_hdr *h); /* sets header_crc */
/* Decodes and checks sync word and header CRC; message in ERR on failure. */
bool kvt_chunk_hdr_decode(const uint8_t in[KVT_CHUNK_HDR], struct kvt_chunk_hdr *h, char *err, size_t errlen);

/* Compresses RAW (LEN bytes) with LEVEL into *out (malloc'd), falling back to codec NONE when zlib
 * does not shrink it; fills h->codec, comp_len, raw_len, payload_crc. */
enum kvs_status kvt_chunk_pack(const uint8_t *raw, size_t len, int level, struct kvt_chunk_hdr *h,
                               uint8_t **out);
/* Checks the payload CRC and inflates into a malloc'd buffer of exactly h->raw_len bytes (*out;
 * NULL when raw_len is 0). Message in ERR on failure. */
enum kvs_status kvt_chunk_unpack(const struct kvt_chunk_hdr *h, const uint8_t *payload, uint8_t **out,
                                 char *err, size_t errlen);

/* ---- index and footer payloads ---- */
void kvt_index_entry_put(struct kvt_buf *b, const struct kvt_index_entry *e);
void kvt_index_entry_get(const uint8_t *p, struct kvt_index_entry *e);
#define KVT_INDEX_FIXED 20u   /* u64 dropped, u64 steps, u32 n */
#define KVT_FOOTER_FIXED 52u  /* u64 steps, records, dropped, chunks, raw, comp; u32 n */
struct kvt_footer_vals {
    uint64_t n_steps, n_records, dropped, n_chunks, raw_bytes, comp_bytes;
};
/* Footer payload: the fixed fields then N entries. */
void kvt_footer_put(struct kvt_buf *b, const struct kvt_footer_vals *v, const struct kvt_index_entry *e, size_t n);
/* Trailer after the footer chunk: u64 footer offset, 8-byte magic. */
void kvt_trailer_put(uint8_t out[KVT_TRAILER], uint64_t footer_off);

/* ---- reader internals used by recovery ---- */
/* The keyframe table (N entries) and the end of the valid chunks (the footer offset when clean). */
const struct kvt_index_entry *kvt_trace_index(const struct kvs_trace *t, size_t *n, uint64_t *end);
bool kvt_trace_read(struct kvs_trace *t, uint64_t off, void *buf, size_t n);

/* Renames TMP to PATH: over an existing regular file only with REPLACE, never over anything else
 * (see kvs_trace_target_check); without REPLACE atomically refuses a PATH that exists. */
enum kvs_status kvt_publish(const char *tmp, const char *path, bool replace, char *err, size_t errlen);

#endif
