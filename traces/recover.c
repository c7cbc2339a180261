/* Trace recovery: rewrites the longest valid prefix of a trace (e.g. a NAME.part left by a killed
 * recorder) as a clean file: the header and every good chunk copied verbatim, then a fresh footer
 * index and trailer; written to a temporary file beside OUT, fsynced and renamed. Depends on libc and zlib. */
#include "trace_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static bool put_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

enum kvs_status kvs_trace_recover(const char *in, const char *out, bool replace, struct kvs_trace_recover_report *rep,
                                  char *err, size_t errlen)
{
    struct kvs_trace_recover_report tmp;
    if (!rep) rep = &tmp;
    memset(rep, 0, sizeof *rep);
    struct kvs_trace *t;
    /* refuse a target we may not write before reading anything */
    enum kvs_status st = kvs_trace_target_check(out, replace, err, errlen);
    if (st != KVS_OK) return st;
    st = kvs_trace_open(&t, in, KVS_TRACE_OPEN_VERIFY, err, errlen);
    if (st != KVS_OK) return st;
    const struct kvs_trace_info *info = kvs_trace_get_info(t);
    size_t n_ent;
    uint64_t end;
    const struct kvt_index_entry *ent = kvt_trace_index(t, &n_ent, &end);
    rep->n_steps = info->n_steps;
    rep->bytes_in = info->file_bytes;
    rep->was_clean = info->footer;
    rep->n_chunks = info->n_chunks; /* chunks before the footer */
    snprintf(rep->note, sizeof rep->note, "%s", kvs_trace_note(t) ? kvs_trace_note(t) : "the trace was already clean");

    /* a fresh temporary name: "OUT.part" would be IN itself in the usual `recover NAME.part NAME` */
    char part[PATH_MAX + 16];
    if (strlen(out) >= PATH_MAX) {
        kvs_trace_close(t);
        kvs_seterr(err, errlen, "%s: path too long", out);
        return KVS_ERR_ARG;
    }
    snprintf(part, sizeof part, "%s.XXXXXX.part", out);
    int fd = mkstemps(part, 5);
    if (fd < 0) {
        kvs_seterr(err, errlen, "%s: cannot create a temporary file beside it: %s", out, strerror(errno));
        kvs_trace_close(t);
        return KVS_ERR_IO;
    }
    fchmod(fd, 0644);
    /* the header and the good chunks, verbatim */
    uint8_t *buf = malloc(1u << 20);
    struct kvt_buf fb = {0};
    st = KVS_ERR_IO;
    if (!buf) { st = KVS_ERR_NOMEM; kvs_seterr(err, errlen, "out of memory"); goto fail; }
    for (uint64_t off = 0; off < end;) {
        size_t n = (size_t)KVS_MIN(end - off, (uint64_t)(1u << 20));
        if (!kvt_trace_read(t, off, buf, n)) { kvs_seterr(err, errlen, "%s", kvs_trace_error(t)); goto fail; }
        if (!put_all(fd, buf, n)) { kvs_seterr(err, errlen, "%s: write failed: %s", part, strerror(errno)); goto fail; }
        off += n;
    }
    /* a fresh footer: the old one (if any) is replaced, so the drop count it held is kept */
    struct kvt_footer_vals v = { info->n_steps, info->n_records, info->dropped, rep->n_chunks, info->raw_bytes,
                                 info->comp_bytes };
    kvt_footer_put(&fb, &v, ent, n_ent);
    if (fb.oom) { st = KVS_ERR_NOMEM; kvs_seterr(err, errlen, "out of memory"); goto fail; }
    struct kvt_chunk_hdr h = { .type = KVT_CH_FOOTER, .first_step = KVT_NO_STEP, .seq = rep->n_chunks };
    h.first_ts = h.last_ts = info->last_ts;
    uint8_t *payload;
    st = kvt_chunk_pack(fb.p, fb.len, 6, &h, &payload);
    if (st != KVS_OK) { kvs_seterr(err, errlen, "out of memory"); goto fail; }
    h.seq = rep->n_chunks;
    uint8_t hdr[KVT_CHUNK_HDR], tr[KVT_TRAILER];
    kvt_chunk_hdr_encode(hdr, &h);
    kvt_trailer_put(tr, end);
    bool ok = put_all(fd, hdr, sizeof hdr) && put_all(fd, payload, h.comp_len) && put_all(fd, tr, sizeof tr);
    free(payload);
    st = KVS_ERR_IO;
    if (!ok) { kvs_seterr(err, errlen, "%s: write failed: %s", part, strerror(errno)); goto fail; }
    if (fsync(fd) != 0) { kvs_seterr(err, errlen, "%s: fsync failed: %s", part, strerror(errno)); goto fail; }
    if (close(fd) != 0) { fd = -1; kvs_seterr(err, errlen, "%s: close failed: %s", part, strerror(errno)); goto fail; }
    fd = -1;
    st = kvt_publish(part, out, replace, err, errlen);
    if (st != KVS_OK) goto fail;
    rep->bytes_kept = end + KVT_CHUNK_HDR + h.comp_len + KVT_TRAILER;
    free(buf);
    kvt_buf_free(&fb);
    kvs_trace_close(t);
    return KVS_OK;
fail:
    if (fd >= 0) close(fd);
    unlink(part);
    free(buf);
    kvt_buf_free(&fb);
    kvs_trace_close(t);
    return st;
}
