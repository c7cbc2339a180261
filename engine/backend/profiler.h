/* GPU activity profiler (DESIGN.md §7): CUPTI loaded with dlopen, activity records for concurrent
 * kernels, memcpy, memset and runtime API calls (never CUPTI_ACTIVITY_KIND_KERNEL, which serialises
 * kernels), drained by CUPTI's buffer callbacks into a bounded ring that the session turns into
 * KVS_REC_KERNEL records. Degrades step by step with a status string for each reason; a missing
 * piece is never a crash. Depends on engine/core/record.h and engine/backend/backend.h (driver probe) only. */
#ifndef KVS_PROFILER_H
#define KVS_PROFILER_H

#include "record.h"

enum kvs_prof_state {
    KVS_PROF_NOT_BUILT = 0,   /* "CUPTI support not built" (no cupti.h at build time) */
    KVS_PROF_NO_DRIVER,       /* "no NVIDIA driver" */
    KVS_PROF_NO_GPU,          /* "no GPU" */
    KVS_PROF_NO_CUPTI,        /* "CUPTI not found" */
    KVS_PROF_BUSY,            /* "CUPTI busy (another profiler)" */
    KVS_PROF_ERROR,           /* any other CUPTI failure: "CUPTI error: …" */
    KVS_PROF_READY,           /* usable, not collecting */
    KVS_PROF_ACTIVE,          /* collecting */
};

/* Kinds in struct kvs_rec_kernel.kind. */
enum { KVS_KREC_KERNEL = 1, KVS_KREC_MEMCPY = 2, KVS_KREC_MEMSET = 3, KVS_KREC_RUNTIME = 4 };

/* Whether profiling could start, without starting it (driver, GPU, library; "busy" is only known
 * once started). Returns a static status string; *state (may be NULL) receives the state. */
const char *kvs_profiler_probe(enum kvs_prof_state *state);

/* Loads libcupti and resolves every symbol the profiler uses, whatever the GPU situation (for
 * diagnostics and tests). Returns true when all required symbols resolved; PATH receives the
 * library that was loaded, or the reason. */
bool kvs_profiler_cupti_loadable(char *path, size_t cap);

struct kvs_profiler;

/* Creates an idle profiler whose ring holds RING_CAP activities (0: 16384). Returns KVS_ERR_NOMEM
 * only; availability is reported by start. Free with kvs_profiler_delete (which stops it). */
enum kvs_status kvs_profiler_new(struct kvs_profiler **out, uint32_t ring_cap);
void kvs_profiler_delete(struct kvs_profiler *p);

/* Starts collecting; timestamps in records are monotonic ns (kvs_now_ns clock) minus T0_NS.
 * Only one profiler may be active per process (CUPTI is process-wide). Returns KVS_ERR_UNSUPPORTED
 * when profiling is unavailable and KVS_ERR_STATE when another profiler is active; the reason is
 * in kvs_profiler_status. */
enum kvs_status kvs_profiler_start(struct kvs_profiler *p, uint64_t t0_ns);
/* Flushes outstanding activity and stops collecting; the ring keeps what was collected. */
void kvs_profiler_stop(struct kvs_profiler *p);
/* Asks CUPTI to hand over completed buffers now (they otherwise arrive when full). */
void kvs_profiler_flush(struct kvs_profiler *p);

/* Moves up to MAX activities from the ring into OUT, oldest first; returns how many. */
size_t kvs_profiler_drain(struct kvs_profiler *p, struct kvs_rec_kernel *out, size_t max);
/* Pops one activity as a new KVS_REC_KERNEL record (one reference); NULL when the ring is empty or
 * on allocation failure. */
struct kvs_record *kvs_profiler_pop_record(struct kvs_profiler *p);
/* Activities lost so far: ring overflow plus what CUPTI itself dropped. */
uint64_t kvs_profiler_dropped(const struct kvs_profiler *p);

/* Converts one CUPTI activity record (REC, in the layout of the loaded library) into the ring as
 * collection does, throttle included; for tests, which build records of several CUPTI versions'
 * layouts. A record of a kind kvscope does not collect is ignored. Without CUPTI support: no-op. */
void kvs_profiler_convert_record(struct kvs_profiler *p, const void *rec);

enum kvs_prof_state kvs_profiler_state(const struct kvs_profiler *p);
/* The current status line ("CUPTI active", "no GPU", …); valid until the next call on P. */
const char *kvs_profiler_status(const struct kvs_profiler *p);

#endif
