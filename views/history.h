/* The record history the views draw from: the current run's RUN, END, QUALITY and matrix records,
 * a ring of its most recent STEP records, its decoded tokens, GPU kernel totals and the last log
 * lines, plus pinned snapshots for A/B comparison. Live and replay feed it the same way.
 * Depends on engine/core/record.h only (no curses, no engine internals). */
#ifndef KVS_HISTORY_H
#define KVS_HISTORY_H

#include "record.h"

#define KVS_HIST_LOGS 64
#define KVS_HIST_KERNEL_NAMES 48
#define KVS_HIST_TOKENS_MAX (1u << 20)

/* Decoded tokens of one run, in order. */
struct kvs_hist_tokens {
    uint32_t n, cap;
    int32_t *id;        /* (n) token ids */
    uint64_t *step;     /* (n) step index that produced the token */
    uint32_t *off;      /* (n + 1) offsets of each piece in text */
    char *text;         /* concatenated UTF-8 pieces */
    uint32_t text_len, text_cap;
};

struct kvs_hist_kernel {
    char name[KVS_REC_NAME_MAX];
    uint32_t kind;
    uint64_t count, ns, bytes;
};

/* One run of the session (or one QUALITY record) as a point on the quality/CR curve. */
#define KVS_HIST_POINTS 64
struct kvs_hist_point {
    uint64_t key;                   /* run: kvs_history_run_key of its RUN record; quality: top bit set */
    char method[KVS_REC_NAME_MAX];
    float target_cr, cr, kl;        /* achieved CR; KL against the full cache */
};

struct kvs_history {
    uint32_t cap;                   /* STEP ring capacity */
    struct kvs_record **ring;       /* ring[i % cap] holds step i for the last min(n_steps, cap) */
    uint64_t n_steps;               /* steps seen in the current run */
    uint64_t n_decode;              /* decode steps among them */
    struct kvs_record *run;         /* current run's RUN record (NULL before the first) */
    struct kvs_record *end;         /* its END record once finished */
    struct kvs_record *quality;     /* latest QUALITY record */
    struct kvs_record *mat[4];      /* latest matrix of kind 1..3 (index = kind) */
    struct kvs_record *spectrum[KVS_MAX_GROUPS];
    struct kvs_hist_tokens tok;
    struct kvs_op_counter ops_total[KVS_OP_COUNT]; /* summed over the run's steps */
    struct kvs_hist_kernel kern[KVS_HIST_KERNEL_NAMES];
    uint32_t n_kern_names;
    uint64_t n_kern, kern_other;    /* kernel records seen; those whose name did not fit */
    struct kvs_record *logs[KVS_HIST_LOGS]; /* ring of the run's last log lines */
    uint64_t n_logs;
    uint64_t n_records, n_runs;     /* everything pushed since init */
    uint64_t t_first_decode_ns;     /* run-relative end of the first decoded token (0: none yet) */
    /* the session's runs with quality, kept across runs (a RUN record does not clear them); the
     * oldest are dropped past KVS_HIST_POINTS */
    struct kvs_hist_point points[KVS_HIST_POINTS];
    uint32_t n_points;
};

/* A snapshot of a finished or running run kept for comparison. */
struct kvs_hist_pin {
    bool set;
    struct kvs_record *run, *step, *quality, *end;
    struct kvs_hist_tokens tok;
    uint64_t t_first_decode_ns;
    uint64_t n_decode;
    uint64_t decode_ns;             /* summed decode step time */
};

/* Initialises an empty history keeping up to CAP steps (>= 1). Returns KVS_ERR_NOMEM on failure. */
enum kvs_status kvs_history_init(struct kvs_history *h, uint32_t cap);
/* Drops every reference and frees storage. */
void kvs_history_free(struct kvs_history *h);
/* Takes over the caller's reference to R. A RUN record starts a new run (forgets the previous
 * one's steps, tokens, matrices, quality, kernels and logs, but not the session's quality/CR
 * points: each step with quality and bytes updates its run's point, each QUALITY record adds or
 * updates the point of its method and target). */
void kvs_history_push(struct kvs_history *h, struct kvs_record *r);

/* Step I of the current run, or NULL when it was never seen or has left the ring. */
const struct kvs_rec_step *kvs_history_step(const struct kvs_history *h, uint64_t i);
/* The key of run R's quality/CR point: its run id and start time, so a replay that starts a run
 * over (a backward seek) updates the run's point instead of adding another (top bit clear). */
static inline uint64_t kvs_history_run_key(const struct kvs_rec_run *r)
{
    return (((uint64_t)r->run_id << 44) ^ r->unix_ns) & ~(1ull << 63);
}
/* Index of the oldest step still held (== n_steps when none). */
uint64_t kvs_history_first(const struct kvs_history *h);
/* The I-th most recent log line (0: newest), or NULL. */
const struct kvs_rec_log *kvs_history_log(const struct kvs_history *h, uint64_t i);
/* Number of decoded tokens produced up to and including step STEP. */
uint32_t kvs_history_tokens_upto(const struct kvs_history *h, uint64_t step);

/* Copies the current run (up to step CURSOR) into PIN, replacing what it held. */
void kvs_history_pin(const struct kvs_history *h, uint64_t cursor, struct kvs_hist_pin *pin);
void kvs_hist_pin_free(struct kvs_hist_pin *pin);

/* Token storage helpers (also used by pins). Returns false on OOM or when full. */
bool kvs_hist_tokens_add(struct kvs_hist_tokens *t, int32_t id, uint64_t step, const char *piece);
void kvs_hist_tokens_free(struct kvs_hist_tokens *t);
static inline const char *kvs_hist_tokens_piece(const struct kvs_hist_tokens *t, uint32_t i, uint32_t *len)
{
    *len = t->off[i + 1] - t->off[i];
    return t->text + t->off[i];
}

#endif
