/* Trace writer: header, then append-only chunks written by a thread of its own from a bounded
 * queue (a full queue drops and counts; the producer never waits on the disk), keyframes every K
 * steps, index chunks along the way, a footer index on close, NAME.part renamed to NAME at the
 * end (never over a device or FIFO, over an existing file only when asked). Never rewrites earlier
 * bytes. A data chunk goes out with write(2) (page cache, no fsync) once it holds flush_steps
 * steps or its oldest record is flush_ms old, which bounds what a killed process loses.
 * Depends on libc, pthreads, zlib (via codec.c). */
#include "trace_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define KF_MAX_MATRIX 256  /* latest matrix per (kind, group) kept for keyframes */
#define KF_MAX_QUALITY 64  /* latest quality record per method */

struct qitem {
    struct kvs_record *rec;
    uint64_t t;            /* push time, ns since the writer's origin */
};

struct kvs_trace_writer {
    char path[PATH_MAX];
    char part[PATH_MAX + 8];
    int fd;
    struct kvs_trace_writer_opts o;
    uint64_t origin_mono;

    /* queue (under mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct qitem *ring;
    uint32_t head, count;
    bool closing, aborting;
    uint32_t unflushed;    /* steps pushed and not yet written: queued + in the open chunk (atomic) */
    uint64_t dropped;      /* atomic */
    pthread_t thread;
    bool thread_started;
    enum kvs_status status; /* first error (under mu) */
    char err[320];

    /* writer thread state */
    uint64_t off;          /* bytes in the file */
    uint64_t header_len;
    struct kvt_buf chunk;  /* records of the data chunk being filled */
    struct kvt_chunk_hdr ch;
    uint64_t chunk_t0;     /* monotonic ns when its first record was pushed */
    uint64_t n_chunks, n_steps, n_records, raw_bytes, comp_bytes;
    struct kvs_record *kf_run;
    struct kvs_record *kf_mat[KF_MAX_MATRIX];
    uint32_t n_kf_mat;
    struct kvs_record *kf_q[KF_MAX_QUALITY];
    uint32_t n_kf_q;
    struct kvt_index_entry *ent;
    size_t n_ent, cap_ent, n_ent_indexed;
    uint32_t kf_since_index;
};

void kvs_trace_writer_opts_default(struct kvs_trace_writer_opts *o)
{
    memset(o, 0, sizeof *o); /* every field a later version adds starts off (replace: false) */
    o->queue_cap = 4096;
    o->keyframe_every = 256;
    o->chunk_bytes = 64u << 10;
    o->flush_ms = 100;
    o->flush_steps = 8;
    o->index_every = 16;
    o->zlevel = 6;
}

/* Records the first error: "PATH.part: <message>". */
__attribute__((format(printf, 3, 4)))
static void fail(struct kvs_trace_writer *w, enum kvs_status st, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&w->mu);
    if (w->status == KVS_OK) {
        w->status = st;
        kvs_seterr(w->err, sizeof w->err, "%s: %s", w->part, msg);
    }
    pthread_mutex_unlock(&w->mu);
}

static bool failed(struct kvs_trace_writer *w)
{
    pthread_mutex_lock(&w->mu);
    bool f = w->status != KVS_OK;
    pthread_mutex_unlock(&w->mu);
    return f;
}

static bool write_all(struct kvs_trace_writer *w, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            fail(w, KVS_ERR_IO, "write at offset %llu failed: %s", (unsigned long long)w->off,
                 k < 0 ? strerror(errno) : "short write");
            return false;
        }
        p += k;
        n -= (size_t)k;
        w->off += (uint64_t)k;
    }
    return true;
}

static uint64_t now_rel(const struct kvs_trace_writer *w) { return kvs_now_ns() - w->origin_mono; }

/* Writes one chunk of TYPE from RAW; fills the header fields it owns. Returns its offset. */
static bool write_chunk(struct kvs_trace_writer *w, struct kvt_chunk_hdr *h, const uint8_t *raw, size_t len,
                        uint64_t *at)
{
    uint8_t *payload = NULL;
    enum kvs_status st = kvt_chunk_pack(raw, len, w->o.zlevel, h, &payload);
    if (st != KVS_OK) {
        fail(w, st, "%s", st == KVS_ERR_NOMEM ? "out of memory compressing a chunk" : "chunk too large");
        return false;
    }
    h->seq = w->n_chunks;
    uint8_t hdr[KVT_CHUNK_HDR];
    kvt_chunk_hdr_encode(hdr, h);
    if (at) *at = w->off;
    bool ok = write_all(w, hdr, sizeof hdr) && write_all(w, payload, h->comp_len);
    if (ok) {
        w->n_chunks++;
        if (h->type == KVT_CH_DATA) {
            w->raw_bytes += len;
            w->comp_bytes += h->comp_len;
        }
    }
    free(payload);
    return ok;
}

static void chunk_reset(struct kvs_trace_writer *w)
{
    w->chunk.len = 0;
    memset(&w->ch, 0, sizeof w->ch);
    w->ch.type = KVT_CH_DATA;
    w->ch.first_step = KVT_NO_STEP;
}

static bool flush_data(struct kvs_trace_writer *w)
{
    if (w->chunk.len == 0) return true;
    uint32_t steps = w->ch.n_steps;
    bool ok = write_chunk(w, &w->ch, w->chunk.p, w->chunk.len, NULL);
    chunk_reset(w);
    __atomic_sub_fetch(&w->unflushed, steps, __ATOMIC_RELAXED);
    return ok;
}

static void tok_merge(uint32_t *lo, uint32_t *hi, bool empty, const struct kvs_rec_step *s)
{
    if (s->n_new == 0) return;
    uint32_t a = s->n_new <= s->n_ctx ? s->n_ctx - s->n_new : 0, b = s->n_ctx;
    if (empty || *lo == *hi) { *lo = a; *hi = b; return; }
    if (a < *lo) *lo = a;
    if (b > *hi) *hi = b;
}

static bool grow_entries(struct kvs_trace_writer *w)
{
    if (w->n_ent < w->cap_ent) return true;
    size_t cap = w->cap_ent ? w->cap_ent * 2 : 64;
    struct kvt_index_entry *e = realloc(w->ent, cap * sizeof *e);
    if (!e) { fail(w, KVS_ERR_NOMEM, "%s", "out of memory for the index"); return false; }
    w->ent = e;
    w->cap_ent = cap;
    return true;
}

static bool write_index(struct kvs_trace_writer *w)
{
    size_t done = w->n_ent - 1; /* the last interval is still open */
    if (done <= w->n_ent_indexed) return true;
    struct kvt_buf b = {0};
    kvt_buf_u64(&b, __atomic_load_n(&w->dropped, __ATOMIC_RELAXED));
    kvt_buf_u64(&b, w->n_steps);
    kvt_buf_u32(&b, (uint32_t)(done - w->n_ent_indexed));
    for (size_t i = w->n_ent_indexed; i < done; i++) kvt_index_entry_put(&b, &w->ent[i]);
    bool ok = !b.oom;
    if (!ok) fail(w, KVS_ERR_NOMEM, "%s", "out of memory for an index chunk");
    struct kvt_chunk_hdr h = { .type = KVT_CH_INDEX, .first_step = KVT_NO_STEP };
    h.first_ts = h.last_ts = now_rel(w);
    ok = ok && write_chunk(w, &h, b.p, b.len, NULL);
    kvt_buf_free(&b);
    if (ok) w->n_ent_indexed = done;
    w->kf_since_index = 0;
    return ok;
}

/* The state a viewer needs before step S: the latest RUN, MATRIX and QUALITY records. */
static bool write_keyframe(struct kvs_trace_writer *w, uint64_t s, uint64_t ts)
{
    struct kvt_buf b = {0};
    uint32_t n = 0;
    const struct kvs_record *list[1 + KF_MAX_MATRIX + KF_MAX_QUALITY];
    if (w->kf_run) list[n++] = w->kf_run;
    for (uint32_t i = 0; i < w->n_kf_mat; i++) list[n++] = w->kf_mat[i];
    for (uint32_t i = 0; i < w->n_kf_q; i++) list[n++] = w->kf_q[i];
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        size_t at = b.len;
        if (!kvt_record_encode(&b, list[i])) break;
        if (b.len > KVT_RAW_MAX) { b.len = at; break; } /* state beyond the chunk bound is left out */
        if (b.len > at) kept++;
    }
    if (b.oom) {
        kvt_buf_free(&b);
        fail(w, KVS_ERR_NOMEM, "%s", "out of memory for a keyframe");
        return false;
    }
    struct kvt_chunk_hdr h = { .type = KVT_CH_KEYFRAME, .first_step = s, .n_records = kept };
    h.first_ts = h.last_ts = ts;
    if (!grow_entries(w)) { kvt_buf_free(&b); return false; }
    uint64_t at;
    bool ok = write_chunk(w, &h, b.p, b.len, &at);
    kvt_buf_free(&b);
    if (!ok) return false;
    w->ent[w->n_ent++] = (struct kvt_index_entry){ .offset = at, .step = s, .ts = ts };
    if (++w->kf_since_index >= w->o.index_every) return write_index(w);
    return true;
}

static void kf_keep(struct kvs_trace_writer *w, struct kvs_record *r)
{
    switch (r->type) {
    case KVS_REC_RUN:
        /* a new run: earlier matrices and quality belong to the old one */
        kvs_record_unref(w->kf_run);
        w->kf_run = kvs_record_ref(r);
        for (uint32_t i = 0; i < w->n_kf_mat; i++) kvs_record_unref(w->kf_mat[i]);
        for (uint32_t i = 0; i < w->n_kf_q; i++) kvs_record_unref(w->kf_q[i]);
        w->n_kf_mat = w->n_kf_q = 0;
        break;
    case KVS_REC_MATRIX: {
        uint32_t i = 0;
        while (i < w->n_kf_mat && !(w->kf_mat[i]->u.matrix.kind == r->u.matrix.kind &&
                                    w->kf_mat[i]->u.matrix.group == r->u.matrix.group)) i++;
        if (i < w->n_kf_mat) kvs_record_unref(w->kf_mat[i]);
        else if (i < KF_MAX_MATRIX) w->n_kf_mat++;
        else break;
        w->kf_mat[i] = kvs_record_ref(r);
        break;
    }
    case KVS_REC_QUALITY: {
        uint32_t i = 0;
        while (i < w->n_kf_q && strncmp(w->kf_q[i]->u.quality.method, r->u.quality.method, KVS_REC_NAME_MAX)) i++;
        if (i < w->n_kf_q) kvs_record_unref(w->kf_q[i]);
        else if (i < KF_MAX_QUALITY) w->n_kf_q++;
        else break;
        w->kf_q[i] = kvs_record_ref(r);
        break;
    }
    default: break;
    }
}

static void handle(struct kvs_trace_writer *w, struct kvs_record *r, uint64_t t)
{
    if (r->type == KVS_REC_STEP) {
        uint64_t s = w->n_steps;
        if (s > 0 && s % w->o.keyframe_every == 0) {
            if (!flush_data(w) || !write_keyframe(w, s, t)) return;
        }
    }
    size_t at = w->chunk.len;
    if (!kvt_record_encode(&w->chunk, r)) {
        w->chunk.len = at;
        w->chunk.oom = false;
        __atomic_add_fetch(&w->dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    if (w->chunk.len == at) return; /* not serializable (unknown type, malformed matrix) */
    if (w->chunk.len > KVT_RAW_MAX) {
        /* too big to share a chunk: write what came before, then this record alone if it fits */
        size_t n = w->chunk.len - at;
        w->chunk.len = at;
        if (n > KVT_RAW_MAX) { __atomic_add_fetch(&w->dropped, 1, __ATOMIC_RELAXED); return; }
        uint8_t *copy = malloc(n);
        if (!copy) { __atomic_add_fetch(&w->dropped, 1, __ATOMIC_RELAXED); return; }
        memcpy(copy, w->chunk.p + at, n);
        if (!flush_data(w)) { free(copy); return; }
        kvt_buf_bytes(&w->chunk, copy, n);
        free(copy);
    }
    if (w->ch.n_records == 0) {
        w->ch.first_ts = t;
        w->chunk_t0 = w->origin_mono + t; /* its age counts from the push, not from this thread's turn */
    }
    w->ch.last_ts = t;
    w->ch.n_records++;
    w->n_records++;
    if (r->type == KVS_REC_STEP) {
        struct kvt_index_entry *e = &w->ent[w->n_ent - 1];
        if (w->ch.first_step == KVT_NO_STEP) w->ch.first_step = w->n_steps;
        tok_merge(&w->ch.tok_lo, &w->ch.tok_hi, w->ch.n_steps == 0, &r->u.step);
        tok_merge(&e->tok_lo, &e->tok_hi, e->n_steps == 0, &r->u.step);
        w->ch.n_steps++;
        e->n_steps++;
        w->n_steps++;
    } else {
        kf_keep(w, r);
    }
    if (w->chunk.len >= w->o.chunk_bytes || w->ch.n_steps >= w->o.flush_steps) flush_data(w);
}

static bool write_footer(struct kvs_trace_writer *w)
{
    struct kvt_buf b = {0};
    struct kvt_footer_vals v = { w->n_steps, w->n_records, __atomic_load_n(&w->dropped, __ATOMIC_RELAXED),
                                 w->n_chunks, w->raw_bytes, w->comp_bytes };
    kvt_footer_put(&b, &v, w->ent, w->n_ent);
    if (b.oom) {
        kvt_buf_free(&b);
        fail(w, KVS_ERR_NOMEM, "%s", "out of memory for the footer");
        return false;
    }
    struct kvt_chunk_hdr h = { .type = KVT_CH_FOOTER, .first_step = KVT_NO_STEP };
    h.first_ts = h.last_ts = now_rel(w);
    uint64_t at;
    bool ok = write_chunk(w, &h, b.p, b.len, &at);
    kvt_buf_free(&b);
    if (!ok) return false;
    uint8_t tr[KVT_TRAILER];
    kvt_trailer_put(tr, at);
    return write_all(w, tr, sizeof tr);
}

#define WRITER_POLL_MS 50ull

static void *writer_main(void *arg)
{
    struct kvs_trace_writer *w = arg;
    struct qitem batch[64];
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->count == 0 && !w->closing) {
            /* pushes do not wake the writer one by one (a wake-up per record preempts the engine's
             * threads on a small machine): it polls every WRITER_POLL_MS, and a push wakes it
             * only when the queue is half full */
            uint64_t due = w->chunk.len ? w->chunk_t0 + (uint64_t)w->o.flush_ms * 1000000ull
                                        : kvs_now_ns() + WRITER_POLL_MS * 1000000ull;
            uint64_t now = kvs_now_ns();
            if (due > now + WRITER_POLL_MS * 1000000ull) due = now + WRITER_POLL_MS * 1000000ull;
            if (now >= due && w->chunk.len) {
                pthread_mutex_unlock(&w->mu);
                if (!failed(w)) flush_data(w);
                else chunk_reset(w);
                pthread_mutex_lock(&w->mu);
                continue;
            }
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t wake = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (due - now);
            ts.tv_sec = (time_t)(wake / 1000000000ull);
            ts.tv_nsec = (long)(wake % 1000000000ull);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        if (w->count == 0 || w->aborting) break;
        uint32_t n = 0;
        while (w->count && n < KVS_ARRAY_LEN(batch)) {
            batch[n++] = w->ring[w->head];
            w->head = (w->head + 1) % w->o.queue_cap;
            w->count--;
        }
        bool bad = w->status != KVS_OK;
        pthread_mutex_unlock(&w->mu);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t before = w->n_steps;
            if (bad) __atomic_add_fetch(&w->dropped, 1, __ATOMIC_RELAXED);
            else handle(w, batch[i].rec, batch[i].t);
            /* a step that did not reach the chunk (dropped, not serializable) is not pending */
            if (batch[i].rec->type == KVS_REC_STEP && w->n_steps == before)
                __atomic_sub_fetch(&w->unflushed, 1, __ATOMIC_RELAXED);
            kvs_record_unref(batch[i].rec);
        }
        pthread_mutex_lock(&w->mu);
    }
    bool aborting = w->aborting;
    pthread_mutex_unlock(&w->mu);
    if (!aborting && !failed(w)) {
        if (flush_data(w) && write_index(w) && write_footer(w) && fsync(w->fd) != 0)
            fail(w, KVS_ERR_IO, "fsync failed: %s", strerror(errno));
    }
    return NULL;
}

static enum kvs_status build_header(struct kvt_buf *b, const struct kvs_trace_kv *meta, size_t n_meta,
                                    const struct kvs_trace_writer_opts *o, uint64_t unix_ns, uint64_t mono_ns,
                                    char *err, size_t errlen)
{
    struct kvt_buf m = {0};
    bool has_ver = false, has_created = false;
    for (size_t i = 0; i < n_meta; i++) {
        const char *k = meta[i].key, *v = meta[i].value ? meta[i].value : "";
        if (!k || !*k || strpbrk(k, "=\n") || strchr(v, '\n')) {
            kvs_seterr(err, errlen, "trace metadata key \"%s\": keys need a name without '=' or newline, "
                       "values no newline", k ? k : "(null)");
            kvt_buf_free(&m);
            return KVS_ERR_ARG;
        }
        if (!strcmp(k, "kvscope_version")) has_ver = true;
        if (!strcmp(k, "created_unix_ns")) has_created = true;
        kvt_buf_bytes(&m, k, strlen(k));
        kvt_buf_u8(&m, '=');
        kvt_buf_bytes(&m, v, strlen(v));
        kvt_buf_u8(&m, '\n');
    }
    char line[64];
    if (!has_ver) {
        snprintf(line, sizeof line, "kvscope_version=%s\n", KVS_VERSION);
        kvt_buf_bytes(&m, line, strlen(line));
    }
    if (!has_created) {
        snprintf(line, sizeof line, "created_unix_ns=%llu\n", (unsigned long long)unix_ns);
        kvt_buf_bytes(&m, line, strlen(line));
    }
    if (m.oom || m.len > KVT_META_MAX) {
        kvs_seterr(err, errlen, "trace metadata too large (%zu bytes, limit %u)", m.len, KVT_META_MAX);
        kvt_buf_free(&m);
        return m.oom ? KVS_ERR_NOMEM : KVS_ERR_ARG;
    }
    uint8_t *h = kvt_buf_grow(b, KVT_HDR_FIXED);
    if (!h) { kvt_buf_free(&m); return KVS_ERR_NOMEM; }
    memcpy(h, KVT_MAGIC, 8);
    kvt_put16(h + 8, KVS_TRACE_MAJOR);
    kvt_put16(h + 10, KVS_TRACE_MINOR);
    kvt_put32(h + 12, (uint32_t)(KVT_HDR_FIXED + m.len + 4));
    kvt_put64(h + 16, 0); /* incompatible features: none */
    kvt_put64(h + 24, 0); /* compatible features: none */
    kvt_put32(h + 32, KVT_CLOCK_MONOTONIC);
    kvt_put32(h + 36, 1);
    kvt_put64(h + 40, unix_ns);
    kvt_put64(h + 48, mono_ns);
    kvt_put32(h + 56, o->keyframe_every);
    kvt_put32(h + 60, (uint32_t)m.len);
    kvt_buf_bytes(b, m.p, m.len);
    kvt_buf_free(&m);
    if (!b->oom) kvt_buf_u32(b, kvs_crc32c(0, b->p, b->len));
    return b->oom ? KVS_ERR_NOMEM : KVS_OK;
}

enum kvs_status kvs_trace_writer_open(struct kvs_trace_writer **out, const char *path,
                                      const struct kvs_trace_kv *meta, size_t n_meta,
                                      const struct kvs_trace_writer_opts *opts, char *err, size_t errlen)
{
    *out = NULL;
    if (!path || !*path || strlen(path) >= PATH_MAX) {
        kvs_seterr(err, errlen, "trace path is empty or too long");
        return KVS_ERR_ARG;
    }
    struct kvs_trace_writer *w = calloc(1, sizeof *w);
    if (!w) { kvs_seterr(err, errlen, "out of memory"); return KVS_ERR_NOMEM; }
    kvs_trace_writer_opts_default(&w->o);
    if (opts) {
        if (opts->queue_cap) w->o.queue_cap = opts->queue_cap;
        if (opts->keyframe_every) w->o.keyframe_every = opts->keyframe_every;
        if (opts->chunk_bytes) w->o.chunk_bytes = KVS_MIN(opts->chunk_bytes, KVT_RAW_MAX);
        if (opts->flush_ms) w->o.flush_ms = opts->flush_ms;
        if (opts->flush_steps) w->o.flush_steps = opts->flush_steps;
        if (opts->index_every) w->o.index_every = opts->index_every;
        if (opts->zlevel >= 1 && opts->zlevel <= 9) w->o.zlevel = opts->zlevel;
        w->o.replace = opts->replace;
    }
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->part, sizeof w->part, "%s.part", path);
    w->fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    chunk_reset(w);

    struct kvt_buf hb = {0};
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    w->origin_mono = kvs_now_ns();
    uint64_t unix_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
    enum kvs_status st = build_header(&hb, meta, n_meta, &w->o, unix_ns, w->origin_mono, err, errlen);
    if (st != KVS_OK) goto fail;
    w->ring = calloc(w->o.queue_cap, sizeof *w->ring);
    w->ent = calloc(64, sizeof *w->ent);
    if (!w->ring || !w->ent) { st = KVS_ERR_NOMEM; kvs_seterr(err, errlen, "out of memory"); goto fail; }
    w->cap_ent = 64;
    /* PATH is only replaced at close, but a recording that cannot be published is refused now;
     * PATH.part may be an interrupted recording (only replaced when asked) or worse */
    st = kvs_trace_target_check(path, w->o.replace, err, errlen);
    if (st == KVS_OK) {
        st = kvs_trace_target_check(w->part, w->o.replace, err, errlen);
        if (st == KVS_ERR_STATE)
            kvs_seterr(err, errlen, "%s already exists (an interrupted recording? `kvscope trace recover` rescues it)",
                       w->part);
        else if (st == KVS_OK && unlink(w->part) != 0 && errno != ENOENT) {
            st = KVS_ERR_IO;
            kvs_seterr(err, errlen, "%s: cannot remove: %s", w->part, strerror(errno));
        }
    }
    if (st != KVS_OK) goto fail;
    /* O_EXCL | O_NOFOLLOW: whatever appears at PATH.part meanwhile is not ours to write into */
    w->fd = open(w->part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        st = KVS_ERR_IO;
        kvs_seterr(err, errlen, "%s: cannot create: %s", w->part, strerror(errno));
        goto fail;
    }
    if (!write_all(w, hb.p, hb.len)) {
        st = KVS_ERR_IO;
        kvs_seterr(err, errlen, "%s", w->err);
        goto fail;
    }
    w->header_len = hb.len;
    w->ent[0] = (struct kvt_index_entry){ .offset = hb.len, .step = 0 };
    w->n_ent = 1;
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
        st = KVS_ERR_NOMEM;
        kvs_seterr(err, errlen, "%s: cannot start the writer thread", w->part);
        goto fail;
    }
    w->thread_started = true;
    kvt_buf_free(&hb);
    *out = w;
    return KVS_OK;
fail:
    kvt_buf_free(&hb);
    if (w->fd >= 0) { close(w->fd); unlink(w->part); }
    free(w->ring);
    free(w->ent);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
    return st;
}

bool kvs_trace_writer_push(struct kvs_trace_writer *w, struct kvs_record *r)
{
    if (!r) return false;
    uint64_t t = now_rel(w);
    pthread_mutex_lock(&w->mu);
    if (w->closing || w->status != KVS_OK || w->count >= w->o.queue_cap) {
        pthread_mutex_unlock(&w->mu);
        __atomic_add_fetch(&w->dropped, 1, __ATOMIC_RELAXED);
        kvs_record_unref(r);
        return false;
    }
    w->ring[(w->head + w->count) % w->o.queue_cap] = (struct qitem){ r, t };
    /* the writer polls; a push wakes it only when the queue is half full or enough steps wait to
     * make a chunk (the crash-loss bound), not once per record */
    bool wake = ++w->count == (w->o.queue_cap + 1) / 2;
    if (r->type == KVS_REC_STEP && __atomic_add_fetch(&w->unflushed, 1, __ATOMIC_RELAXED) >= w->o.flush_steps)
        wake = true;
    if (wake) pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return true;
}

uint64_t kvs_trace_writer_dropped(const struct kvs_trace_writer *w)
{
    return __atomic_load_n(&w->dropped, __ATOMIC_RELAXED);
}

enum kvs_status kvs_trace_writer_status(struct kvs_trace_writer *w, char *err, size_t errlen)
{
    pthread_mutex_lock(&w->mu);
    enum kvs_status st = w->status;
    if (st != KVS_OK) kvs_seterr(err, errlen, "%s", w->err);
    pthread_mutex_unlock(&w->mu);
    return st;
}

static void writer_free(struct kvs_trace_writer *w)
{
    for (uint32_t i = 0; i < w->count; i++) kvs_record_unref(w->ring[(w->head + i) % w->o.queue_cap].rec);
    kvs_record_unref(w->kf_run);
    for (uint32_t i = 0; i < w->n_kf_mat; i++) kvs_record_unref(w->kf_mat[i]);
    for (uint32_t i = 0; i < w->n_kf_q; i++) kvs_record_unref(w->kf_q[i]);
    kvt_buf_free(&w->chunk);
    free(w->ring);
    free(w->ent);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static void stop_thread(struct kvs_trace_writer *w, bool abort_)
{
    pthread_mutex_lock(&w->mu);
    w->closing = true;
    w->aborting = abort_;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (w->thread_started) pthread_join(w->thread, NULL);
    w->thread_started = false;
}

/* Makes the rename durable: fsync of the directory holding PATH (best effort). */
static void sync_dir(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    int dfd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

enum kvs_status kvs_trace_writer_close(struct kvs_trace_writer *w, char *err, size_t errlen)
{
    if (!w) return KVS_OK;
    stop_thread(w, false);
    enum kvs_status st = w->status;
    if (st != KVS_OK) kvs_seterr(err, errlen, "%s", w->err);
    if (close(w->fd) != 0 && st == KVS_OK) {
        st = KVS_ERR_IO;
        kvs_seterr(err, errlen, "%s: close failed: %s", w->part, strerror(errno));
    }
    if (st == KVS_OK) {
        st = kvt_publish(w->part, w->path, w->o.replace, err, errlen);
        if (st == KVS_OK) sync_dir(w->path);
    }
    writer_free(w);
    return st;
}

void kvs_trace_writer_abort(struct kvs_trace_writer *w)
{
    if (!w) return;
    stop_thread(w, true);
    close(w->fd);
    writer_free(w);
}
