/* CUPTI profiler (profiler.h): libcupti is dlopen'd, never linked; the activity API collects
 * CONCURRENT_KERNEL, MEMCPY, MEMSET and RUNTIME records (never KIND_KERNEL: it serialises kernels)
 * into buffers whose completion callback copies them into a mutex-guarded ring. Degrades: CUPTI
 * support not built -> no NVIDIA driver -> no GPU -> CUPTI not found -> CUPTI busy. Uses cupti.h
 * for types only when KVS_HAVE_CUPTI is defined; depends on libc, libdl, pthreads. */
#include "profiler.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifdef KVS_HAVE_CUPTI
#include <cupti.h>
#endif

#define RING_DEFAULT 16384u

struct kvs_profiler {
    pthread_mutex_t mu;               /* guards the ring and the counters below */
    struct kvs_rec_kernel *ring;
    uint32_t cap, head, count;        /* oldest at head */
    uint64_t dropped_ring, dropped_cupti;
    enum kvs_prof_state state;
    uint64_t t0_ns;                   /* subtracted from monotonic timestamps */
    int64_t clock_offset;             /* cupti clock - monotonic clock, when no timestamp callback */
    char status[192];
    char err[512];                    /* check-macro detail */
#ifdef KVS_HAVE_CUPTI
    CUpti_SubscriberHandle sub;
#endif
};

static inline void ring_push(struct kvs_profiler *p, const struct kvs_rec_kernel *k)
{
    pthread_mutex_lock(&p->mu);
    if (p->count == p->cap) {
        /* keep the newest: the panel shows recent activity */
        p->head = (p->head + 1) % p->cap;
        p->count--;
        p->dropped_ring++;
    }
    p->ring[(p->head + p->count) % p->cap] = *k;
    p->count++;
    pthread_mutex_unlock(&p->mu);
}

size_t kvs_profiler_drain(struct kvs_profiler *p, struct kvs_rec_kernel *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    while (n < max && p->count) {
        out[n++] = p->ring[p->head];
        p->head = (p->head + 1) % p->cap;
        p->count--;
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}

struct kvs_record *kvs_profiler_pop_record(struct kvs_profiler *p)
{
    struct kvs_rec_kernel k;
    pthread_mutex_lock(&p->mu);
    bool any = p->count > 0;
    pthread_mutex_unlock(&p->mu);
    if (!any) return NULL;
    struct kvs_record *r = kvs_record_new(KVS_REC_KERNEL, 0);
    if (!r) return NULL;
    if (kvs_profiler_drain(p, &k, 1) != 1) {
        kvs_record_unref(r);
        return NULL;
    }
    r->u.kernel = k;
    return r;
}

uint64_t kvs_profiler_dropped(const struct kvs_profiler *p)
{
    struct kvs_profiler *mp = (struct kvs_profiler *)p;
    pthread_mutex_lock(&mp->mu);
    uint64_t d = p->dropped_ring + p->dropped_cupti;
    pthread_mutex_unlock(&mp->mu);
    return d;
}

enum kvs_prof_state kvs_profiler_state(const struct kvs_profiler *p) { return p->state; }
const char *kvs_profiler_status(const struct kvs_profiler *p) { return p->status; }

enum kvs_status kvs_profiler_new(struct kvs_profiler **out, uint32_t ring_cap)
{
    *out = NULL;
    struct kvs_profiler *p = calloc(1, sizeof *p);
    if (!p) return KVS_ERR_NOMEM;
    p->cap = ring_cap ? ring_cap : RING_DEFAULT;
    p->ring = calloc(p->cap, sizeof *p->ring);
    if (!p->ring) {
        free(p);
        return KVS_ERR_NOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    enum kvs_prof_state st;
    kvs_seterr(p->status, sizeof p->status, "%s", kvs_profiler_probe(&st));
    p->state = st;
    *out = p;
    return KVS_OK;
}

#ifndef KVS_HAVE_CUPTI

/* ---------------------------------------------------------------- built without cupti.h */

const char *kvs_profiler_probe(enum kvs_prof_state *state)
{
    if (state) *state = KVS_PROF_NOT_BUILT;
    return "CUPTI support not built";
}

bool kvs_profiler_cupti_loadable(char *path, size_t cap)
{
    kvs_seterr(path, cap, "CUPTI support not built");
    return false;
}

enum kvs_status kvs_profiler_start(struct kvs_profiler *p, uint64_t t0_ns)
{
    p->state = KVS_PROF_NOT_BUILT;
    kvs_seterr(p->status, sizeof p->status, "CUPTI support not built");
    return KVS_ERR_UNSUPPORTED;
}

void kvs_profiler_stop(struct kvs_profiler *p) {}
void kvs_profiler_flush(struct kvs_profiler *p) {}

void kvs_profiler_delete(struct kvs_profiler *p)
{
    if (!p) return;
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}

#else

/* ---------------------------------------------------------------- libcupti, dlopen'd */

#define CUPTI_BUF_BYTES (1u << 20)
#define CUPTI_BUF_ALIGN 8

/* Function pointers typed from the header's own declarations (typeof does not reference them). */
static struct {
    pthread_once_t once;
    bool ok;
    char path[256];
    __typeof__(&cuptiGetResultString) get_result_string;
    __typeof__(&cuptiSubscribe) subscribe;
    __typeof__(&cuptiUnsubscribe) unsubscribe;
    __typeof__(&cuptiActivityRegisterCallbacks) register_callbacks;
    __typeof__(&cuptiActivityEnable) enable;
    __typeof__(&cuptiActivityDisable) disable;
    __typeof__(&cuptiActivityGetNextRecord) next_record;
    __typeof__(&cuptiActivityFlushAll) flush_all;
    __typeof__(&cuptiActivityGetNumDroppedRecords) num_dropped;
    __typeof__(&cuptiGetTimestamp) get_timestamp;
    __typeof__(&cuptiGetCallbackName) callback_name;                         /* optional */
    __typeof__(&cuptiActivityRegisterTimestampCallback) register_timestamp;  /* optional */
} lib = {.once = PTHREAD_ONCE_INIT};

static void lib_load_once(void)
{
    static const char *const names[] = {
        "libcupti.so.13",
        "libcupti.so",
        "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13",
        "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so",
        "/usr/local/cuda/lib64/libcupti.so.13",
        "/usr/local/cuda/lib64/libcupti.so",
    };
    void *h = NULL;
    const char *env = getenv("KVS_CUPTI_LIB");
    if (env && *env) {
        h = dlopen(env, RTLD_NOW | RTLD_LOCAL);
        if (h) kvs_seterr(lib.path, sizeof lib.path, "%s", env);
    }
    for (size_t i = 0; !h && i < KVS_ARRAY_LEN(names); i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) kvs_seterr(lib.path, sizeof lib.path, "%s", names[i]);
    }
    if (!h) {
        kvs_seterr(lib.path, sizeof lib.path, "libcupti.so.13 not found");
        return;
    }
#define SYM(field, name)                                                         \
    do {                                                                         \
        *(void **)&lib.field = dlsym(h, name);                                   \
        if (!lib.field) {                                                        \
            kvs_seterr(lib.path, sizeof lib.path, "libcupti lacks %s", name);    \
            return;                                                              \
        }                                                                        \
    } while (0)
    SYM(get_result_string, "cuptiGetResultString");
    SYM(subscribe, "cuptiSubscribe");
    SYM(unsubscribe, "cuptiUnsubscribe");
    SYM(register_callbacks, "cuptiActivityRegisterCallbacks");
    SYM(enable, "cuptiActivityEnable");
    SYM(disable, "cuptiActivityDisable");
    SYM(next_record, "cuptiActivityGetNextRecord");
    SYM(flush_all, "cuptiActivityFlushAll");
    SYM(num_dropped, "cuptiActivityGetNumDroppedRecords");
    SYM(get_timestamp, "cuptiGetTimestamp");
#undef SYM
    *(void **)&lib.callback_name = dlsym(h, "cuptiGetCallbackName");
    *(void **)&lib.register_timestamp = dlsym(h, "cuptiActivityRegisterTimestampCallback");
    lib.ok = true;
    /* the library stays loaded: CUPTI may call back at any time until the process ends */
}

static bool lib_load(void)
{
    pthread_once(&lib.once, lib_load_once);
    return lib.ok;
}

bool kvs_profiler_cupti_loadable(char *path, size_t cap)
{
    bool ok = lib_load();
    kvs_seterr(path, cap, "%s", lib.path);
    return ok;
}

const char *kvs_profiler_probe(enum kvs_prof_state *state)
{
    enum kvs_prof_state st;
    const char *msg;
    switch (kvs_gpu_driver_probe(NULL, NULL, 0)) {
    case KVS_GPU_NO_DRIVER: st = KVS_PROF_NO_DRIVER; msg = "no NVIDIA driver"; break;
    case KVS_GPU_NO_DEVICE: st = KVS_PROF_NO_GPU; msg = "no GPU"; break;
    default:
        if (lib_load()) {
            st = KVS_PROF_READY;
            msg = "CUPTI ready";
        } else {
            st = KVS_PROF_NO_CUPTI;
            msg = "CUPTI not found";
        }
    }
    if (state) *state = st;
    return msg;
}

/* The one collecting profiler (CUPTI callbacks carry no user pointer). */
static pthread_mutex_t active_mu = PTHREAD_MUTEX_INITIALIZER;
static struct kvs_profiler *active;
/* Whether CUPTI stamps activities with monotonic_timestamp (kept for the process). */
static bool timestamp_registered;
/* Code of the last failed CUPTI call (set by cupti_str from the check macro). */
static CUptiResult last_rc;

static const char *cupti_str(CUptiResult rc)
{
    const char *s = NULL;
    last_rc = rc;
    if (lib.get_result_string) lib.get_result_string(rc, &s);
    return s ? s : "unknown CUPTI result";
}

#define CUPTI_CHECK(expr) KVS_CHECK_GEN(p->err, sizeof p->err, "CUPTI", expr, CUPTI_SUCCESS, cupti_str)

static uint64_t CUPTIAPI monotonic_timestamp(void) { return kvs_now_ns(); }

static void CUPTIAPI on_buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    void *b = NULL;
    if (posix_memalign(&b, CUPTI_BUF_ALIGN, CUPTI_BUF_BYTES) != 0) b = NULL;
    *buffer = b;
    *size = b ? CUPTI_BUF_BYTES : 0;
    *max_records = 0; /* as many as fit */
}

static const char *memcpy_name(uint8_t kind)
{
    switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy DtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH: return "memcpy HtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "memcpy PtoP";
    default: return "memcpy";
    }
}

/* Readable kernel name from an Itanium-mangled one: the (possibly nested) name without its
 * parameter or template lists, "_ZN7cublasLt6kernelIfEEvv" -> "cublasLt::kernel"; anything that does
 * not parse is copied as is. */
static void kernel_name(char *dst, size_t cap, const char *m)
{
    if (!m) {
        kvs_seterr(dst, cap, "kernel");
        return;
    }
    if (strncmp(m, "_Z", 2) != 0) {
        kvs_seterr(dst, cap, "%s", m);
        return;
    }
    const char *s = m + 2;
    bool nested = *s == 'N';
    if (nested) s++;
    size_t used = 0;
    dst[0] = 0;
    while (*s >= '1' && *s <= '9') {
        char *end;
        unsigned long len = strtoul(s, &end, 10);
        if (strnlen(end, len) < len) break;
        int w = snprintf(dst + used, cap - used, "%s%.*s", used ? "::" : "", (int)len, end);
        if (w < 0 || (size_t)w >= cap - used) {
            used = cap - 1;
            break;
        }
        used += (size_t)w;
        s = end + len;
        if (!nested) break;
    }
    if (!used) kvs_seterr(dst, cap, "%s", m);
}

/* Monotonic ns relative to the run start; 0 for stamps before it. */
static uint64_t rel_ns(const struct kvs_profiler *p, uint64_t ts)
{
    int64_t mono = (int64_t)ts - p->clock_offset;
    return mono > (int64_t)p->t0_ns ? (uint64_t)mono - p->t0_ns : 0;
}

static void convert(struct kvs_profiler *p, const CUpti_Activity *rec)
{
    struct kvs_rec_kernel k;
    memset(&k, 0, sizeof k);
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const CUpti_ActivityKernel10 *a = (const CUpti_ActivityKernel10 *)rec;
        k.kind = KVS_KREC_KERNEL;
        kernel_name(k.name, sizeof k.name, a->name);
        k.stream = a->streamId;
        k.start_ns = rel_ns(p, a->start);
        k.end_ns = rel_ns(p, a->end);
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const CUpti_ActivityMemcpy6 *a = (const CUpti_ActivityMemcpy6 *)rec;
        k.kind = KVS_KREC_MEMCPY;
        kvs_seterr(k.name, sizeof k.name, "%s", memcpy_name(a->copyKind));
        k.stream = a->streamId;
        k.start_ns = rel_ns(p, a->start);
        k.end_ns = rel_ns(p, a->end);
        k.bytes = a->bytes;
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
        const CUpti_ActivityMemset4 *a = (const CUpti_ActivityMemset4 *)rec;
        k.kind = KVS_KREC_MEMSET;
        kvs_seterr(k.name, sizeof k.name, "memset");
        k.stream = a->streamId;
        k.start_ns = rel_ns(p, a->start);
        k.end_ns = rel_ns(p, a->end);
        k.bytes = a->bytes;
        break;
    }
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
        const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)rec;
        const char *name = NULL;
        if (lib.callback_name) lib.callback_name(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
        k.kind = KVS_KREC_RUNTIME;
        if (name) kvs_seterr(k.name, sizeof k.name, "%s", name);
        else kvs_seterr(k.name, sizeof k.name, "runtime api %u", (unsigned)a->cbid);
        k.start_ns = rel_ns(p, a->start);
        k.end_ns = rel_ns(p, a->end);
        break;
    }
    default:
        return;
    }
    ring_push(p, &k);
}

static void CUPTIAPI on_buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                                         size_t valid)
{
    pthread_mutex_lock(&active_mu);
    struct kvs_profiler *p = active;
    if (p && buffer && valid) {
        CUpti_Activity *rec = NULL;
        while (lib.next_record(buffer, valid, &rec) == CUPTI_SUCCESS) convert(p, rec);
        size_t dropped = 0;
        if (lib.num_dropped(ctx, stream, &dropped) == CUPTI_SUCCESS && dropped) {
            pthread_mutex_lock(&p->mu);
            p->dropped_cupti += dropped;
            pthread_mutex_unlock(&p->mu);
        }
    }
    pthread_mutex_unlock(&active_mu);
    free(buffer);
}

/* Subscribing claims CUPTI: another tool (Nsight Systems, a second profiler) makes it fail. */
static void CUPTIAPI on_callback(void *ud, CUpti_CallbackDomain domain, CUpti_CallbackId cbid, const void *data) {}

static const CUpti_ActivityKind kinds[] = {
    CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
    CUPTI_ACTIVITY_KIND_MEMCPY,
    CUPTI_ACTIVITY_KIND_MEMSET,
    CUPTI_ACTIVITY_KIND_RUNTIME,
};

enum kvs_status kvs_profiler_start(struct kvs_profiler *p, uint64_t t0_ns)
{
    enum kvs_prof_state st;
    size_t enabled = 0;
    bool subscribed = false;
    uint64_t cupti_now = 0;
    const char *why;
    if (p->state == KVS_PROF_ACTIVE) return KVS_OK;
    why = kvs_profiler_probe(&st);
    if (st != KVS_PROF_READY) {
        p->state = st;
        kvs_seterr(p->status, sizeof p->status, "%s", why);
        return KVS_ERR_UNSUPPORTED;
    }
    pthread_mutex_lock(&active_mu);
    if (active) {
        pthread_mutex_unlock(&active_mu);
        if (active == p) return KVS_OK;
        kvs_seterr(p->status, sizeof p->status, "another kvscope profiler is active");
        return KVS_ERR_STATE;
    }
    active = p; /* claimed before any callback can fire */
    pthread_mutex_unlock(&active_mu);

    p->t0_ns = t0_ns;
    p->clock_offset = 0;
    last_rc = CUPTI_SUCCESS;
    CUPTI_CHECK(lib.subscribe(&p->sub, on_callback, NULL));
    subscribed = true;
    /* stamps on our own monotonic clock when CUPTI allows it (once per process, before the first
     * enable), else an offset measured now */
    if (!timestamp_registered && lib.register_timestamp &&
        lib.register_timestamp(monotonic_timestamp) == CUPTI_SUCCESS)
        timestamp_registered = true;
    if (!timestamp_registered) {
        CUPTI_CHECK(lib.get_timestamp(&cupti_now));
        p->clock_offset = (int64_t)cupti_now - (int64_t)kvs_now_ns();
    }
    CUPTI_CHECK(lib.register_callbacks(on_buffer_requested, on_buffer_completed));
    for (; enabled < KVS_ARRAY_LEN(kinds); enabled++) CUPTI_CHECK(lib.enable(kinds[enabled]));
    p->state = KVS_PROF_ACTIVE;
    kvs_seterr(p->status, sizeof p->status, "CUPTI active (kernels, memcpy, memset, runtime)");
    return KVS_OK;
fail:
    while (enabled > 0) lib.disable(kinds[--enabled]);
    if (subscribed) lib.unsubscribe(p->sub);
    pthread_mutex_lock(&active_mu);
    active = NULL;
    pthread_mutex_unlock(&active_mu);
    if (last_rc == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED) {
        p->state = KVS_PROF_BUSY;
        kvs_seterr(p->status, sizeof p->status, "CUPTI busy (another profiler)");
    } else if (last_rc == CUPTI_ERROR_INSUFFICIENT_PRIVILEGES) {
        p->state = KVS_PROF_ERROR;
        kvs_seterr(p->status, sizeof p->status, "CUPTI error: insufficient privileges for profiling");
    } else {
        p->state = KVS_PROF_ERROR;
        kvs_seterr(p->status, sizeof p->status, "CUPTI error: %.170s", p->err);
    }
    return KVS_ERR_UNSUPPORTED;
}

void kvs_profiler_flush(struct kvs_profiler *p)
{
    if (p->state == KVS_PROF_ACTIVE) lib.flush_all(0);
}

void kvs_profiler_stop(struct kvs_profiler *p)
{
    if (p->state != KVS_PROF_ACTIVE) return;
    /* forced: hand over partially filled buffers too, while we are still the active profiler */
    lib.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    for (size_t i = KVS_ARRAY_LEN(kinds); i > 0; i--) lib.disable(kinds[i - 1]);
    lib.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    lib.unsubscribe(p->sub);
    pthread_mutex_lock(&active_mu);
    if (active == p) active = NULL;
    pthread_mutex_unlock(&active_mu);
    p->state = KVS_PROF_READY;
    kvs_seterr(p->status, sizeof p->status, "CUPTI stopped");
}

void kvs_profiler_delete(struct kvs_profiler *p)
{
    if (!p) return;
    kvs_profiler_stop(p);
    pthread_mutex_destroy(&p->mu);
    free(p->ring);
    free(p);
}

#endif
