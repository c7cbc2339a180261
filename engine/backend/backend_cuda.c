/* The CUDA backend as the engine sees it: finds and dlopens libkvscope_cuda.so ($KVS_CUDA_LIB, next
 * to the executable, the build directory, $(PREFIX)/lib/kvscope), checks its ABI, asks the driver and
 * the runtime for a GPU (or accepts the host emulation of tests/cuda_emu, which says so), and
 * implements the backend vtable: the per-token entries on device buffers (a token's activations stay
 * on the device), attention over host segments and the SVD by staging. Depends on libc,
 * libdl and kernels/kernels.h only (no CUDA headers or libraries at link time), so kvscope starts on
 * any machine; every failure is a status string. */
#include "attention.h"
#include "backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CUDA_LIB_NAME "libkvscope_cuda.so"

/* ---------------------------------------------------------------- driver probe */

static struct {
    pthread_once_t once;
    enum kvs_gpu_driver state;
    int count;
    char detail[256];
} drv = {.once = PTHREAD_ONCE_INIT};

static void driver_probe_once(void)
{
    /* CUresult is an int-sized enum; 0 is CUDA_SUCCESS, 100 CUDA_ERROR_NO_DEVICE */
    typedef int (*cu_init_fn)(unsigned);
    typedef int (*cu_count_fn)(int *);
    typedef int (*cu_errstr_fn)(int, const char **);
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        drv.state = KVS_GPU_NO_DRIVER;
        kvs_seterr(drv.detail, sizeof drv.detail, "%s", e ? e : "libcuda.so.1 not found");
        return;
    }
    cu_init_fn cu_init = (cu_init_fn)dlsym(h, "cuInit");
    cu_count_fn cu_count = (cu_count_fn)dlsym(h, "cuDeviceGetCount");
    cu_errstr_fn cu_errstr = (cu_errstr_fn)dlsym(h, "cuGetErrorString");
    if (!cu_init || !cu_count) {
        drv.state = KVS_GPU_NO_DRIVER;
        kvs_seterr(drv.detail, sizeof drv.detail, "libcuda.so.1 lacks cuInit/cuDeviceGetCount");
        return;
    }
    int rc = cu_init(0);
    if (rc == 0) rc = cu_count(&drv.count);
    if (rc != 0 || drv.count <= 0) {
        const char *s = NULL;
        if (rc != 0 && cu_errstr) cu_errstr(rc, &s);
        drv.state = KVS_GPU_NO_DEVICE;
        drv.count = 0;
        kvs_seterr(drv.detail, sizeof drv.detail, "driver: %s (%d)", s ? s : rc ? "error" : "no devices", rc);
        return;
    }
    drv.state = KVS_GPU_PRESENT;
    kvs_seterr(drv.detail, sizeof drv.detail, "driver: %d device(s)", drv.count);
    /* the handle stays open: the driver is not meant to be unloaded */
}

enum kvs_gpu_driver kvs_gpu_driver_probe(int *count, char *detail, size_t cap)
{
    pthread_once(&drv.once, driver_probe_once);
    if (count) *count = drv.count;
    if (detail && cap) kvs_seterr(detail, cap, "%s", drv.detail);
    return drv.state;
}

/* ---------------------------------------------------------------- library discovery */

static struct {
    pthread_once_t once;
    struct kvs_backend_cuda_info info;
    const struct kvs_cuda_api *api;
} cu = {.once = PTHREAD_ONCE_INIT};

static bool readable(const char *p) { return p && *p && access(p, R_OK) == 0; }

/* Directory of the running executable into buf (no trailing slash); false when unknown. */
static bool exe_dir(char *buf, size_t cap)
{
    char tmp[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", tmp, sizeof tmp - 1);
    if (n <= 0) return false;
    tmp[n] = 0;
    char *slash = strrchr(tmp, '/');
    if (!slash) return false;
    *slash = 0;
    if ((size_t)(slash - tmp) >= cap) return false;
    memcpy(buf, tmp, (size_t)(slash - tmp) + 1);
    return true;
}

/* First readable candidate into info->lib_path; false (with a detail) when none. */
static bool find_library(struct kvs_backend_cuda_info *in)
{
    const char *env = getenv("KVS_CUDA_LIB");
    if (env && *env) {
        kvs_seterr(in->lib_path, sizeof in->lib_path, "%s", env);
        if (readable(env)) return true;
        kvs_seterr(in->detail, sizeof in->detail, "KVS_CUDA_LIB=%s is not readable", env);
        return false;
    }
    char dir[PATH_MAX / 2];
    char cand[PATH_MAX];
    if (exe_dir(dir, sizeof dir)) {
        kvs_seterr(cand, sizeof cand, "%s/" CUDA_LIB_NAME, dir);
        if (readable(cand)) goto found;
    }
#ifdef KVS_BUILD_DIR
    kvs_seterr(cand, sizeof cand, "%s/" CUDA_LIB_NAME, KVS_BUILD_DIR);
    if (readable(cand)) goto found;
#endif
#ifdef KVS_PREFIX
    kvs_seterr(cand, sizeof cand, "%s/lib/kvscope/" CUDA_LIB_NAME, KVS_PREFIX);
    if (readable(cand)) goto found;
#endif
    /* an installed tree is relocatable: PREFIX/bin/kvscope next to PREFIX/lib/kvscope/ */
    if (exe_dir(dir, sizeof dir)) {
        kvs_seterr(cand, sizeof cand, "%s/../lib/kvscope/" CUDA_LIB_NAME, dir);
        if (readable(cand)) goto found;
    }
    kvs_seterr(in->detail, sizeof in->detail, CUDA_LIB_NAME " not found next to the executable, in the build "
             "directory or under lib/kvscope (set KVS_CUDA_LIB to point at it)");
    return false;
found:
    if (strlen(cand) >= sizeof in->lib_path) {
        kvs_seterr(in->detail, sizeof in->detail, "path of " CUDA_LIB_NAME " too long");
        return false;
    }
    memcpy(in->lib_path, cand, strlen(cand) + 1);
    return true;
}

static void cuda_probe_once(void)
{
    struct kvs_backend_cuda_info *in = &cu.info;
    char ddetail[256] = "";
    enum kvs_gpu_driver dstate;

    in->lib_found = find_library(in);
    if (!in->lib_found) {
        kvs_seterr(in->status, sizeof in->status, "CUDA backend not built");
        return;
    }

    /* RTLD_LOCAL: the CUDA libraries' symbols stay out of the global namespace */
    void *h = dlopen(in->lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        kvs_seterr(in->detail, sizeof in->detail, "%s", e ? e : "dlopen failed");
        in->driver_loaded = kvs_gpu_driver_probe(NULL, NULL, 0) != KVS_GPU_NO_DRIVER;
        kvs_seterr(in->status, sizeof in->status, "%s",
                 in->driver_loaded ? "CUDA runtime libraries missing" : "no NVIDIA driver");
        return;
    }
    kvs_cuda_get_api_fn get = (kvs_cuda_get_api_fn)dlsym(h, KVS_CUDA_ENTRY);
    const struct kvs_cuda_api *api = get ? get() : NULL;
    if (!api) {
        kvs_seterr(in->status, sizeof in->status, "CUDA backend library is invalid");
        kvs_seterr(in->detail, sizeof in->detail, "%s has no " KVS_CUDA_ENTRY, in->lib_path);
        return;
    }
    if (api->abi_version != KVS_CUDA_ABI_VERSION || api->struct_size < sizeof(struct kvs_cuda_api)) {
        kvs_seterr(in->status, sizeof in->status, "CUDA backend ABI mismatch (library v%u, kvscope v%u)",
                 api->abi_version, KVS_CUDA_ABI_VERSION);
        kvs_seterr(in->detail, sizeof in->detail, "rebuild %s", in->lib_path);
        return;
    }
    /* The host emulation of the kernels (tests/cuda_emu) marks itself: it needs no driver, and its
     * device name says that no GPU is involved. */
    typedef const char *(*emu_marker_fn)(void);
    emu_marker_fn emulated = (emu_marker_fn)dlsym(h, "kvs_cuda_emulation");
    if (emulated) {
        in->lib_loaded = true;
        api->probe(&in->probe);
        if (in->probe.status != KVS_CUDA_PROBE_OK) {
            kvs_seterr(in->status, sizeof in->status, "CUDA emulation failed its probe");
            kvs_seterr(in->detail, sizeof in->detail, "%s: %s", in->lib_path, in->probe.message);
            return;
        }
        in->available = true;
        cu.api = api;
        kvs_seterr(in->status, sizeof in->status, "cuda: %.100s (sm_%d%d)", in->probe.name, in->probe.cc_major,
                 in->probe.cc_minor);
        kvs_seterr(in->detail, sizeof in->detail, "%s: %.120s, no GPU in use", in->lib_path, emulated());
        return;
    }
    dstate = kvs_gpu_driver_probe(NULL, ddetail, sizeof ddetail);
    in->driver_loaded = dstate != KVS_GPU_NO_DRIVER;
    in->lib_loaded = true;
    /* the runtime answers sensibly without a driver too (cudaErrorInsufficientDriver) */
    api->probe(&in->probe);
    const struct kvs_cuda_probe *p = &in->probe;
    if (!in->driver_loaded) {
        kvs_seterr(in->status, sizeof in->status, "no NVIDIA driver");
        kvs_seterr(in->detail, sizeof in->detail, "%s", ddetail);
        return;
    }
    switch (p->status) {
    case KVS_CUDA_PROBE_OK:
        break;
    case KVS_CUDA_PROBE_NO_DRIVER:
        kvs_seterr(in->status, sizeof in->status, "no NVIDIA driver");
        kvs_seterr(in->detail, sizeof in->detail, "%s", p->message);
        return;
    case KVS_CUDA_PROBE_OLD_DRIVER:
        kvs_seterr(in->status, sizeof in->status, "NVIDIA driver too old for CUDA %d.%d", p->runtime_version / 1000,
                 p->runtime_version % 1000 / 10);
        kvs_seterr(in->detail, sizeof in->detail, "driver supports CUDA %d.%d: %s", p->driver_version / 1000,
                 p->driver_version % 1000 / 10, p->message);
        return;
    case KVS_CUDA_PROBE_NO_GPU:
        kvs_seterr(in->status, sizeof in->status, "no GPU");
        kvs_seterr(in->detail, sizeof in->detail, "%s; %s", p->message, ddetail);
        return;
    default:
        kvs_seterr(in->status, sizeof in->status, "CUDA error: %.140s", p->message);
        kvs_seterr(in->detail, sizeof in->detail, "cudaGetDeviceCount returned %d", p->runtime_error);
        return;
    }
    in->available = true;
    cu.api = api;
    kvs_seterr(in->status, sizeof in->status, "cuda: %.100s (sm_%d%d)", p->name, p->cc_major, p->cc_minor);
    /* the library stays loaded for the life of the process: CUDA does not support unloading well */
}

const char *kvs_backend_probe(bool *available)
{
    pthread_once(&cu.once, cuda_probe_once);
    if (available) *available = cu.info.available;
    return cu.info.status;
}

static struct {
    pthread_once_t once;
    char line[sizeof cu.info.status + sizeof cu.info.detail + 8];
} probe_line = {.once = PTHREAD_ONCE_INIT};

static void probe_line_once(void)
{
    pthread_once(&cu.once, cuda_probe_once);
    if (cu.info.detail[0]) snprintf(probe_line.line, sizeof probe_line.line, "%s (%s)", cu.info.status, cu.info.detail);
    else snprintf(probe_line.line, sizeof probe_line.line, "%s", cu.info.status);
}

const char *kvs_backend_probe_detail(void)
{
    pthread_once(&probe_line.once, probe_line_once);
    return probe_line.line;
}

const struct kvs_backend_cuda_info *kvs_backend_cuda_info(void)
{
    pthread_once(&cu.once, cuda_probe_once);
    return &cu.info;
}

/* ---------------------------------------------------------------- backend on host pointers */

enum {
    ST_X, ST_Y, ST_W, ST_POS, ST_QPOS, ST_FREQS, ST_C, ST_V, ST_BK, ST_BV, ST_U, ST_S, ST_VT, ST_COUNT
};

struct cuda_be {
    const struct kvs_cuda_api *api;
    struct kvs_cuda_ctx *cx;
    void *buf[ST_COUNT];      /* device staging buffers, grown on demand */
    size_t cap[ST_COUNT];
    int weight_dtype;         /* enum kvs_cuda_dtype */
};

static enum kvs_status api_fail(struct kvs_backend *b, const char *what)
{
    struct cuda_be *s = b->ctx;
    kvs_seterr(b->err, sizeof b->err, "%s: %s", what, s->api->last_error(s->cx));
    return KVS_ERR_BACKEND;
}

/* Device buffer SLOT of at least BYTES (NULL with b->err set on failure). */
static void *stage(struct kvs_backend *b, int slot, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (s->buf[slot] && s->cap[slot] >= bytes) return s->buf[slot];
    size_t cap = bytes + bytes / 2;
    if (cap < 4096) cap = 4096;
    s->api->free(s->cx, s->buf[slot]);
    s->buf[slot] = NULL;
    s->cap[slot] = 0;
    if (s->api->alloc(s->cx, &s->buf[slot], cap) != KVS_CUDA_OK) {
        api_fail(b, "device allocation");
        return NULL;
    }
    s->cap[slot] = cap;
    return s->buf[slot];
}

/* Stages BYTES from host SRC into SLOT; *dev receives the device pointer. */
static enum kvs_status put(struct kvs_backend *b, int slot, const void *src, size_t bytes, void **dev)
{
    struct cuda_be *s = b->ctx;
    void *d = stage(b, slot, bytes);
    if (!d) return KVS_ERR_BACKEND;
    if (bytes && s->api->upload(s->cx, d, src, bytes) != KVS_CUDA_OK) return api_fail(b, "upload");
    *dev = d;
    return KVS_OK;
}

static enum kvs_status get(struct kvs_backend *b, void *dst, const void *dev, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (s->api->download(s->cx, dst, dev, bytes) != KVS_CUDA_OK) return api_fail(b, "download");
    return KVS_OK;
}

#define TRY(expr)                               \
    do {                                        \
        enum kvs_status try_st_ = (expr);       \
        if (try_st_ != KVS_OK) return try_st_;  \
    } while (0)

/* ---- buffers: device memory; staging in pinned host memory ---- */

static enum kvs_status cu_buf_alloc(struct kvs_backend *b, void **data, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (s->api->alloc(s->cx, data, bytes) != KVS_CUDA_OK) return api_fail(b, "device allocation");
    return KVS_OK;
}

static void cu_buf_free(struct kvs_backend *b, void *data)
{
    struct cuda_be *s = b->ctx;
    s->api->free(s->cx, data);
}

static enum kvs_status cu_buf_upload(struct kvs_backend *b, void *dst, const void *src, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (s->api->upload(s->cx, dst, src, bytes) != KVS_CUDA_OK) return api_fail(b, "upload");
    return KVS_OK;
}

static enum kvs_status cu_buf_download(struct kvs_backend *b, void *dst, const void *src, size_t bytes)
{
    return get(b, dst, src, bytes);
}

static enum kvs_status cu_host_alloc(struct kvs_backend *b, void **p, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (s->api->host_alloc(s->cx, p, bytes) != KVS_CUDA_OK) return api_fail(b, "pinned host allocation");
    return KVS_OK;
}

static void cu_host_free(struct kvs_backend *b, void *p)
{
    struct cuda_be *s = b->ctx;
    s->api->host_free(s->cx, p);
}

static void cu_range_push(struct kvs_backend *b, const char *name)
{
    struct cuda_be *s = b->ctx;
    s->api->range_push(s->cx, name);
}

static void cu_range_pop(struct kvs_backend *b)
{
    struct cuda_be *s = b->ctx;
    s->api->range_pop(s->cx);
}

/* ---- per-token operations on device buffers ---- */

static enum kvs_status cu_rmsnorm(struct kvs_backend *b, float *out, const float *x, const float *w, int T, int n,
                                  float eps)
{
    struct cuda_be *s = b->ctx;
    if (s->api->rmsnorm(s->cx, out, x, w, T, n, eps) != KVS_CUDA_OK) return api_fail(b, "rmsnorm");
    return KVS_OK;
}

static enum kvs_status cu_rope(struct kvs_backend *b, float *x, int T, int n_heads, int head_dim,
                               const int32_t *pos, const float *freqs, bool neox)
{
    struct cuda_be *s = b->ctx;
    if (s->api->rope(s->cx, x, T, n_heads, head_dim, pos, freqs, neox) != KVS_CUDA_OK) return api_fail(b, "rope");
    return KVS_OK;
}

static enum kvs_status cu_embed(struct kvs_backend *b, const struct kvs_backend_weight *bw, const int32_t *tokens,
                                int T, float *out)
{
    struct cuda_be *s = b->ctx;
    if (s->api->embed(s->cx, bw->dev, tokens, T, out) != KVS_CUDA_OK) return api_fail(b, "embed");
    return KVS_OK;
}

static enum kvs_status cu_add_bias(struct kvs_backend *b, float *y, const float *bias, int T, int n)
{
    struct cuda_be *s = b->ctx;
    if (s->api->add_bias(s->cx, y, bias, T, n) != KVS_CUDA_OK) return api_fail(b, "add_bias");
    return KVS_OK;
}

static enum kvs_status cu_add(struct kvs_backend *b, float *x, const float *y, size_t n)
{
    struct cuda_be *s = b->ctx;
    if (s->api->add(s->cx, x, y, (int64_t)n) != KVS_CUDA_OK) return api_fail(b, "add");
    return KVS_OK;
}

static enum kvs_status cu_swiglu(struct kvs_backend *b, float *g, const float *u, size_t n)
{
    struct cuda_be *s = b->ctx;
    if (s->api->swiglu(s->cx, g, u, (int64_t)n) != KVS_CUDA_OK) return api_fail(b, "swiglu");
    return KVS_OK;
}

/* Largest |value| of W (dequantized on the host, a few MiB at a time into TMP of CHUNK rows). */
static float weight_absmax(const struct kvs_weight *w, float *tmp, int64_t chunk)
{
    float mx = 0;
    for (int64_t r0 = 0; r0 < w->rows; r0 += chunk) {
        int64_t nr = KVS_MIN(chunk, w->rows - r0);
        for (int64_t r = 0; r < nr; r++) kvs_weight_row_f32(w, r0 + r, tmp + r * w->cols);
        for (int64_t i = 0; i < nr * w->cols; i++) {
            float a = fabsf(tmp[i]);
            mx = a > mx || a != a ? a : mx; /* NaN stays visible */
        }
    }
    return mx;
}

static enum kvs_status cu_weight_prepare(struct kvs_backend *b, struct kvs_backend_weight *bw)
{
    struct cuda_be *s = b->ctx;
    const struct kvs_weight *w = bw->w;
    struct kvs_cuda_weight *dw = NULL;
    if (!w || w->rows <= 0 || w->cols <= 0) {
        kvs_seterr(b->err, sizeof b->err, "weight_prepare: empty weight");
        return KVS_ERR_ARG;
    }
    /* dequantize on the host a few MiB at a time; the device converts to fp16/bf16 */
    int64_t chunk = KVS_MAX((int64_t)1, ((int64_t)8 << 20) / (w->cols * (int64_t)sizeof(float)));
    chunk = KVS_MIN(chunk, w->rows);
    float *tmp = malloc((size_t)chunk * (size_t)w->cols * sizeof(float));
    if (!tmp) {
        kvs_seterr(b->err, sizeof b->err, "weight_prepare: out of memory");
        return KVS_ERR_NOMEM;
    }
    int dtype = s->weight_dtype;
    /* a lookup table is never a GEMM operand: fp16 keeps 3 more mantissa bits than bf16 whenever
     * every value is inside its range */
    if (bw->table && dtype == KVS_CUDA_BF16 && weight_absmax(w, tmp, chunk) <= 65504.0f) dtype = KVS_CUDA_F16;
    if (s->api->weight_new(s->cx, &dw, w->rows, w->cols, dtype) != KVS_CUDA_OK) {
        free(tmp);
        return api_fail(b, "weight upload");
    }
    uint64_t saturated = 0;
    for (int64_t r0 = 0; r0 < w->rows; r0 += chunk) {
        int64_t nr = KVS_MIN(chunk, w->rows - r0);
        for (int64_t r = 0; r < nr; r++) kvs_weight_row_f32(w, r0 + r, tmp + r * w->cols);
        if (dtype == KVS_CUDA_F16) /* the upload clamps these to ±65504: counted, never silent */
            for (int64_t i = 0; i < nr * w->cols; i++) saturated += fabsf(tmp[i]) > 65504.0f;
        if (s->api->weight_set_rows(s->cx, dw, r0, nr, tmp) != KVS_CUDA_OK) {
            free(tmp);
            enum kvs_status st = api_fail(b, "weight upload");
            s->api->weight_free(s->cx, dw);
            return st;
        }
    }
    free(tmp);
    b->weights_saturated += saturated;
    bw->dev = dw;
    return KVS_OK;
}

static enum kvs_status cu_set_weights(struct kvs_backend *b, const char *want)
{
    struct cuda_be *s = b->ctx;
    int cc = s->api->compute_capability(s->cx);
    /* bf16 tensor-core GEMMs need sm_80 (Ampere); before it fp16 is the only 2-byte type, with its
     * saturation counted at upload (b->weights_saturated) */
    bool bf16_ok = cc >= 80;
    if (!strcmp(want, "bf16") && !bf16_ok) {
        kvs_seterr(b->err, sizeof b->err, "bf16 weights need compute capability 8.0 (sm_80) or newer; this GPU is "
                   "sm_%d: use --weights fp16 or auto", cc);
        return KVS_ERR_UNSUPPORTED;
    }
    s->weight_dtype = !strcmp(want, "fp16") || !bf16_ok ? KVS_CUDA_F16 : KVS_CUDA_BF16;
    snprintf(b->weights, sizeof b->weights, "%s", s->weight_dtype == KVS_CUDA_BF16 ? "bf16" : "fp16");
    return KVS_OK;
}

static void cu_weight_release(struct kvs_backend *b, struct kvs_backend_weight *bw)
{
    struct cuda_be *s = b->ctx;
    s->api->weight_free(s->cx, bw->dev);
    bw->dev = NULL;
}

static enum kvs_status cu_matmul(struct kvs_backend *b, const struct kvs_backend_weight *bw, const float *x,
                                 float *y, int T)
{
    struct cuda_be *s = b->ctx;
    if (s->api->matmul(s->cx, bw->dev, x, y, T) != KVS_CUDA_OK) return api_fail(b, "matmul");
    return KVS_OK;
}

/* Concatenates N_SEGS host runs (ELEM bytes per token, counts from N_OF) into device SLOT. */
static enum kvs_status put_segs(struct kvs_backend *b, int slot, int n_segs, const void *const *src,
                                const int *counts, size_t elem, int64_t n, void **dev)
{
    struct cuda_be *s = b->ctx;
    char *d = stage(b, slot, (size_t)n * elem);
    if (!d) return KVS_ERR_BACKEND;
    size_t off = 0;
    for (int i = 0; i < n_segs; i++) {
        size_t bytes = (size_t)counts[i] * elem;
        if (bytes && s->api->upload(s->cx, d + off, src[i], bytes) != KVS_CUDA_OK) return api_fail(b, "upload");
        off += bytes;
    }
    *dev = d;
    return KVS_OK;
}

/* Total token count of the segments; -1 when a count is negative or the sum exceeds INT_MAX. */
static int64_t seg_total(const int *counts, int n_segs)
{
    int64_t n = 0;
    for (int i = 0; i < n_segs; i++) {
        if (counts[i] < 0) return -1;
        n += counts[i];
    }
    return n > INT_MAX ? -1 : n;
}

static enum kvs_status cu_attn_latent(struct kvs_backend *b, const struct kvs_attn_latent_args *a, const float *q,
                                      float *out)
{
    struct cuda_be *s = b->ctx;
    enum kvs_status st = KVS_ERR_NOMEM;
    if (a->n_segs < 0 || a->T < 0) return KVS_ERR_ARG;
    int ns = a->n_segs;
    const void **cs = malloc((size_t)(ns ? ns : 1) * sizeof *cs);
    const void **ps = malloc((size_t)(ns ? ns : 1) * sizeof *ps);
    int *counts = malloc((size_t)(ns ? ns : 1) * sizeof *counts);
    if (!cs || !ps || !counts) goto done;
    for (int i = 0; i < ns; i++) {
        cs[i] = a->segs[i].c;
        ps[i] = a->segs[i].pos;
        counts[i] = a->segs[i].n;
    }
    int64_t n = seg_total(counts, ns);
    st = KVS_ERR_ARG;
    if (n < 0 || a->n_head <= 0 || a->head_dim <= 0 || a->rank <= 0 || a->n_head_kv <= 0) goto done;
    size_t dq = (size_t)a->n_head * a->head_dim, dkv = (size_t)a->n_head_kv * a->head_dim;
    size_t obytes = (size_t)a->T * dq * sizeof(float);
    struct kvs_cuda_attn_latent d = {.T = a->T, .n = (int)n, .n_head = a->n_head, .n_head_kv = a->n_head_kv,
                                     .head_dim = a->head_dim, .rank = a->rank, .neox = a->neox,
                                     .scale = a->scale};
    void *dq_, *dqp, *dc, *dp, *dbk, *dbv, *df, *dout;
    if ((st = put(b, ST_X, q, obytes, &dq_)) != KVS_OK) goto done;
    if ((st = put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp)) != KVS_OK) goto done;
    if ((st = put_segs(b, ST_C, ns, cs, counts, (size_t)a->rank * sizeof(float), n, &dc)) != KVS_OK) goto done;
    if ((st = put_segs(b, ST_POS, ns, ps, counts, sizeof(int32_t), n, &dp)) != KVS_OK) goto done;
    if ((st = put(b, ST_BK, a->bk, dkv * a->rank * sizeof(float), &dbk)) != KVS_OK) goto done;
    if ((st = put(b, ST_BV, a->bv, dkv * a->rank * sizeof(float), &dbv)) != KVS_OK) goto done;
    if ((st = put(b, ST_FREQS, a->freqs, (size_t)(a->head_dim / 2) * sizeof(float), &df)) != KVS_OK) goto done;
    st = KVS_ERR_BACKEND;
    if (!(dout = stage(b, ST_Y, obytes))) goto done;
    d.q = dq_;
    d.q_pos = dqp;
    d.c = dc;
    d.pos = dp;
    d.bk = dbk;
    d.bv = dbv;
    d.freqs = df;
    d.out = dout;
    if (s->api->attn_latent(s->cx, &d) != KVS_CUDA_OK) {
        st = api_fail(b, "attn_latent");
        goto done;
    }
    st = get(b, out, dout, obytes);
done:
    free(cs);
    free(ps);
    free(counts);
    return st;
}

static enum kvs_status cu_attn_kv16(struct kvs_backend *b, const struct kvs_attn_kv16_args *a, const float *q,
                                    float *out)
{
    struct cuda_be *s = b->ctx;
    enum kvs_status st = KVS_ERR_NOMEM;
    if (a->n_segs < 0 || a->T < 0) return KVS_ERR_ARG;
    int ns = a->n_segs;
    const void **ks = malloc((size_t)(ns ? ns : 1) * sizeof *ks);
    const void **vs = malloc((size_t)(ns ? ns : 1) * sizeof *vs);
    const void **ps = malloc((size_t)(ns ? ns : 1) * sizeof *ps);
    int *counts = malloc((size_t)(ns ? ns : 1) * sizeof *counts);
    if (!ks || !vs || !ps || !counts) goto done;
    for (int i = 0; i < ns; i++) {
        ks[i] = a->segs[i].k;
        vs[i] = a->segs[i].v;
        ps[i] = a->segs[i].pos;
        counts[i] = a->segs[i].n;
    }
    int64_t n = seg_total(counts, ns);
    st = KVS_ERR_ARG;
    if (n < 0 || a->n_head <= 0 || a->head_dim <= 0 || a->n_head_kv <= 0) goto done;
    size_t dq = (size_t)a->n_head * a->head_dim, dkv = (size_t)a->n_head_kv * a->head_dim;
    size_t obytes = (size_t)a->T * dq * sizeof(float);
    struct kvs_cuda_attn_kv16 d = {.T = a->T, .n = (int)n, .n_head = a->n_head, .n_head_kv = a->n_head_kv,
                                   .head_dim = a->head_dim, .scale = a->scale};
    void *dq_, *dqp, *dk, *dv, *dp, *dout;
    if ((st = put(b, ST_X, q, obytes, &dq_)) != KVS_OK) goto done;
    if ((st = put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp)) != KVS_OK) goto done;
    if ((st = put_segs(b, ST_C, ns, ks, counts, dkv * sizeof(uint16_t), n, &dk)) != KVS_OK) goto done;
    if ((st = put_segs(b, ST_V, ns, vs, counts, dkv * sizeof(uint16_t), n, &dv)) != KVS_OK) goto done;
    if ((st = put_segs(b, ST_POS, ns, ps, counts, sizeof(int32_t), n, &dp)) != KVS_OK) goto done;
    st = KVS_ERR_BACKEND;
    if (!(dout = stage(b, ST_Y, obytes))) goto done;
    d.q = dq_;
    d.q_pos = dqp;
    d.k = dk;
    d.v = dv;
    d.pos = dp;
    d.out = dout;
    if (s->api->attn_kv16(s->cx, &d) != KVS_CUDA_OK) {
        st = api_fail(b, "attn_kv16");
        goto done;
    }
    st = get(b, out, dout, obytes);
done:
    free(ks);
    free(vs);
    free(ps);
    free(counts);
    return st;
}

static enum kvs_status cu_svd(struct kvs_backend *b, const float *a, int m, int n, float *u, float *sv, float *vt)
{
    struct cuda_be *s = b->ctx;
    void *da, *du, *ds, *dvt;
    if (m <= 0 || n <= 0) return KVS_ERR_ARG;
    size_t k = (size_t)KVS_MIN(m, n);
    TRY(put(b, ST_X, a, (size_t)m * n * sizeof(float), &da));
    if (!(du = stage(b, ST_U, (size_t)m * k * sizeof(float)))) return KVS_ERR_BACKEND;
    if (!(ds = stage(b, ST_S, k * sizeof(float)))) return KVS_ERR_BACKEND;
    if (!(dvt = stage(b, ST_VT, k * n * sizeof(float)))) return KVS_ERR_BACKEND;
    if (s->api->svd(s->cx, da, m, n, du, ds, dvt) != KVS_CUDA_OK) return api_fail(b, "svd");
    TRY(get(b, u, du, (size_t)m * k * sizeof(float)));
    TRY(get(b, sv, ds, k * sizeof(float)));
    return get(b, vt, dvt, k * n * sizeof(float));
}

/* ---- K/V pool rows in device memory (twins: engine/cpu/kv_pool.c) ---- */

static void cu_rows_free(struct cuda_be *s, void **k, void **v, void **pos)
{
    s->api->free(s->cx, *k);
    s->api->free(s->cx, *v);
    s->api->free(s->cx, *pos);
    *k = *v = *pos = NULL;
}

static enum kvs_status cu_kv_grow(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int cap)
{
    struct cuda_be *s = b->ctx;
    if (dkv <= 0 || cap < L->n) return KVS_ERR_ARG;
    if (cap == 0) {
        cu_rows_free(s, &L->k, &L->v, &L->pos);
        L->cap = 0;
        return KVS_OK;
    }
    size_t row = (size_t)dkv * sizeof(uint16_t);
    if ((size_t)cap > SIZE_MAX / row) return KVS_ERR_ARG;
    void *k = NULL, *v = NULL, *p = NULL;
    if (s->api->alloc(s->cx, &k, (size_t)cap * row) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &v, (size_t)cap * row) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &p, (size_t)cap * sizeof(int32_t)) != KVS_CUDA_OK)
        goto fail;
    /* the rows held move to the new blocks on the device; the old ones go once the copies ran */
    if (L->n && (s->api->copy(s->cx, k, L->k, (size_t)L->n * row) != KVS_CUDA_OK ||
                 s->api->copy(s->cx, v, L->v, (size_t)L->n * row) != KVS_CUDA_OK ||
                 s->api->copy(s->cx, p, L->pos, (size_t)L->n * sizeof(int32_t)) != KVS_CUDA_OK))
        goto fail;
    cu_rows_free(s, &L->k, &L->v, &L->pos);
    L->k = k, L->v = v, L->pos = p;
    L->cap = cap;
    return KVS_OK;
fail:;
    enum kvs_status st = api_fail(b, "kv_grow");
    cu_rows_free(s, &k, &v, &p);
    return st;
}

static enum kvs_status cu_kv_store(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, int T,
                                   const int32_t *pos, const float *k, const float *v)
{
    struct cuda_be *s = b->ctx;
    if (T < 0 || dkv <= 0 || L->n + T > L->cap) return KVS_ERR_ARG;
    if (T == 0) return KVS_OK;
    /* k, v are device buffers: only the positions come from the host */
    if (s->api->upload(s->cx, (int32_t *)L->pos + L->n, pos, (size_t)T * sizeof(int32_t)) != KVS_CUDA_OK)
        return api_fail(b, "kv_store");
    if (s->api->kv_store(s->cx, L->k, L->v, dkv, L->n, T, k, v) != KVS_CUDA_OK) return api_fail(b, "kv_store");
    L->n += T;
    return KVS_OK;
}

static enum kvs_status cu_kv_attend(struct kvs_backend *b, const struct kvs_kv_rows *L,
                                    const struct kvs_kv_attend_args *a, const float *q, float *out, float *mass)
{
    struct cuda_be *s = b->ctx;
    void *dqp, *dmass = NULL;
    if (a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->head_dim <= 0) return KVS_ERR_ARG;
    struct kvs_cuda_attn_kv16 d = {.T = a->T, .n = L->n, .n_head = a->n_head, .n_head_kv = a->n_head_kv,
                                   .head_dim = a->head_dim, .q = q, .k = L->k, .v = L->v, .pos = L->pos,
                                   .scale = 1.0f / sqrtf((float)a->head_dim), .out = out};
    /* q and out are device buffers; the query positions go up, the mass (when asked) comes back */
    TRY(put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp));
    if (mass && !(dmass = stage(b, ST_U, (size_t)L->n * sizeof(float)))) return KVS_ERR_BACKEND;
    d.q_pos = dqp;
    d.mass = dmass;
    if (s->api->attn_kv16(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "kv_attend");
    if (mass) TRY(get(b, mass, dmass, (size_t)L->n * sizeof(float)));
    return KVS_OK;
}

static enum kvs_status cu_kv_compact(struct kvs_backend *b, struct kvs_kv_rows *L, int dkv, const uint8_t *keep)
{
    struct cuda_be *s = b->ctx;
    void *dsrc;
    if (dkv <= 0) return KVS_ERR_ARG;
    int32_t *src = malloc((size_t)(L->n ? L->n : 1) * sizeof(int32_t));
    if (!src) return KVS_ERR_NOMEM;
    int n_keep = 0;
    for (int i = 0; i < L->n; i++)
        if (keep[i]) src[n_keep++] = i;
    enum kvs_status st = KVS_OK;
    if (n_keep < L->n) {
        st = put(b, ST_POS, src, (size_t)n_keep * sizeof(int32_t), &dsrc);
        if (st == KVS_OK && s->api->kv_compact(s->cx, L->k, L->v, L->pos, dkv, dsrc, n_keep) != KVS_CUDA_OK)
            st = api_fail(b, "kv_compact");
        if (st == KVS_OK) L->n = n_keep;
    }
    free(src);
    return st;
}

static enum kvs_status cu_kv_read(struct kvs_backend *b, const struct kvs_kv_rows *L, int dkv, int row0, int n,
                                  uint16_t *k, uint16_t *v, int32_t *pos)
{
    if (dkv <= 0 || row0 < 0 || n < 0 || row0 > L->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    size_t off = (size_t)row0 * dkv, bytes = (size_t)n * dkv * sizeof(uint16_t);
    if (k) TRY(get(b, k, (const uint16_t *)L->k + off, bytes));
    if (v) TRY(get(b, v, (const uint16_t *)L->v + off, bytes));
    if (pos) TRY(get(b, pos, (const int32_t *)L->pos + row0, (size_t)n * sizeof(int32_t)));
    return KVS_OK;
}

/* ---- CommonKV latent segments in device memory, fp16 rows (twins: engine/cpu/latent_pool.c) ---- */

static void cu_lat_free(struct cuda_be *s, void **rows, int n_arr, void **pos)
{
    for (int a = 0; a < n_arr; a++) s->api->free(s->cx, rows[a]), rows[a] = NULL;
    s->api->free(s->cx, *pos);
    *pos = NULL;
}

static bool lat_fmt_ok(const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f)
{
    return f->codec == KVS_LAT_FP16 && f->width > 0 && f->row_bytes == 2 * f->width && L->n_arr > 0 &&
           L->n_arr <= KVS_LAT_MAX_ARR && L->n_arr <= KVS_CUDA_LAT_MAX_ARR;
}

static enum kvs_status cu_lat_grow(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int cap)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(L, f) || cap < L->n) return KVS_ERR_ARG;
    if (cap == 0) {
        cu_lat_free(s, L->rows, L->n_arr, &L->pos);
        L->cap = 0;
        return KVS_OK;
    }
    size_t row = (size_t)f->row_bytes;
    if ((size_t)cap > SIZE_MAX / row) return KVS_ERR_ARG;
    void *rows[KVS_LAT_MAX_ARR] = {0}, *p = NULL;
    for (int a = 0; a < L->n_arr; a++)
        if (s->api->alloc(s->cx, &rows[a], (size_t)cap * row) != KVS_CUDA_OK) goto fail;
    if (s->api->alloc(s->cx, &p, (size_t)cap * sizeof(int32_t)) != KVS_CUDA_OK) goto fail;
    /* the rows held move to the new blocks on the device; the old ones go once the copies ran */
    for (int a = 0; a < L->n_arr && L->n; a++)
        if (s->api->copy(s->cx, rows[a], L->rows[a], (size_t)L->n * row) != KVS_CUDA_OK) goto fail;
    if (L->n && s->api->copy(s->cx, p, L->pos, (size_t)L->n * sizeof(int32_t)) != KVS_CUDA_OK) goto fail;
    cu_lat_free(s, L->rows, L->n_arr, &L->pos);
    for (int a = 0; a < L->n_arr; a++) L->rows[a] = rows[a];
    L->pos = p;
    L->cap = cap;
    return KVS_OK;
fail:;
    enum kvs_status st = api_fail(b, "lat_grow");
    cu_lat_free(s, rows, L->n_arr, &p);
    return st;
}

static enum kvs_status cu_lat_store(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                    int arr, int row0, int T, const float *x, const int32_t *pos)
{
    struct cuda_be *s = b->ctx;
    void *dx;
    if (!lat_fmt_ok(L, f) || arr < 0 || arr >= L->n_arr || row0 < 0 || T < 0 || row0 > L->cap - T)
        return KVS_ERR_ARG;
    if (T == 0) return KVS_OK;
    TRY(put(b, ST_C, x, (size_t)T * f->width * sizeof(float), &dx));
    if (pos && s->api->upload(s->cx, (int32_t *)L->pos + row0, pos, (size_t)T * sizeof(int32_t)) != KVS_CUDA_OK)
        return api_fail(b, "lat_store");
    if (s->api->lat_store(s->cx, L->rows[arr], f->width, row0, T, dx) != KVS_CUDA_OK) return api_fail(b, "lat_store");
    return KVS_OK;
}

static enum kvs_status cu_lat_read(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int arr, int row0, int n, float *x, int32_t *pos)
{
    if (!lat_fmt_ok(L, f) || arr < 0 || arr >= L->n_arr || row0 < 0 || n < 0 || row0 > L->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    /* fp16 bits come back and widen on the host: the conversion is exact either side */
    size_t cnt = (size_t)n * f->width;
    uint16_t *h = malloc(cnt * sizeof(uint16_t));
    if (!h) return KVS_ERR_NOMEM;
    enum kvs_status st = get(b, h, (const uint16_t *)L->rows[arr] + (size_t)row0 * f->width, cnt * sizeof(uint16_t));
    if (st == KVS_OK) kvs_f16_to_f32_row(h, x, (int)cnt);
    free(h);
    if (st == KVS_OK && pos) st = get(b, pos, (const int32_t *)L->pos + row0, (size_t)n * sizeof(int32_t));
    return st;
}

static enum kvs_status cu_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      const uint8_t *keep)
{
    struct cuda_be *s = b->ctx;
    void *dsrc;
    if (!lat_fmt_ok(L, f)) return KVS_ERR_ARG;
    int32_t *src = malloc((size_t)(L->n ? L->n : 1) * sizeof(int32_t));
    if (!src) return KVS_ERR_NOMEM;
    int n_keep = 0;
    for (int i = 0; i < L->n; i++)
        if (keep[i]) src[n_keep++] = i;
    enum kvs_status st = KVS_OK;
    if (n_keep < L->n) {
        st = put(b, ST_POS, src, (size_t)n_keep * sizeof(int32_t), &dsrc);
        if (st == KVS_OK &&
            s->api->lat_compact(s->cx, (uint16_t *const *)L->rows, L->n_arr, L->pos, f->width, dsrc, n_keep) !=
                KVS_CUDA_OK)
            st = api_fail(b, "lat_compact");
        if (st == KVS_OK) L->n = n_keep;
    }
    free(src);
    return st;
}

/* q, out, B_k, B_v, the biases and the frequencies are device buffers, the rows the segments';
 * the query positions go up and the mass (when asked) comes back. */
static enum kvs_status cu_lat_attend(struct kvs_backend *b, const struct kvs_lat_attend_args *a, const float *q,
                                     float *out, float *mass)
{
    struct cuda_be *s = b->ctx;
    void *dqp, *dmass = NULL;
    if (a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->head_dim <= 0 || a->rank <= 0 || !a->f ||
        a->f->width != a->rank || a->n_segs < 0 || a->n_segs > KVS_LAT_ATTEND_MAX_SEGS ||
        a->n_segs > KVS_CUDA_LAT_ATTEND_MAX_SEGS)
        return KVS_ERR_ARG;
    struct kvs_cuda_lat_attend d = {.T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv,
                                    .head_dim = a->head_dim, .rank = a->rank, .n_segs = a->n_segs, .q = q,
                                    .bk = a->bk, .bv = a->bv, .bk_bias = a->bk_bias, .bv_bias = a->bv_bias,
                                    .freqs = a->freqs, .neox = a->neox, .scale = a->scale, .out = out,
                                    .mass_from = a->mass_from};
    int64_t n = 0;
    for (int i = 0; i < a->n_segs; i++) {
        const struct kvs_lat_rows *L = a->segs[i].L;
        if (!L || !lat_fmt_ok(L, a->f) || a->segs[i].arr < 0 || a->segs[i].arr >= L->n_arr) return KVS_ERR_ARG;
        d.rows[i] = L->rows[a->segs[i].arr];
        d.pos[i] = L->pos;
        d.n[i] = L->n;
        n += L->n;
    }
    if (n > INT_MAX) return KVS_ERR_ARG;
    TRY(put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp));
    if (mass && !(dmass = stage(b, ST_U, (size_t)(n ? n : 1) * sizeof(float)))) return KVS_ERR_BACKEND;
    d.q_pos = dqp;
    d.mass = dmass;
    if (s->api->lat_attend(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "lat_attend");
    if (mass && n) TRY(get(b, mass, dmass, (size_t)n * sizeof(float)));
    return KVS_OK;
}

static enum kvs_status cu_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                    const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w)
{
    struct cuda_be *s = b->ctx;
    void *didx;
    if (!lat_fmt_ok(src, f) || !lat_fmt_ok(dst, f) || m < 0 || dst->n > dst->cap - m) return KVS_ERR_ARG;
    for (int i = 0; i < m; i++)
        if (idx[i] < 0 || idx[i] >= src->n) return KVS_ERR_ARG;
    if (!m) return KVS_OK;
    struct kvs_cuda_lat_merge a = {.n_arr = src->n_arr, .width = f->width, .m = m, .row0 = dst->n,
                                   .src_pos = src->pos, .dst = dst->rows[0], .dst_pos = dst->pos};
    for (int l = 0; l < src->n_arr; l++) {
        a.src[l] = src->rows[l];
        a.w[l] = w[l];
    }
    TRY(put(b, ST_QPOS, idx, (size_t)m * sizeof(int32_t), &didx));
    a.idx = didx;
    if (s->api->lat_merge(s->cx, &a) != KVS_CUDA_OK) return api_fail(b, "lat_merge");
    dst->n += m;
    return KVS_OK;
}

/* Cosine scores between arrays of a device segment: the kernel writes them to a staging buffer
 * and they come back to OUT (host). */
static enum kvs_status cu_lat_cosine(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                     int arr0, int arr1, bool adj, int row0, int n, float *out)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(L, f) || arr0 < 0 || arr1 < arr0 || arr1 >= L->n_arr || (adj && arr1 == arr0) || row0 < 0 ||
        n < 0 || row0 > L->n - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    struct kvs_cuda_lat_cosine a = {.n_arr = arr1 - arr0 + 1, .width = f->width, .row0 = row0, .n = n, .adj = adj};
    if (adj) {
        for (int l = arr0; l <= arr1; l++) a.rows[l - arr0] = L->rows[l];
    } else { /* the two arrays as the first and the last */
        a.n_arr = 2;
        a.rows[0] = L->rows[arr0];
        a.rows[1] = L->rows[arr1];
    }
    if (!(a.out = stage(b, ST_U, (size_t)n * sizeof(float)))) return KVS_ERR_BACKEND;
    if (s->api->lat_cosine(s->cx, &a) != KVS_CUDA_OK) return api_fail(b, "lat_cosine");
    return get(b, out, a.out, (size_t)n * sizeof(float));
}

static void cu_destroy(struct kvs_backend *b)
{
    struct cuda_be *s = b->ctx;
    if (!s) return;
    for (int i = 0; i < ST_COUNT; i++) s->api->free(s->cx, s->buf[i]);
    s->api->shutdown(s->cx);
    free(s);
    b->ctx = NULL;
}

static const struct kvs_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cu_destroy,
    .buf_alloc = cu_buf_alloc,
    .buf_free = cu_buf_free,
    .buf_upload = cu_buf_upload,
    .buf_download = cu_buf_download,
    .host_alloc = cu_host_alloc,
    .host_free = cu_host_free,
    .range_push = cu_range_push,
    .range_pop = cu_range_pop,
    .rmsnorm = cu_rmsnorm,
    .rope = cu_rope,
    .set_weights = cu_set_weights,
    .weight_prepare = cu_weight_prepare,
    .weight_release = cu_weight_release,
    .matmul = cu_matmul,
    .embed = cu_embed,
    .add_bias = cu_add_bias,
    .add = cu_add,
    .swiglu = cu_swiglu,
    .attn_latent = cu_attn_latent,
    .attn_kv16 = cu_attn_kv16,
    .svd = cu_svd,
    .kv_grow = cu_kv_grow,
    .kv_store = cu_kv_store,
    .kv_attend = cu_kv_attend,
    .kv_compact = cu_kv_compact,
    .kv_read = cu_kv_read,
    .lat_grow = cu_lat_grow,
    .lat_store = cu_lat_store,
    .lat_read = cu_lat_read,
    .lat_compact = cu_lat_compact,
    .lat_merge = cu_lat_merge,
    .lat_attend = cu_lat_attend,
    .lat_cosine = cu_lat_cosine,
};

enum kvs_status kvs_backend_cuda_create(struct kvs_backend *b, char *err, size_t errlen)
{
    bool ok = false;
    kvs_backend_probe(&ok);
    if (!ok) { /* the probe's words and what lies behind them (loader message, driver/runtime versions) */
        kvs_seterr(err, errlen, "%s", kvs_backend_probe_detail());
        return KVS_ERR_UNSUPPORTED;
    }
    struct cuda_be *s = calloc(1, sizeof *s);
    if (!s) {
        kvs_seterr(err, errlen, "out of memory");
        return KVS_ERR_NOMEM;
    }
    s->api = cu.api;
    char e[256] = "";
    if (s->api->init(&s->cx, 0, e, sizeof e) != KVS_CUDA_OK) {
        kvs_seterr(err, errlen, "CUDA initialisation failed: %s", e);
        free(s);
        return KVS_ERR_BACKEND;
    }
    b->ops = &cuda_ops;
    b->ctx = s;
    cu_set_weights(b, "auto"); /* cannot fail for "auto" */
    kvs_seterr(b->device, sizeof b->device, "%s (sm_%d)", s->api->device_name(s->cx),
               s->api->compute_capability(s->cx));
    return KVS_OK;
}
