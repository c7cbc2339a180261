/* CUPTI profiler (profiler.h): libcupti (.so.13 or .so.12) is dlopen'd, never linked; the activity
 * API collects CONCURRENT_KERNEL, MEMCPY, MEMSET and RUNTIME records (never KIND_KERNEL: it
 * serialises kernels) into buffers whose completion callback copies them into a mutex-guarded ring.
 * Records are read through the field offsets every layout since CUDA 8 shares (checked against the
 * header at compile time), so a library older or newer than the header is read right; runtime-API
 * records are aggregated per call so they cannot flood the ring. Degrades: CUPTI support not built
 * -> no NVIDIA driver -> no GPU -> CUPTI not found or too old -> CUPTI busy. Uses cupti.h for types
 * only when KVS_HAVE_CUPTI is defined; depends on libc, libdl, pthreads. */
#include "profiler.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
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
    /* runtime-API throttle: per callback id (mod RT_SLOTS), when the last kept record ended and how
     * many calls were folded into the next one kept */
    uint64_t rt_last_ns[256];
    uint32_t rt_folded[256];
    uint64_t rt_folded_total;
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
void kvs_profiler_convert_record(struct kvs_profiler *p, const void *rec) {}

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
/* CUPTI API versions: CUDA 12.x reports 18..2x, CUDA 13 130001. Libraries before CUDA 10 (12) are
 * refused; the record layouts read below have been stable since CUDA 8. */
#define KVS_CUPTI_MIN_API 12u
/* A runtime-API call of one kind is kept at most once per window; the calls in between are folded
 * into the next one kept ("cudaLaunchKernel x38"). */
#define RT_WINDOW_NS 1000000ull
#define RT_SLOTS 256u

/* Field offsets shared by every layout of these record kinds since CUDA 8 (Kernel3..Kernel10,
 * Memcpy..Memcpy6, Memset..Memset4). CUPTI fills records in the layout of the library loaded, which
 * may be older or newer than the header this file was built with: reading through these offsets
 * (never through the newest struct) is right for both. */
enum {
    KREC_START = 16, KREC_END = 24, KREC_KSTREAM = 48, KREC_KNAME = 104, /* kernel */
    KREC_COPYKIND = 4, KREC_BYTES = 8, KREC_MSTREAM = 40,                /* memcpy and memset */
    KREC_API_CBID = 4, KREC_API_START = 8, KREC_API_END = 16,            /* runtime API */
};
_Static_assert(offsetof(CUpti_ActivityKernel4, start) == KREC_START && offsetof(CUpti_ActivityKernel4, end) == KREC_END &&
                   offsetof(CUpti_ActivityKernel4, streamId) == KREC_KSTREAM &&
                   offsetof(CUpti_ActivityKernel4, name) == KREC_KNAME,
               "kernel record layout changed: read it by version");
_Static_assert(offsetof(CUpti_ActivityMemcpy, copyKind) == KREC_COPYKIND && offsetof(CUpti_ActivityMemcpy, bytes) == KREC_BYTES &&
                   offsetof(CUpti_ActivityMemcpy, start) == KREC_START && offsetof(CUpti_ActivityMemcpy, end) == KREC_END &&
                   offsetof(CUpti_ActivityMemcpy, streamId) == KREC_MSTREAM,
               "memcpy record layout changed: read it by version");
_Static_assert(offsetof(CUpti_ActivityMemset, bytes) == KREC_BYTES && offsetof(CUpti_ActivityMemset, start) == KREC_START &&
                   offsetof(CUpti_ActivityMemset, end) == KREC_END && offsetof(CUpti_ActivityMemset, streamId) == KREC_MSTREAM,
               "memset record layout changed: read it by version");
_Static_assert(offsetof(CUpti_ActivityAPI, cbid) == KREC_API_CBID && offsetof(CUpti_ActivityAPI, start) == KREC_API_START &&
                   offsetof(CUpti_ActivityAPI, end) == KREC_API_END,
               "runtime API record layout changed: read it by version");

static uint64_t rd_u64(const CUpti_Activity *r, size_t off)
{
    uint64_t v;
    memcpy(&v, (const char *)r + off, sizeof v);
    return v;
}
static uint32_t rd_u32(const CUpti_Activity *r, size_t off)
{
    uint32_t v;
    memcpy(&v, (const char *)r + off, sizeof v);
    return v;
}

/* Function pointers typed from the header's own declarations (typeof does not reference them). */
static struct {
    pthread_once_t once;
    bool ok;
    char path[256];
    uint32_t api_version;     /* cuptiGetVersion of the library loaded */
    __typeof__(&cuptiGetVersion) get_version;
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
    /* CUDA 13 first, then 12 (the record layouts read are the same), then whatever is installed */
    static const char *const names[] = {
        "libcupti.so.13",
        "libcupti.so.12",
        "libcupti.so",
        "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13",
        "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so.12",
        "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so",
        "/usr/local/cuda/lib64/libcupti.so.13",
        "/usr/local/cuda/lib64/libcupti.so.12",
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
        kvs_seterr(lib.path, sizeof lib.path, "libcupti.so.13 or .12 not found");
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
    SYM(get_version, "cuptiGetVersion");
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
    if (lib.get_version(&lib.api_version) != CUPTI_SUCCESS || lib.api_version < KVS_CUPTI_MIN_API) {
        char was[sizeof lib.path];
        snprintf(was, sizeof was, "%s", lib.path);
        kvs_seterr(lib.path, sizeof lib.path, "%s: CUPTI API version %u too old (need %u, CUDA 10 or newer)", was,
                   lib.api_version, KVS_CUPTI_MIN_API);
        return;
    }
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
            msg = strstr(lib.path, "too old") ? "CUPTI too old" : "CUPTI not found";
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

/* Whether a runtime-API record of callback CBID ending at END_NS is kept; a kept one gets the
 * number of calls folded into it since the last one kept (1: itself only). */
static uint32_t runtime_keep(struct kvs_profiler *p, uint32_t cbid, uint64_t end_ns)
{
    uint32_t s = cbid % RT_SLOTS;
    if (p->rt_last_ns[s] && end_ns >= p->rt_last_ns[s] && end_ns - p->rt_last_ns[s] < RT_WINDOW_NS) {
        p->rt_folded[s]++;
        p->rt_folded_total++;
        return 0;
    }
    uint32_t n = p->rt_folded[s] + 1;
    p->rt_last_ns[s] = end_ns ? end_ns : 1;
    p->rt_folded[s] = 0;
    return n;
}

static void convert(struct kvs_profiler *p, const CUpti_Activity *rec)
{
    struct kvs_rec_kernel k;
    memset(&k, 0, sizeof k);
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const char *name;
        memcpy(&name, (const char *)rec + KREC_KNAME, sizeof name);
        k.kind = KVS_KREC_KERNEL;
        kernel_name(k.name, sizeof k.name, name);
        k.stream = rd_u32(rec, KREC_KSTREAM);
        k.start_ns = rel_ns(p, rd_u64(rec, KREC_START));
        k.end_ns = rel_ns(p, rd_u64(rec, KREC_END));
        break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY:
        k.kind = KVS_KREC_MEMCPY;
        kvs_seterr(k.name, sizeof k.name, "%s", memcpy_name(*((const uint8_t *)rec + KREC_COPYKIND)));
        k.stream = rd_u32(rec, KREC_MSTREAM);
        k.start_ns = rel_ns(p, rd_u64(rec, KREC_START));
        k.end_ns = rel_ns(p, rd_u64(rec, KREC_END));
        k.bytes = rd_u64(rec, KREC_BYTES);
        break;
    case CUPTI_ACTIVITY_KIND_MEMSET:
        k.kind = KVS_KREC_MEMSET;
        kvs_seterr(k.name, sizeof k.name, "memset");
        k.stream = rd_u32(rec, KREC_MSTREAM);
        k.start_ns = rel_ns(p, rd_u64(rec, KREC_START));
        k.end_ns = rel_ns(p, rd_u64(rec, KREC_END));
        k.bytes = rd_u64(rec, KREC_BYTES);
        break;
    case CUPTI_ACTIVITY_KIND_RUNTIME: {
        uint32_t cbid = rd_u32(rec, KREC_API_CBID);
        uint64_t end = rel_ns(p, rd_u64(rec, KREC_API_END));
        uint32_t calls = runtime_keep(p, cbid, end);
        if (!calls) return;
        const char *name = NULL;
        if (lib.callback_name) lib.callback_name(CUPTI_CB_DOMAIN_RUNTIME_API, cbid, &name);
        k.kind = KVS_KREC_RUNTIME;
        char base[64];
        if (name) snprintf(base, sizeof base, "%s", name);
        else snprintf(base, sizeof base, "runtime api %u", (unsigned)cbid);
        if (calls > 1) kvs_seterr(k.name, sizeof k.name, "%s x%u", base, (unsigned)calls);
        else kvs_seterr(k.name, sizeof k.name, "%s", base);
        k.start_ns = rel_ns(p, rd_u64(rec, KREC_API_START));
        k.end_ns = end;
        break;
    }
    default:
        return;
    }
    ring_push(p, &k);
}

void kvs_profiler_convert_record(struct kvs_profiler *p, const void *rec)
{
    convert(p, (const CUpti_Activity *)rec);
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
    memset(p->rt_last_ns, 0, sizeof p->rt_last_ns);
    memset(p->rt_folded, 0, sizeof p->rt_folded);
    p->rt_folded_total = 0;
    kvs_seterr(p->status, sizeof p->status, "CUPTI active (API %u: kernels, memcpy, memset, runtime)", lib.api_version);
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
    kvs_seterr(p->status, sizeof p->status, "CUPTI stopped (%llu runtime-API calls folded into others)",
               (unsigned long long)p->rt_folded_total);
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
