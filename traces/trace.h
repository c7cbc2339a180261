/* The .kvt trace format (DESIGN.md §8, man/kvscope-trace.5): a writer with its own thread and a
 * bounded queue, a validating reader with keyframe seeking, recovery of truncated files, and
 * exports (Perfetto/Chrome trace JSON, CSV, JSON lines). A library of its own: depends on libc,
 * zlib, pthreads and the plain record structs of engine/core/record.h; never prints, never exits;
 * functions return enum kvs_status and leave a message naming the file, offset and problem. */
#ifndef KVS_TRACE_H
#define KVS_TRACE_H

#include <stdio.h>

#include "kvs.h"
#include "record.h"

#define KVS_TRACE_MAJOR 1
#define KVS_TRACE_MINOR 0

/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78). Start with crc = 0; pass the previous
 * result to continue over more bytes. kvs_crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t kvs_crc32c(uint32_t crc, const void *buf, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Writer */

struct kvs_trace_writer;

/* One metadata entry of the header: KEY has no '=', '\n' or NUL; VALUE has no '\n'. */
struct kvs_trace_kv {
    const char *key;
    const char *value;
};

struct kvs_trace_writer_opts {
    uint32_t queue_cap;      /* records the queue holds before it drops (default 4096) */
    uint32_t keyframe_every; /* K: a keyframe before every K-th step (default 256) */
    uint32_t chunk_bytes;    /* a data chunk is written once it holds this many raw bytes (64 KiB) */
    uint32_t flush_ms;       /* ... or once its oldest record was pushed this long ago (default 100 ms) */
    uint32_t flush_steps;    /* ... or once it holds this many steps (default 8): the crash-loss bound */
    uint32_t index_every;    /* keyframes between index chunks (default 16) */
    int zlevel;              /* zlib level 1..9 (default 6) */
    bool replace;            /* an existing regular file at PATH (or PATH.part) may be replaced
                              * (default false: the open or the close fails instead) */
};

/* Fills O with the defaults above. */
void kvs_trace_writer_opts_default(struct kvs_trace_writer_opts *o);

/* Whether the library may create PATH: KVS_OK when nothing is there, or a regular file (or a link
 * to one) is there and REPLACE is set; KVS_ERR_ARG when PATH is (or links to) a device, FIFO,
 * socket or directory, which is never replaced; KVS_ERR_STATE when a file exists and REPLACE is
 * not set; KVS_ERR_IO when PATH cannot be examined. The message in ERR names PATH. */
enum kvs_status kvs_trace_target_check(const char *path, bool replace, char *err, size_t errlen);

/* Checks PATH and PATH.part with kvs_trace_target_check (opts->replace), creates PATH.part, writes the header with the N_META entries of META (the keys
 * "kvscope_version" and "created_unix_ns" are added when absent) and starts the writer thread.
 * OPTS may be NULL for defaults. On failure returns an error with a message in ERR and *out NULL.
 * The writer must be finished with kvs_trace_writer_close (or kvs_trace_writer_abort). */
enum kvs_status kvs_trace_writer_open(struct kvs_trace_writer **out, const char *path,
                                      const struct kvs_trace_kv *meta, size_t n_meta,
                                      const struct kvs_trace_writer_opts *opts, char *err, size_t errlen);

/* Hands the caller's reference to R to the writer. Never blocks on I/O: when the queue is full (or
 * the writer failed or is closing) R is unreffed, the drop counted, and false returned. Any thread. */
bool kvs_trace_writer_push(struct kvs_trace_writer *w, struct kvs_record *r);

/* Records dropped so far (queue full, or discarded after a write error). */
uint64_t kvs_trace_writer_dropped(const struct kvs_trace_writer *w);

/* KVS_OK while the writer is healthy; otherwise the first write error, its message copied to ERR. */
enum kvs_status kvs_trace_writer_status(struct kvs_trace_writer *w, char *err, size_t errlen);

/* Writes every queued record, the last data chunk, the footer index (with the drop count), fsyncs
 * and renames PATH.part to PATH. Frees W in every case. Call it from the normal exit path, also
 * after SIGINT/SIGTERM (the signal handler only sets a flag); it is not async-signal-safe.
 * Returns the first error met (message in ERR); on error PATH.part is left for `trace recover`. */
enum kvs_status kvs_trace_writer_close(struct kvs_trace_writer *w, char *err, size_t errlen);

/* Stops the thread and frees W without a footer or rename: PATH.part stays, as after a crash
 * (still readable: the reader recovers it). For error paths and tests. */
void kvs_trace_writer_abort(struct kvs_trace_writer *w);

/* ---------------------------------------------------------------------------------------------
 * Reader */

struct kvs_trace;

enum {
    /* Also inflate every chunk and decode every record at open (otherwise done when read). */
    KVS_TRACE_OPEN_VERIFY = 1u << 0,
    /* Trust a valid footer index and skip the walk over every chunk header and CRC at open
     * (chunks are still checked when read). Ignored when there is no footer. */
    KVS_TRACE_OPEN_FAST = 1u << 1,
};

struct kvs_trace_info {
    uint16_t major, minor;
    uint64_t incompat, compat;      /* feature flags */
    uint32_t clock_id;              /* 1: CLOCK_MONOTONIC */
    uint32_t tick_ns;               /* nanoseconds per timestamp unit (1) */
    uint64_t origin_unix_ns;        /* wall clock when the writer opened the file */
    uint64_t origin_mono_ns;        /* the monotonic clock at the same moment */
    uint32_t keyframe_every;
    uint64_t header_bytes, file_bytes;
    uint64_t valid_bytes;           /* end of the last good chunk (or footer) */
    uint64_t n_chunks, n_data_chunks, n_keyframes, n_index_chunks, n_unknown_chunks;
    uint64_t n_steps;               /* STEP records in the valid chunks */
    uint64_t n_records;             /* records in data chunks; UINT64_MAX when not counted */
    uint64_t dropped;               /* writer drops (footer, else the last index chunk) */
    uint64_t raw_bytes, comp_bytes; /* data chunk payloads, uncompressed and on disk */
    uint32_t tok_lo, tok_hi;        /* token positions covered [lo, hi) */
    uint64_t first_ts, last_ts;     /* chunk timestamps, ns since origin */
    bool footer;                    /* closed cleanly: footer index present and used */
    bool recovered;                 /* no valid footer: read up to the last good chunk */
    uint64_t tail_offset;           /* where reading stopped when recovered */
    char tail_reason[160];
};

/* Opens and validates the trace at PATH: header (magic, version, feature flags, CRC), then every
 * chunk header and payload CRC with lengths bounded by the file size (see FLAGS). Refuses a newer
 * major version or unknown incompatible features. Without a footer, keeps the longest valid prefix
 * and describes it in kvs_trace_note(). Returns an error (message in ERR, *out NULL) when even the
 * header is unusable. Free with kvs_trace_close. */
enum kvs_status kvs_trace_open(struct kvs_trace **out, const char *path, unsigned flags,
                               char *err, size_t errlen);
/* Same over LEN bytes at DATA (not copied: must outlive the reader); NAME is used in messages. */
enum kvs_status kvs_trace_open_mem(struct kvs_trace **out, const void *data, size_t len, const char *name,
                                   unsigned flags, char *err, size_t errlen);
void kvs_trace_close(struct kvs_trace *t);

/* Last error of T (file, offset, problem); "" when none. Valid until the next call on T. */
const char *kvs_trace_error(const struct kvs_trace *t);
const struct kvs_trace_info *kvs_trace_get_info(const struct kvs_trace *t);
/* NULL for a cleanly closed trace, else "recovered N steps; tail lost at offset X (reason)". */
const char *kvs_trace_note(const struct kvs_trace *t);
uint64_t kvs_trace_n_steps(const struct kvs_trace *t);

/* Header metadata, in file order; NULL past the end or for a missing key. Owned by T. */
size_t kvs_trace_meta_count(const struct kvs_trace *t);
const char *kvs_trace_meta_key(const struct kvs_trace *t, size_t i);
const char *kvs_trace_meta_value(const struct kvs_trace *t, size_t i);
const char *kvs_trace_meta_get(const struct kvs_trace *t, const char *key);

/* Where a record returned by kvs_trace_next came from. */
struct kvs_trace_where {
    uint64_t chunk_offset;  /* file offset of its chunk */
    uint64_t step;          /* STEP: its trace step (ordinal of STEP records in the file, equal to
                             * rec.step in a single-run trace); others: the next step's */
    bool keyframe;          /* state replayed from a keyframe after a seek (a copy of an earlier
                             * record, not a new event) */
};

/* Next record in file order: KVS_OK with *rec set (the caller owns one reference) or *rec NULL at
 * the end of the valid data; an error (message in kvs_trace_error) when a chunk fails its checks.
 * Keyframe state is only returned right after a seek. WHERE may be NULL. */
enum kvs_status kvs_trace_next(struct kvs_trace *t, struct kvs_record **rec, struct kvs_trace_where *where);
/* Back to the first record. */
enum kvs_status kvs_trace_rewind(struct kvs_trace *t);
/* Positions the reader on the keyframe at or before trace step STEP (clamped to the last step):
 * the next records are that keyframe's state (RUN, latest MATRIX and QUALITY records, flagged
 * where.keyframe) and then every record from the keyframe on, so at most keyframe_every STEP
 * records come before STEP. *KF_STEP (may be NULL) gets the keyframe's step. */
enum kvs_status kvs_trace_seek_step(struct kvs_trace *t, uint64_t step, uint64_t *kf_step);
/* Same for the first step (in file order) whose tokens [n_ctx - n_new, n_ctx) hold position TOKEN;
 * *STEP_OUT gets that trace step. KVS_ERR_ARG when no step holds it. */
enum kvs_status kvs_trace_seek_token(struct kvs_trace *t, uint32_t token, uint64_t *step_out, uint64_t *kf_step);

/* ---------------------------------------------------------------------------------------------
 * Recovery */

struct kvs_trace_recover_report {
    uint64_t n_steps, n_chunks, bytes_in, bytes_kept;
    bool was_clean;
    char note[200];          /* what was recovered and where the tail was lost */
};

/* Rewrites the longest valid prefix of IN as a clean trace OUT (through a temporary file beside
 * OUT, fsync, rename; IN may be OUT.part, or OUT itself with REPLACE): the header and every good
 * chunk verbatim, then a fresh footer index. OUT is checked with kvs_trace_target_check(REPLACE)
 * before anything is read and again when the copy is published. REP may be NULL. */
enum kvs_status kvs_trace_recover(const char *in, const char *out, bool replace, struct kvs_trace_recover_report *rep,
                                  char *err, size_t errlen);

/* ---------------------------------------------------------------------------------------------
 * Exports */

enum kvs_trace_format { KVS_TRACE_FMT_PERFETTO = 1, KVS_TRACE_FMT_CSV = 2, KVS_TRACE_FMT_JSONL = 3 };

/* Parses "perfetto" (also "chrome", "json"), "csv", "jsonl"; 0 when unknown. */
enum kvs_trace_format kvs_trace_format_parse(const char *s);

/* Writes the records of T with trace steps FROM..TO (inclusive; TO = UINT64_MAX: to the end) to
 * OUT in FMT. A window that starts past step 0 begins with the keyframe state (RUN, MATRIX). The
 * reader's position is changed. Returns an error (message in ERR) on a bad chunk or a write error. */
enum kvs_status kvs_trace_export(struct kvs_trace *t, enum kvs_trace_format fmt, uint64_t from, uint64_t to,
                                 FILE *out, char *err, size_t errlen);

/* Writes R as one JSON object on one line (newline included): the format of `--batch` output and
 * of `trace export --format jsonl`, so live and replayed runs print the same lines. Metrics whose
 * validity bit is clear are null; per-layer and per-group arrays hold n_layer / n_groups entries;
 * NaN and infinities are null; strings are escaped, invalid UTF-8 replaced by U+FFFD. */
void kvs_record_to_json(const struct kvs_record *r, FILE *f);
/* Writes the N bytes of S as a JSON string literal: quotes and control characters escaped,
 * invalid UTF-8 as U+FFFD (the escaping every record string gets). */
void kvs_json_string(FILE *f, const char *s, size_t n);
/* Writes V with the printf format FMT (one double conversion, e.g. "%.4f"), or null when V is NaN
 * or infinite: JSON has no spelling for those. */
void kvs_json_number(FILE *f, const char *fmt, double v);

#endif
