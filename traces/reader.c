/* Trace reader: validates the header and every chunk before trusting it (lengths bounded by the
 * file size, CRCs, inflated sizes), refuses newer incompatible formats, skips unknown chunk and
 * record types, uses the footer index when the file was closed cleanly and otherwise keeps the
 * longest valid prefix; iterates records in order and seeks through keyframes.
 * Depends on libc and zlib (via codec.c); reads a file with pread or a caller's memory buffer. */
#include "trace_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

struct kvs_trace {
    char name[PATH_MAX];
    int fd;                 /* -1 for a memory trace */
    const uint8_t *mem;
    uint64_t size;
    unsigned flags;
    struct kvs_trace_info info;
    char note[320];
    char err[512];

    char *meta_buf;
    char **meta_key, **meta_val;
    size_t n_meta;

    struct kvt_index_entry *kf; /* keyframe intervals; kf[0] starts at the first chunk, step 0 */
    size_t n_kf;
    uint64_t end;               /* chunks are read in [header_bytes, end) */

    /* cursor */
    uint64_t cur_off;           /* next chunk to load */
    uint8_t *raw;               /* payload of the chunk being read */
    uint32_t raw_len, raw_pos;
    uint64_t raw_off;           /* its file offset */
    bool raw_keyframe;
    bool want_keyframe;         /* after a seek: deliver the keyframe chunk at cur_off */
    uint64_t next_step;
};

__attribute__((format(printf, 3, 4)))
static void terr(struct kvs_trace *t, uint64_t off, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    kvs_seterr(t->err, sizeof t->err, "%s: offset %llu: %s", t->name, (unsigned long long)off, msg);
}

static bool read_at(struct kvs_trace *t, uint64_t off, void *buf, size_t n)
{
    if (off > t->size || n > t->size - off) {
        terr(t, off, "read of %zu bytes past the end of the file (%llu bytes)", n, (unsigned long long)t->size);
        return false;
    }
    if (t->mem) {
        memcpy(buf, t->mem + off, n);
        return true;
    }
    uint8_t *p = buf;
    while (n) {
        ssize_t k = pread(t->fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            terr(t, off, "read failed: %s", k < 0 ? strerror(errno) : "file shrank");
            return false;
        }
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return true;
}

/* Reads and checks the chunk header at OFF and that its payload fits before LIMIT. */
static bool load_hdr(struct kvs_trace *t, uint64_t off, uint64_t limit, struct kvt_chunk_hdr *h)
{
    uint8_t b[KVT_CHUNK_HDR];
    char why[200];
    if (limit < off || limit - off < KVT_CHUNK_HDR) {
        terr(t, off, "chunk header cut: %llu of %u bytes left", (unsigned long long)(limit > off ? limit - off : 0),
             KVT_CHUNK_HDR);
        return false;
    }
    if (!read_at(t, off, b, sizeof b)) return false;
    if (!kvt_chunk_hdr_decode(b, h, why, sizeof why)) {
        terr(t, off, "%s", why);
        return false;
    }
    if (h->comp_len > limit - off - KVT_CHUNK_HDR) {
        terr(t, off, "chunk payload cut: needs %u bytes, %llu left", h->comp_len,
             (unsigned long long)(limit - off - KVT_CHUNK_HDR));
        return false;
    }
    return true;
}

/* Reads, checks and inflates the payload of the chunk at OFF with header H (*raw malloc'd). */
static bool load_payload(struct kvs_trace *t, uint64_t off, const struct kvt_chunk_hdr *h, uint8_t **raw)
{
    *raw = NULL;
    uint8_t *z = malloc(h->comp_len ? h->comp_len : 1);
    if (!z) { terr(t, off, "out of memory for a %u-byte chunk", h->comp_len); return false; }
    if (!read_at(t, off + KVT_CHUNK_HDR, z, h->comp_len)) { free(z); return false; }
    char why[200];
    enum kvs_status st = kvt_chunk_unpack(h, z, raw, why, sizeof why);
    free(z);
    if (st != KVS_OK) { terr(t, off, "%s", why); return false; }
    return true;
}

/* Decodes every record of a data or keyframe payload; counts steps and records. */
static bool check_records(struct kvs_trace *t, uint64_t off, const struct kvt_chunk_hdr *h, const uint8_t *raw)
{
    uint32_t pos = 0, n_steps = 0, n_rec = 0;
    while (pos < h->raw_len) {
        size_t used;
        struct kvs_record *r;
        char why[200];
        if (kvt_record_decode(raw + pos, h->raw_len - pos, &used, &r, why, sizeof why) != KVS_OK) {
            terr(t, off, "record %u at payload byte %u: %s", n_rec, pos, why);
            return false;
        }
        if (r && r->type == KVS_REC_STEP) n_steps++;
        kvs_record_unref(r);
        n_rec++;
        pos += (uint32_t)used;
    }
    if (n_steps != h->n_steps || n_rec != h->n_records) {
        terr(t, off, "chunk holds %u records and %u steps, its header says %u and %u", n_rec, n_steps,
             h->n_records, h->n_steps);
        return false;
    }
    return true;
}

static bool push_kf(struct kvs_trace *t, size_t *cap, const struct kvt_index_entry *e)
{
    if (t->n_kf == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        struct kvt_index_entry *p = realloc(t->kf, nc * sizeof *p);
        if (!p) return false;
        t->kf = p;
        *cap = nc;
    }
    t->kf[t->n_kf++] = *e;
    return true;
}

struct footer {
    uint64_t n_steps, n_records, dropped, n_chunks, raw, comp;
    uint32_t n;
    struct kvt_index_entry *ent;
};

/* Parses and checks a footer payload against the file: entries in step and offset order, each
 * interval ending where the next begins, offsets inside the chunk area. */
static bool parse_footer(struct kvs_trace *t, uint64_t off, const uint8_t *p, uint32_t len, struct footer *f)
{
    memset(f, 0, sizeof *f);
    if (len < KVT_FOOTER_FIXED) { terr(t, off, "footer of %u bytes is shorter than %u", len, KVT_FOOTER_FIXED); return false; }
    f->n_steps = kvt_get64(p);
    f->n_records = kvt_get64(p + 8);
    f->dropped = kvt_get64(p + 16);
    f->n_chunks = kvt_get64(p + 24);
    f->raw = kvt_get64(p + 32);
    f->comp = kvt_get64(p + 40);
    f->n = kvt_get32(p + 48);
    if (f->n == 0 || f->n > (len - KVT_FOOTER_FIXED) / KVT_INDEX_ENTRY_BYTES) {
        terr(t, off, "footer index of %u entries does not fit its %u bytes", f->n, len);
        return false;
    }
    f->ent = malloc((size_t)f->n * sizeof *f->ent);
    if (!f->ent) { terr(t, off, "out of memory for the footer index"); return false; }
    uint64_t next_step = 0, prev_off = 0;
    for (uint32_t i = 0; i < f->n; i++) {
        struct kvt_index_entry *e = &f->ent[i];
        kvt_index_entry_get(p + KVT_FOOTER_FIXED + (size_t)i * KVT_INDEX_ENTRY_BYTES, e);
        bool ok = e->step == next_step && e->offset >= t->info.header_bytes && e->offset <= off &&
                  (i == 0 ? e->offset == t->info.header_bytes : e->offset > prev_off) &&
                  e->n_steps <= f->n_steps - e->step && e->tok_lo <= e->tok_hi;
        if (!ok) {
            terr(t, off, "footer index entry %u (offset %llu, step %llu, %llu steps) is inconsistent", i,
                 (unsigned long long)e->offset, (unsigned long long)e->step, (unsigned long long)e->n_steps);
            free(f->ent);
            f->ent = NULL;
            return false;
        }
        next_step = e->step + e->n_steps;
        prev_off = e->offset;
    }
    if (next_step != f->n_steps) {
        terr(t, off, "footer index covers %llu steps, footer says %llu", (unsigned long long)next_step,
             (unsigned long long)f->n_steps);
        free(f->ent);
        f->ent = NULL;
        return false;
    }
    return true;
}

/* Reads the footer named by the trailer at the end of the file. */
static bool find_footer(struct kvs_trace *t, struct footer *f, uint64_t *foot_off)
{
    uint64_t hb = t->info.header_bytes;
    if (t->size < hb + KVT_CHUNK_HDR + KVT_TRAILER) return false;
    uint8_t tr[KVT_TRAILER];
    if (!read_at(t, t->size - KVT_TRAILER, tr, sizeof tr) || memcmp(tr + 8, KVT_TRAILER_MAGIC, 8) != 0) return false;
    uint64_t off = kvt_get64(tr);
    struct kvt_chunk_hdr h;
    if (off < hb || off > t->size - KVT_TRAILER) return false;
    if (!load_hdr(t, off, t->size - KVT_TRAILER, &h)) return false;
    if (h.type != KVT_CH_FOOTER || off + KVT_CHUNK_HDR + h.comp_len != t->size - KVT_TRAILER) return false;
    uint8_t *raw;
    if (!load_payload(t, off, &h, &raw)) return false;
    bool ok = parse_footer(t, off, raw, h.raw_len, f);
    free(raw);
    if (ok) *foot_off = off;
    return ok;
}

static void use_footer(struct kvs_trace *t, struct footer *f, uint64_t foot_off)
{
    free(t->kf);
    t->kf = f->ent;
    t->n_kf = f->n;
    f->ent = NULL;
    t->end = foot_off;
    t->info.footer = true;
    t->info.recovered = false;
    t->info.valid_bytes = t->size;
    t->info.n_steps = f->n_steps;
    t->info.n_records = f->n_records;
    t->info.dropped = f->dropped;
    t->info.raw_bytes = f->raw;
    t->info.comp_bytes = f->comp;
    t->info.n_keyframes = f->n - 1;
    t->info.n_chunks = f->n_chunks;
    t->note[0] = 0;
}

/* Walks every chunk from the header to LIMIT (the footer, or the end of the file), checking each.
 * Builds the keyframe table and the counts; stops at the first bad chunk, leaving the reason in
 * t->err and the offset in *bad. Returns true when it reached LIMIT (or a footer chunk). */
static bool walk(struct kvs_trace *t, uint64_t limit, uint64_t *bad, struct footer *fscan, uint64_t *fscan_off)
{
    struct kvs_trace_info *in = &t->info;
    size_t cap = 0;
    free(t->kf);
    t->kf = NULL;
    t->n_kf = 0;
    struct kvt_index_entry e0 = { .offset = in->header_bytes };
    if (!push_kf(t, &cap, &e0)) { terr(t, 0, "out of memory"); *bad = in->header_bytes; return false; }
    uint64_t off = in->header_bytes, steps = 0, records = 0;
    bool first_ts = true;
    while (off < limit) {
        struct kvt_chunk_hdr h;
        if (!load_hdr(t, off, limit, &h)) { *bad = off; goto stop; }
        bool need_payload = (t->flags & KVS_TRACE_OPEN_VERIFY) || h.type == KVT_CH_INDEX || h.type == KVT_CH_FOOTER;
        uint8_t *raw = NULL;
        if (need_payload) {
            if (!load_payload(t, off, &h, &raw)) { *bad = off; goto stop; }
        } else {
            /* payload CRC without inflating (inflate happens when the chunk is read) */
            uint8_t *z = malloc(h.comp_len ? h.comp_len : 1);
            if (!z) { terr(t, off, "out of memory"); *bad = off; goto stop; }
            if (!read_at(t, off + KVT_CHUNK_HDR, z, h.comp_len)) { free(z); *bad = off; goto stop; }
            uint32_t crc = kvs_crc32c(0, z, h.comp_len);
            free(z);
            if (crc != h.payload_crc) {
                terr(t, off, "chunk payload CRC mismatch (stored %08x, computed %08x)", h.payload_crc, crc);
                *bad = off;
                goto stop;
            }
        }
        bool ok = true;
        switch (h.type) {
        case KVT_CH_DATA:
            if (h.n_steps && h.first_step != steps) {
                terr(t, off, "data chunk starts at step %llu, expected %llu", (unsigned long long)h.first_step,
                     (unsigned long long)steps);
                ok = false;
            } else if (raw || (t->flags & KVS_TRACE_OPEN_VERIFY)) {
                ok = check_records(t, off, &h, raw);
            }
            if (ok) {
                struct kvt_index_entry *e = &t->kf[t->n_kf - 1];
                if (h.n_steps) {
                    if (e->n_steps == 0 || e->tok_lo == e->tok_hi) { e->tok_lo = h.tok_lo; e->tok_hi = h.tok_hi; }
                    else if (h.tok_lo != h.tok_hi) {
                        e->tok_lo = KVS_MIN(e->tok_lo, h.tok_lo);
                        e->tok_hi = KVS_MAX(e->tok_hi, h.tok_hi);
                    }
                }
                e->n_steps += h.n_steps;
                steps += h.n_steps;
                records += h.n_records;
                in->n_data_chunks++;
                in->raw_bytes += h.raw_len;
                in->comp_bytes += h.comp_len;
                if (h.n_records) {
                    if (first_ts) { in->first_ts = h.first_ts; first_ts = false; }
                    in->last_ts = h.last_ts;
                }
            }
            break;
        case KVT_CH_KEYFRAME:
            if (h.first_step != steps || steps == 0) {
                terr(t, off, "keyframe for step %llu where step %llu was expected", (unsigned long long)h.first_step,
                     (unsigned long long)steps);
                ok = false;
            } else if (raw) {
                ok = check_records(t, off, &h, raw);
            }
            if (ok) {
                struct kvt_index_entry e = { .offset = off, .step = steps, .ts = h.first_ts };
                if (!push_kf(t, &cap, &e)) { terr(t, off, "out of memory"); ok = false; }
                in->n_keyframes++;
            }
            break;
        case KVT_CH_INDEX:
            if (h.raw_len < KVT_INDEX_FIXED ||
                (h.raw_len - KVT_INDEX_FIXED) / KVT_INDEX_ENTRY_BYTES < kvt_get32(raw + 16) ||
                (h.raw_len - KVT_INDEX_FIXED) % KVT_INDEX_ENTRY_BYTES) {
                terr(t, off, "index chunk of %u bytes is malformed", h.raw_len);
                ok = false;
            } else {
                in->dropped = KVS_MAX(in->dropped, kvt_get64(raw));
                in->n_index_chunks++;
            }
            break;
        case KVT_CH_FOOTER:
            in->n_steps = steps;
            in->n_records = records;
            in->n_chunks++;
            if (fscan && parse_footer(t, off, raw, h.raw_len, fscan)) {
                *fscan_off = off;
                free(raw);
                return true;
            }
            free(raw);
            *bad = off;
            if (!fscan) terr(t, off, "footer chunk before the end of the file");
            return false;
        default:
            in->n_unknown_chunks++; /* a newer writer's chunk: skipped by its length */
            break;
        }
        free(raw);
        if (!ok) { *bad = off; goto stop; }
        in->n_chunks++;
        off += KVT_CHUNK_HDR + h.comp_len;
    }
    in->n_steps = steps;
    in->n_records = records;
    *bad = off;
    return true;
stop:
    in->n_steps = steps;
    in->n_records = records;
    return false;
}

static enum kvs_status parse_header(struct kvs_trace *t)
{
    struct kvs_trace_info *in = &t->info;
    uint8_t h[KVT_HDR_FIXED];
    if (t->size < 8 || (read_at(t, 0, h, 8) && memcmp(h, KVT_MAGIC, 8) != 0)) {
        terr(t, 0, "not a kvscope trace (no \\x89KVT magic)");
        return KVS_ERR_FORMAT;
    }
    if (t->size < KVT_HDR_FIXED) {
        terr(t, 0, "header cut: the file has %llu bytes, a header needs at least %u",
             (unsigned long long)t->size, KVT_HDR_FIXED + 4);
        return KVS_ERR_FORMAT;
    }
    if (!read_at(t, 0, h, sizeof h)) return KVS_ERR_IO;
    in->major = kvt_get16(h + 8);
    in->minor = kvt_get16(h + 10);
    if (in->major != KVS_TRACE_MAJOR) {
        terr(t, 8, "trace format %u.%u is %s this kvscope (%s) reads (%u.x)%s", in->major, in->minor,
             in->major > KVS_TRACE_MAJOR ? "newer than what" : "not what", KVS_VERSION, KVS_TRACE_MAJOR,
             in->major > KVS_TRACE_MAJOR ? "; a newer kvscope is needed" : "");
        return KVS_ERR_UNSUPPORTED;
    }
    uint32_t hlen = kvt_get32(h + 12), mlen = kvt_get32(h + 60);
    if (hlen < KVT_HDR_FIXED + 4 || hlen > KVT_HDR_FIXED + KVT_META_MAX + 4096 || mlen > hlen - KVT_HDR_FIXED - 4) {
        terr(t, 12, "header length %u with a %u-byte metadata block is out of bounds", hlen, mlen);
        return KVS_ERR_FORMAT;
    }
    if (hlen > t->size) {
        terr(t, 12, "header cut: it needs %u bytes, the file has %llu", hlen, (unsigned long long)t->size);
        return KVS_ERR_FORMAT;
    }
    uint8_t *all = malloc(hlen);
    if (!all) { terr(t, 0, "out of memory"); return KVS_ERR_NOMEM; }
    if (!read_at(t, 0, all, hlen)) { free(all); return KVS_ERR_IO; }
    uint32_t stored = kvt_get32(all + hlen - 4), crc = kvs_crc32c(0, all, hlen - 4);
    if (stored != crc) {
        free(all);
        terr(t, hlen - 4, "header CRC mismatch (stored %08x, computed %08x)", stored, crc);
        return KVS_ERR_FORMAT;
    }
    in->incompat = kvt_get64(h + 16);
    in->compat = kvt_get64(h + 24);
    if (in->incompat & ~KVT_INCOMPAT_KNOWN) {
        free(all);
        terr(t, 16, "the trace uses incompatible features 0x%llx this kvscope (%s) does not know; a newer "
             "kvscope is needed", (unsigned long long)(in->incompat & ~KVT_INCOMPAT_KNOWN), KVS_VERSION);
        return KVS_ERR_UNSUPPORTED;
    }
    in->clock_id = kvt_get32(h + 32);
    in->tick_ns = kvt_get32(h + 36);
    in->origin_unix_ns = kvt_get64(h + 40);
    in->origin_mono_ns = kvt_get64(h + 48);
    in->keyframe_every = kvt_get32(h + 56);
    in->header_bytes = hlen;

    /* metadata: "key=value\n" lines */
    t->meta_buf = malloc((size_t)mlen + 1);
    if (!t->meta_buf) { free(all); terr(t, 0, "out of memory"); return KVS_ERR_NOMEM; }
    memcpy(t->meta_buf, all + KVT_HDR_FIXED, mlen);
    t->meta_buf[mlen] = 0;
    free(all);
    size_t lines = 0;
    for (uint32_t i = 0; i < mlen; i++) {
        if (t->meta_buf[i] == '\n') lines++;
        else if (t->meta_buf[i] == 0) { terr(t, KVT_HDR_FIXED + i, "NUL byte in the metadata"); return KVS_ERR_FORMAT; }
    }
    if (mlen && t->meta_buf[mlen - 1] != '\n') {
        terr(t, KVT_HDR_FIXED + mlen - 1, "metadata does not end with a newline");
        return KVS_ERR_FORMAT;
    }
    t->meta_key = calloc(lines + 1, sizeof(char *));
    t->meta_val = calloc(lines + 1, sizeof(char *));
    if (!t->meta_key || !t->meta_val) { terr(t, 0, "out of memory"); return KVS_ERR_NOMEM; }
    char *p = t->meta_buf;
    while (*p) {
        char *nl = strchr(p, '\n'), *eq = memchr(p, '=', (size_t)(nl - p));
        if (!eq || eq == p) {
            terr(t, KVT_HDR_FIXED + (uint64_t)(p - t->meta_buf), "metadata line without a key=value pair");
            return KVS_ERR_FORMAT;
        }
        *eq = 0;
        *nl = 0;
        t->meta_key[t->n_meta] = p;
        t->meta_val[t->n_meta] = eq + 1;
        t->n_meta++;
        p = nl + 1;
    }
    return KVS_OK;
}

static enum kvs_status open_common(struct kvs_trace *t)
{
    enum kvs_status st = parse_header(t);
    if (st != KVS_OK) return st;
    struct kvs_trace_info *in = &t->info;
    in->file_bytes = t->size;
    struct footer f = {0};
    uint64_t foot_off = 0, bad = 0;
    char footer_why[512] = "";
    bool have_footer = find_footer(t, &f, &foot_off);
    if (!have_footer && t->err[0]) kvs_seterr(footer_why, sizeof footer_why, "%s", t->err);
    t->err[0] = 0;
    if (have_footer && (t->flags & KVS_TRACE_OPEN_FAST) && !(t->flags & KVS_TRACE_OPEN_VERIFY)) {
        use_footer(t, &f, foot_off);
        goto done;
    }
    struct footer fs = {0};
    uint64_t fs_off = 0;
    bool reached = walk(t, have_footer ? foot_off : t->size, &bad, have_footer ? NULL : &fs, &fs_off);
    if (reached && have_footer) {
        if (in->n_steps == f.n_steps) {
            use_footer(t, &f, foot_off);
            goto done;
        }
        terr(t, foot_off, "footer index says %llu steps, the chunks hold %llu", (unsigned long long)f.n_steps,
             (unsigned long long)in->n_steps);
        bad = foot_off;
        reached = false;
    } else if (reached && fs.ent) {
        /* a footer found by scanning (its trailer was cut or damaged) */
        uint64_t tail = fs_off;
        if (fs.n_steps == in->n_steps) {
            use_footer(t, &fs, fs_off);
            free(f.ent);
            /* what follows the footer chunk is not part of the trace */
            struct kvt_chunk_hdr h;
            if (load_hdr(t, tail, t->size, &h)) t->info.valid_bytes = tail + KVT_CHUNK_HDR + h.comp_len;
            t->err[0] = 0;
            goto done;
        }
        free(fs.ent);
        terr(t, fs_off, "footer index says %llu steps, the chunks hold %llu", (unsigned long long)fs.n_steps,
             (unsigned long long)in->n_steps);
        bad = fs_off;
        reached = false;
    }
    free(f.ent);
    /* no usable footer: keep the longest valid prefix */
    t->end = bad;
    in->valid_bytes = bad;
    in->recovered = true;
    in->tail_offset = bad;
    if (reached) {
        kvs_seterr(in->tail_reason, sizeof in->tail_reason, "%s", footer_why[0] ? footer_why :
                 "no footer: the writer did not finish the file");
    } else {
        /* t->err is "NAME: offset X: reason"; keep the reason */
        const char *r = strstr(t->err, ": offset ");
        r = r ? strchr(r + 9, ':') : NULL;
        kvs_seterr(in->tail_reason, sizeof in->tail_reason, "%s", r ? r + 2 : t->err);
    }
    kvs_seterr(t->note, sizeof t->note, "recovered %llu steps; tail lost at offset %llu (%s)",
             (unsigned long long)in->n_steps, (unsigned long long)bad, in->tail_reason);
    t->err[0] = 0;
done:
    {
        bool any = false;
        for (size_t i = 0; i < t->n_kf; i++) {
            const struct kvt_index_entry *e = &t->kf[i];
            if (e->tok_lo == e->tok_hi) continue;
            if (!any) { in->tok_lo = e->tok_lo; in->tok_hi = e->tok_hi; any = true; }
            in->tok_lo = KVS_MIN(in->tok_lo, e->tok_lo);
            in->tok_hi = KVS_MAX(in->tok_hi, e->tok_hi);
        }
    }
    t->cur_off = in->header_bytes;
    t->next_step = 0;
    return KVS_OK;
}

static struct kvs_trace *trace_alloc(const char *name, unsigned flags)
{
    struct kvs_trace *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    snprintf(t->name, sizeof t->name, "%s", name ? name : "(memory)");
    t->fd = -1;
    t->flags = flags;
    return t;
}

static enum kvs_status finish_open(struct kvs_trace **out, struct kvs_trace *t, char *err, size_t errlen)
{
    enum kvs_status st = open_common(t);
    if (st != KVS_OK) {
        kvs_seterr(err, errlen, "%s", t->err);
        kvs_trace_close(t);
        return st;
    }
    *out = t;
    return KVS_OK;
}

enum kvs_status kvs_trace_open(struct kvs_trace **out, const char *path, unsigned flags, char *err, size_t errlen)
{
    *out = NULL;
    struct kvs_trace *t = trace_alloc(path, flags);
    if (!t) { kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
    /* a FIFO or device is refused before it can block the open */
    t->fd = kvs_open_regular(path, err, errlen);
    if (t->fd < 0) {
        kvs_trace_close(t);
        return KVS_ERR_IO;
    }
    struct stat sb;
    if (fstat(t->fd, &sb) != 0) {
        kvs_seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno));
        kvs_trace_close(t);
        return KVS_ERR_IO;
    }
    t->size = (uint64_t)sb.st_size;
    return finish_open(out, t, err, errlen);
}

enum kvs_status kvs_trace_open_mem(struct kvs_trace **out, const void *data, size_t len, const char *name,
                                   unsigned flags, char *err, size_t errlen)
{
    *out = NULL;
    struct kvs_trace *t = trace_alloc(name, flags);
    if (!t) { kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
    static const uint8_t empty[1];
    t->mem = data ? data : empty;
    t->size = data ? len : 0;
    return finish_open(out, t, err, errlen);
}

void kvs_trace_close(struct kvs_trace *t)
{
    if (!t) return;
    if (t->fd >= 0) close(t->fd);
    free(t->raw);
    free(t->kf);
    free(t->meta_buf);
    free(t->meta_key);
    free(t->meta_val);
    free(t);
}

const char *kvs_trace_error(const struct kvs_trace *t) { return t->err; }
const struct kvs_trace_info *kvs_trace_get_info(const struct kvs_trace *t) { return &t->info; }
const char *kvs_trace_note(const struct kvs_trace *t) { return t->note[0] ? t->note : NULL; }
uint64_t kvs_trace_n_steps(const struct kvs_trace *t) { return t->info.n_steps; }
size_t kvs_trace_meta_count(const struct kvs_trace *t) { return t->n_meta; }
const char *kvs_trace_meta_key(const struct kvs_trace *t, size_t i) { return i < t->n_meta ? t->meta_key[i] : NULL; }
const char *kvs_trace_meta_value(const struct kvs_trace *t, size_t i) { return i < t->n_meta ? t->meta_val[i] : NULL; }
const char *kvs_trace_meta_get(const struct kvs_trace *t, const char *key)
{
    for (size_t i = 0; i < t->n_meta; i++)
        if (!strcmp(t->meta_key[i], key)) return t->meta_val[i];
    return NULL;
}

static void drop_chunk(struct kvs_trace *t)
{
    free(t->raw);
    t->raw = NULL;
    t->raw_len = t->raw_pos = 0;
    t->raw_keyframe = false;
}

enum kvs_status kvs_trace_next(struct kvs_trace *t, struct kvs_record **rec, struct kvs_trace_where *where)
{
    *rec = NULL;
    for (;;) {
        if (t->raw && t->raw_pos < t->raw_len) {
            size_t used;
            struct kvs_record *r;
            char why[200];
            enum kvs_status st = kvt_record_decode(t->raw + t->raw_pos, t->raw_len - t->raw_pos, &used, &r, why,
                                                   sizeof why);
            if (st != KVS_OK) {
                terr(t, t->raw_off, "record at payload byte %u: %s", t->raw_pos, why);
                drop_chunk(t);
                return st;
            }
            t->raw_pos += (uint32_t)used;
            if (!r) continue; /* unknown record type */
            if (where) {
                where->chunk_offset = t->raw_off;
                where->keyframe = t->raw_keyframe;
                where->step = t->next_step;
            }
            if (r->type == KVS_REC_STEP && !t->raw_keyframe) t->next_step++;
            *rec = r;
            return KVS_OK;
        }
        drop_chunk(t);
        if (t->cur_off >= t->end) return KVS_OK;
        struct kvt_chunk_hdr h;
        uint64_t off = t->cur_off;
        if (!load_hdr(t, off, t->end, &h)) return KVS_ERR_FORMAT;
        bool want_kf = t->want_keyframe;
        t->want_keyframe = false;
        bool read = h.type == KVT_CH_DATA || (h.type == KVT_CH_KEYFRAME && want_kf);
        if (read) {
            uint8_t *raw;
            if (!load_payload(t, off, &h, &raw)) return KVS_ERR_FORMAT;
            t->raw = raw;
            t->raw_len = h.raw_len;
            t->raw_pos = 0;
            t->raw_off = off;
            t->raw_keyframe = h.type == KVT_CH_KEYFRAME;
            if (h.type == KVT_CH_DATA && h.n_steps) t->next_step = h.first_step;
        }
        t->cur_off = off + KVT_CHUNK_HDR + h.comp_len;
    }
}

enum kvs_status kvs_trace_rewind(struct kvs_trace *t)
{
    drop_chunk(t);
    t->cur_off = t->info.header_bytes;
    t->next_step = 0;
    t->want_keyframe = false;
    t->err[0] = 0;
    return KVS_OK;
}

/* Index of the keyframe interval holding trace step S. */
static size_t kf_find(const struct kvs_trace *t, uint64_t s)
{
    size_t lo = 0, hi = t->n_kf;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->kf[mid].step <= s) lo = mid;
        else hi = mid;
    }
    return lo;
}

static void seek_kf(struct kvs_trace *t, size_t i)
{
    drop_chunk(t);
    t->cur_off = t->kf[i].offset;
    t->next_step = t->kf[i].step;
    t->want_keyframe = i > 0;
    t->err[0] = 0;
}

enum kvs_status kvs_trace_seek_step(struct kvs_trace *t, uint64_t step, uint64_t *kf_step)
{
    if (t->n_kf == 0 || t->info.n_steps == 0) {
        kvs_trace_rewind(t);
        if (kf_step) *kf_step = 0;
        return KVS_OK;
    }
    if (step >= t->info.n_steps) step = t->info.n_steps - 1;
    size_t i = kf_find(t, step);
    seek_kf(t, i);
    if (kf_step) *kf_step = t->kf[i].step;
    return KVS_OK;
}

enum kvs_status kvs_trace_seek_token(struct kvs_trace *t, uint32_t token, uint64_t *step_out, uint64_t *kf_step)
{
    for (size_t i = 0; i < t->n_kf; i++) {
        const struct kvt_index_entry *e = &t->kf[i];
        if (e->n_steps == 0 || token < e->tok_lo || token >= e->tok_hi) continue;
        seek_kf(t, i);
        struct kvs_record *r;
        struct kvs_trace_where wh;
        uint64_t last = e->step + e->n_steps;
        enum kvs_status st;
        while ((st = kvs_trace_next(t, &r, &wh)) == KVS_OK && r) {
            bool step_rec = r->type == KVS_REC_STEP && !wh.keyframe;
            bool hit = false;
            if (step_rec) {
                const struct kvs_rec_step *s = &r->u.step;
                uint32_t a = s->n_new <= s->n_ctx ? s->n_ctx - s->n_new : 0;
                hit = s->n_new && token >= a && token < s->n_ctx;
            }
            kvs_record_unref(r);
            if (hit) {
                seek_kf(t, i);
                if (step_out) *step_out = wh.step;
                if (kf_step) *kf_step = e->step;
                return KVS_OK;
            }
            if (step_rec && wh.step + 1 >= last) break;
        }
        if (st != KVS_OK) return st;
    }
    kvs_seterr(t->err, sizeof t->err, "%s: no step holds token %u (tokens %u..%u)", t->name, token,
               t->info.tok_lo, t->info.tok_hi);
    return KVS_ERR_ARG;
}

const struct kvt_index_entry *kvt_trace_index(const struct kvs_trace *t, size_t *n, uint64_t *end)
{
    *n = t->n_kf;
    *end = t->end;
    return t->kf;
}

bool kvt_trace_read(struct kvs_trace *t, uint64_t off, void *buf, size_t n) { return read_at(t, off, buf, n); }
