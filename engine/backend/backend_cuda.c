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
    ST_X, ST_Y, ST_W, ST_POS, ST_QPOS, ST_FREQS, ST_C, ST_V, ST_BK, ST_BV, ST_U, ST_S, ST_VT,
    ST_LQ, /* lat_attend: packed segments' rows decoded to fp16 */
    ST_COUNT
};

struct cuda_be {
    const struct kvs_cuda_api *api;
    struct kvs_cuda_ctx *cx;
    void *buf[ST_COUNT];      /* device staging buffers, grown on demand */
    size_t cap[ST_COUNT];
    int weight_dtype;         /* enum kvs_cuda_dtype */
    /* lat_attend's 16-bit copies of B_k (one per layer's B_k buffer), made on first use and
     * dropped when that buffer is freed or written */
    struct bk16_copy {
        const void *src;      /* the fp32 B_k device buffer */
        size_t bytes;         /* its size: rows * rank floats */
        int dtype;
        struct kvs_cuda_weight *w; /* (rows, rank rounded up to 16) zero-padded */
    } *bk16;
    int n_bk16, cap_bk16;
    bool qrow;                /* the library takes packed latent rows (lat_codecs and the lat_q* entries) */
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

/* Drops the 16-bit B_k copies made from device bytes [p, p + bytes) (bytes 0: from the buffer at p). */
static void bk16_forget(struct cuda_be *s, const void *p, size_t bytes)
{
    for (int i = 0; i < s->n_bk16;) {
        const char *a = s->bk16[i].src, *q = p;
        bool hit = bytes ? a < q + bytes && q < a + s->bk16[i].bytes : a == q;
        if (hit) {
            s->api->weight_free(s->cx, s->bk16[i].w);
            s->bk16[i] = s->bk16[--s->n_bk16];
        } else {
            i++;
        }
    }
}

static void cu_buf_free(struct kvs_backend *b, void *data)
{
    struct cuda_be *s = b->ctx;
    if (data) bk16_forget(s, data, 0);
    s->api->free(s->cx, data);
}

static enum kvs_status cu_buf_upload(struct kvs_backend *b, void *dst, const void *src, size_t bytes)
{
    struct cuda_be *s = b->ctx;
    if (bytes) bk16_forget(s, dst, bytes);
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
    if (bw->exact) dtype = KVS_CUDA_F32;
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

/* The rows copied on the device into one staging buffer (no wait), then one download. */
static enum kvs_status cu_kv_keys_gather(struct kvs_backend *b, const struct kvs_kv_rows *const *Ls, int n, int dkv,
                                         const int32_t *rows, uint16_t *k)
{
    struct cuda_be *s = b->ctx;
    if (n < 0 || dkv <= 0) return KVS_ERR_ARG;
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= Ls[i]->n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    size_t row = (size_t)dkv * sizeof(uint16_t);
    char *d = stage(b, ST_V, (size_t)n * row);
    if (!d) return KVS_ERR_BACKEND;
    for (int i = 0; i < n; i++)
        if (s->api->copy(s->cx, d + (size_t)i * row, (const char *)Ls[i]->k + (size_t)rows[i] * row, row) != KVS_CUDA_OK)
            return api_fail(b, "kv_keys_gather");
    return get(b, k, d, (size_t)n * row);
}

/* ---- CommonKV latent segments in device memory, fp16 or packed rows (twins: engine/cpu/latent_pool.c) ---- */

static void cu_lat_free(struct cuda_be *s, void **rows, int n_arr, void **pos)
{
    for (int a = 0; a < n_arr; a++) s->api->free(s->cx, rows[a]), rows[a] = NULL;
    s->api->free(s->cx, *pos);
    *pos = NULL;
}

/* Packed rows need the library's lat_q* entries (kvs_cuda_qrow checks the rest of the format). */
static bool lat_fmt_ok(const struct cuda_be *s, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f)
{
    bool codec = f->codec == KVS_LAT_FP16 ? f->row_bytes == 2 * f->width
                                          : f->codec == KVS_LAT_QROW && s->qrow && f->row_bytes > 0;
    return codec && f->width > 0 && L->n_arr > 0 && L->n_arr <= KVS_LAT_MAX_ARR && L->n_arr <= KVS_CUDA_LAT_MAX_ARR;
}

static struct kvs_cuda_qrow qrow_of(const struct kvs_lat_fmt *f)
{
    return (struct kvs_cuda_qrow){.width = f->width, .row_bytes = f->row_bytes, .bits = (int)f->bits,
                                  .group = (int)f->group};
}

_Static_assert((1u << KVS_LAT_QROW) == KVS_CUDA_LAT_CODEC_QROW, "lat_codecs() bits follow enum kvs_lat_codec");

static bool cu_lat_codec(const struct kvs_backend *b, uint32_t codec)
{
    const struct cuda_be *s = b->ctx;
    return codec == KVS_LAT_FP16 || (codec == KVS_LAT_QROW && s->qrow);
}

static enum kvs_status cu_lat_grow(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int cap)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(s, L, f) || cap < L->n) return KVS_ERR_ARG;
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
    float *dx = (float *)x; /* device memory: the latents the projection left there */
    if (!lat_fmt_ok(s, L, f) || arr < 0 || arr >= L->n_arr || row0 < 0 || T < 0 || row0 > L->cap - T)
        return KVS_ERR_ARG;
    if (T == 0) return KVS_OK;
    if (pos && s->api->upload(s->cx, (int32_t *)L->pos + row0, pos, (size_t)T * sizeof(int32_t)) != KVS_CUDA_OK)
        return api_fail(b, "lat_store");
    struct kvs_cuda_qrow q = qrow_of(f);
    int rc = f->codec == KVS_LAT_QROW ? s->api->lat_qstore(s->cx, &q, L->rows[arr], row0, T, dx) /* encoded there */
                                      : s->api->lat_store(s->cx, L->rows[arr], f->width, row0, T, dx);
    if (rc != KVS_CUDA_OK) return api_fail(b, "lat_store");
    return KVS_OK;
}

static enum kvs_status cu_lat_read(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                   int arr, int row0, int n, float *x, int32_t *pos)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(s, L, f) || arr < 0 || arr >= L->n_arr || row0 < 0 || n < 0 || row0 > L->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    if (f->codec == KVS_LAT_QROW) { /* decoded on the device, fp32 comes back */
        struct kvs_cuda_qrow q = qrow_of(f);
        void *dx = stage(b, ST_C, (size_t)n * f->width * sizeof(float));
        if (!dx) return KVS_ERR_BACKEND;
        if (s->api->lat_qload(s->cx, &q, L->rows[arr], row0, n, dx, 0) != KVS_CUDA_OK) return api_fail(b, "lat_read");
        TRY(get(b, x, dx, (size_t)n * f->width * sizeof(float)));
        return pos ? get(b, pos, (const int32_t *)L->pos + row0, (size_t)n * sizeof(int32_t)) : KVS_OK;
    }
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

/* Rows of SRC decoded to fp32 in staging (fp16 widened, packed decoded), then stored in DST's
 * format: the rows never leave the device. */
static enum kvs_status cu_lat_copy(struct kvs_backend *b, const struct kvs_lat_rows *src, const struct kvs_lat_fmt *sf,
                                   int sarr, int row0, int n, struct kvs_lat_rows *dst, const struct kvs_lat_fmt *df,
                                   int darr, int drow0, const int32_t *pos)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(s, src, sf) || !lat_fmt_ok(s, dst, df) || sf->width != df->width || sarr < 0 ||
        sarr >= src->n_arr || row0 < 0 || n < 0 || row0 > src->n - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    float *dx = stage(b, ST_C, (size_t)n * sf->width * sizeof(float));
    if (!dx) return KVS_ERR_BACKEND;
    struct kvs_cuda_qrow q = qrow_of(sf);
    int rc = sf->codec == KVS_LAT_QROW ? s->api->lat_qload(s->cx, &q, src->rows[sarr], row0, n, dx, 0)
                                       : s->api->lat_load(s->cx, src->rows[sarr], sf->width, row0, n, dx);
    if (rc != KVS_CUDA_OK) return api_fail(b, "lat_copy");
    return cu_lat_store(b, dst, df, darr, drow0, n, dx, pos);
}

static enum kvs_status cu_lat_compact(struct kvs_backend *b, struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                      const uint8_t *keep)
{
    struct cuda_be *s = b->ctx;
    void *dsrc;
    if (!lat_fmt_ok(s, L, f)) return KVS_ERR_ARG;
    int32_t *src = malloc((size_t)(L->n ? L->n : 1) * sizeof(int32_t));
    if (!src) return KVS_ERR_NOMEM;
    int n_keep = 0;
    for (int i = 0; i < L->n; i++)
        if (keep[i]) src[n_keep++] = i;
    enum kvs_status st = KVS_OK;
    if (n_keep < L->n) {
        struct kvs_cuda_qrow q = qrow_of(f);
        st = put(b, ST_POS, src, (size_t)n_keep * sizeof(int32_t), &dsrc);
        if (st == KVS_OK &&
            (f->codec == KVS_LAT_QROW
                 ? s->api->lat_qcompact(s->cx, &q, (uint8_t *const *)L->rows, L->n_arr, L->pos, dsrc, n_keep)
                 : s->api->lat_compact(s->cx, (uint16_t *const *)L->rows, L->n_arr, L->pos, f->width, dsrc,
                                       n_keep)) != KVS_CUDA_OK)
            st = api_fail(b, "lat_compact");
        if (st == KVS_OK) L->n = n_keep;
    }
    free(src);
    return st;
}

/* The 16-bit copy of the fp32 device B_k BK (rows, rank) that lat_attend's fused decode reads, in
 * the weights' dtype: made once (down, padded, up) and kept until BK's buffer is freed or written. */
static const struct kvs_cuda_weight *bk16_get(struct kvs_backend *b, const float *bk, int rows, int rank)
{
    struct cuda_be *s = b->ctx;
    size_t bytes = (size_t)rows * rank * sizeof(float);
    int rp = (rank + 15) / 16 * 16;
    for (int i = 0; i < s->n_bk16; i++)
        if (s->bk16[i].src == bk && s->bk16[i].bytes == bytes && s->bk16[i].dtype == s->weight_dtype)
            return s->bk16[i].w;
    if (s->n_bk16 == s->cap_bk16) {
        int cap = s->cap_bk16 ? 2 * s->cap_bk16 : 16;
        struct bk16_copy *g = realloc(s->bk16, (size_t)cap * sizeof *g);
        if (!g) return NULL;
        s->bk16 = g;
        s->cap_bk16 = cap;
    }
    float *h = malloc(bytes), *p = calloc((size_t)rows * rp, sizeof(float));
    struct kvs_cuda_weight *w = NULL;
    if (h && p && get(b, h, bk, bytes) == KVS_OK) {
        for (int r = 0; r < rows; r++) memcpy(p + (size_t)r * rp, h + (size_t)r * rank, (size_t)rank * sizeof(float));
        if (s->api->weight_new(s->cx, &w, rows, rp, s->weight_dtype) != KVS_CUDA_OK) w = NULL;
        else if (s->api->weight_set_rows(s->cx, w, 0, rows, p) != KVS_CUDA_OK) {
            s->api->weight_free(s->cx, w);
            w = NULL;
        }
    }
    free(h);
    free(p);
    if (w) s->bk16[s->n_bk16++] = (struct bk16_copy){.src = bk, .bytes = bytes, .dtype = s->weight_dtype, .w = w};
    return w;
}

/* q, out, B_k, B_v, the biases and the frequencies are device buffers, the rows the segments';
 * the query positions go up and the mass (when asked) comes back, or is added to the device's
 * eviction scores (a->score) without leaving it. Decode steps read B_k from its
 * 16-bit copy (bk16_get); without one (no memory) they take the prefill path. Packed segments are
 * decoded to fp16 rows in scratch first (the decoded fp32 values rounded to nearest), which the
 * attention kernel then reads as it reads the fp16 segments. */
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
    int64_t n = 0, nq = 0;
    for (int i = 0; i < a->n_segs; i++) {
        const struct kvs_lat_rows *L = a->segs[i].L;
        const struct kvs_lat_fmt *f = a->seg_f[i] ? a->seg_f[i] : a->f;
        if (!L || !lat_fmt_ok(s, L, f) || f->width != a->rank || a->segs[i].arr < 0 || a->segs[i].arr >= L->n_arr)
            return KVS_ERR_ARG;
        d.rows[i] = L->rows[a->segs[i].arr];
        d.pos[i] = L->pos;
        d.n[i] = L->n;
        n += L->n;
        if (f->codec == KVS_LAT_QROW) nq += L->n;
    }
    if (n > INT_MAX) return KVS_ERR_ARG;
    if (a->T <= 4 && n > 0) d.bk16 = bk16_get(b, a->bk, a->n_head_kv * a->head_dim, a->rank);
    if (nq) {
        uint16_t *h = stage(b, ST_LQ, (size_t)nq * a->rank * sizeof(uint16_t));
        if (!h) return KVS_ERR_BACKEND;
        for (int i = 0; i < a->n_segs; i++) {
            const struct kvs_lat_fmt *f = a->seg_f[i] ? a->seg_f[i] : a->f;
            if (f->codec != KVS_LAT_QROW || !d.n[i]) continue;
            struct kvs_cuda_qrow qf = qrow_of(f);
            if (s->api->lat_qload(s->cx, &qf, (const uint8_t *)d.rows[i], 0, d.n[i], h, KVS_CUDA_F16) != KVS_CUDA_OK)
                return api_fail(b, "lat_attend");
            d.rows[i] = h;
            h += (size_t)d.n[i] * a->rank;
        }
    }
    TRY(put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp));
    if ((mass || a->score) && !(dmass = stage(b, ST_U, (size_t)(n ? n : 1) * sizeof(float)))) return KVS_ERR_BACKEND;
    d.q_pos = dqp;
    d.mass = dmass;
    if (s->api->lat_attend(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "lat_attend");
    if (a->score) { /* the mass stays here: added to the scores by position */
        if (n && s->api->lat_mass_add(s->cx, d.pos, d.n, d.n_segs, dmass, a->score, a->n_score) != KVS_CUDA_OK)
            return api_fail(b, "lat_attend");
        return KVS_OK;
    }
    if (mass && n) TRY(get(b, mass, dmass, (size_t)n * sizeof(float)));
    return KVS_OK;
}

static enum kvs_status cu_lat_merge(struct kvs_backend *b, const struct kvs_lat_rows *src, struct kvs_lat_rows *dst,
                                    const struct kvs_lat_fmt *f, const int32_t *idx, int m, const float *w)
{
    struct cuda_be *s = b->ctx;
    void *didx;
    if (!lat_fmt_ok(s, src, f) || !lat_fmt_ok(s, dst, f) || m < 0 || dst->n > dst->cap - m) return KVS_ERR_ARG;
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
    struct kvs_cuda_qrow q = qrow_of(f);
    if ((f->codec == KVS_LAT_QROW ? s->api->lat_qmerge(s->cx, &q, &a) : s->api->lat_merge(s->cx, &a)) != KVS_CUDA_OK)
        return api_fail(b, "lat_merge");
    dst->n += m;
    return KVS_OK;
}

/* ---- the card ---- */

static enum kvs_status cu_mem_info(struct kvs_backend *b, uint64_t *used, uint64_t *total)
{
    struct cuda_be *s = b->ctx;
    if (s->api->mem_info(s->cx, used, total) != KVS_CUDA_OK) return api_fail(b, "device memory");
    return KVS_OK;
}

static enum kvs_status cu_acts_saturated(struct kvs_backend *b, uint64_t *count)
{
    struct cuda_be *s = b->ctx;
    if (s->api->acts_saturated(s->cx, count) != KVS_CUDA_OK) return api_fail(b, "activation overflow count");
    return KVS_OK;
}

static enum kvs_status cu_cache_saturated(struct kvs_backend *b, uint64_t *count)
{
    struct cuda_be *s = b->ctx;
    if (s->api->cache_saturated(s->cx, count) != KVS_CUDA_OK) return api_fail(b, "cache overflow count");
    return KVS_OK;
}

/* ---- MiniCache pairs in device memory (twins: engine/cpu/minicache.c) ---- */

static void cu_mc_free(struct cuda_be *s, void **ek, void **ev, void **nrm, void **pos)
{
    s->api->free(s->cx, *ek);
    s->api->free(s->cx, *ev);
    s->api->free(s->cx, *nrm);
    s->api->free(s->cx, *pos);
    *ek = *ev = *nrm = *pos = NULL;
}

static enum kvs_status cu_mc_grow(struct kvs_backend *b, struct kvs_mc_rows *P, int nkv, int d, int cap)
{
    struct cuda_be *s = b->ctx;
    if (nkv <= 0 || d <= 0 || cap < P->n) return KVS_ERR_ARG;
    if (cap == 0) {
        cu_mc_free(s, &P->ek, &P->ev, &P->nrm, &P->pos);
        P->cap = 0;
        return KVS_OK;
    }
    size_t row = (size_t)nkv * d * sizeof(uint16_t), nrow = (size_t)4 * nkv * sizeof(uint16_t);
    if ((size_t)cap > SIZE_MAX / row) return KVS_ERR_ARG;
    void *ek = NULL, *ev = NULL, *nr = NULL, *p = NULL;
    if (s->api->alloc(s->cx, &ek, (size_t)cap * row) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &ev, (size_t)cap * row) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &nr, (size_t)cap * nrow) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &p, (size_t)cap * sizeof(int32_t)) != KVS_CUDA_OK)
        goto fail;
    /* the merged rows move to the new blocks on the device; the old ones go once the copies ran */
    if (P->n && (s->api->copy(s->cx, ek, P->ek, (size_t)P->n * row) != KVS_CUDA_OK ||
                 s->api->copy(s->cx, ev, P->ev, (size_t)P->n * row) != KVS_CUDA_OK ||
                 s->api->copy(s->cx, nr, P->nrm, (size_t)P->n * nrow) != KVS_CUDA_OK ||
                 s->api->copy(s->cx, p, P->pos, (size_t)P->n * sizeof(int32_t)) != KVS_CUDA_OK))
        goto fail;
    cu_mc_free(s, &P->ek, &P->ev, &P->nrm, &P->pos);
    P->ek = ek, P->ev = ev, P->nrm = nr, P->pos = p;
    P->cap = cap;
    return KVS_OK;
fail:;
    enum kvs_status st = api_fail(b, "mc_grow");
    cu_mc_free(s, &ek, &ev, &nr, &p);
    return st;
}

static bool mc_idx_ok(const struct kvs_kv_rows *A, const struct kvs_kv_rows *B, const int32_t *idx, int m)
{
    for (int r = 0; r < m; r++)
        if (idx[r] < 0 || idx[r] >= A->n || idx[r] >= B->n) return false;
    return true;
}

static enum kvs_status cu_mc_score(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                   int nkv, int d, const int32_t *idx, int m, float *dist, double *dots)
{
    struct cuda_be *s = b->ctx;
    void *didx, *ddist, *ddots = NULL;
    if (nkv <= 0 || d <= 0 || m < 0 || !mc_idx_ok(A, B, idx, m)) return KVS_ERR_ARG;
    if (!m) return KVS_OK;
    /* the row indices go up, the distances (and cosines) come back */
    TRY(put(b, ST_QPOS, idx, (size_t)m * sizeof(int32_t), &didx));
    if (!(ddist = stage(b, ST_U, (size_t)m * sizeof(float)))) return KVS_ERR_BACKEND;
    if (dots && !(ddots = stage(b, ST_S, (size_t)m * 2 * nkv * sizeof(double)))) return KVS_ERR_BACKEND;
    struct kvs_cuda_mc_pair a = {.nkv = nkv, .d = d, .m = m, .ka = A->k, .va = A->v, .kb = B->k, .vb = B->v,
                                 .pos_a = A->pos, .idx = didx, .dist = ddist, .dots = ddots};
    if (s->api->mc_score(s->cx, &a) != KVS_CUDA_OK) return api_fail(b, "mc_score");
    TRY(get(b, dist, ddist, (size_t)m * sizeof(float)));
    if (dots) TRY(get(b, dots, ddots, (size_t)m * 2 * nkv * sizeof(double)));
    return KVS_OK;
}

static enum kvs_status cu_mc_merge(struct kvs_backend *b, const struct kvs_kv_rows *A, const struct kvs_kv_rows *B,
                                   struct kvs_mc_rows *P, int nkv, int d, float t, const int32_t *idx, int m, int keep)
{
    struct cuda_be *s = b->ctx;
    void *didx;
    if (nkv <= 0 || d <= 0 || m < 0 || keep < 0 || keep > m || P->n > P->cap - (m - keep) || !mc_idx_ok(A, B, idx, m))
        return KVS_ERR_ARG;
    if (m == keep) return KVS_OK;
    TRY(put(b, ST_QPOS, idx, (size_t)m * sizeof(int32_t), &didx));
    struct kvs_cuda_mc_pair a = {.nkv = nkv, .d = d, .m = m, .keep = keep, .row0 = P->n, .t = t, .ka = A->k,
                                 .va = A->v, .kb = B->k, .vb = B->v, .pos_a = A->pos, .idx = didx, .ek = P->ek,
                                 .ev = P->ev, .nrm = P->nrm, .pos = P->pos};
    if (s->api->mc_merge(s->cx, &a) != KVS_CUDA_OK) return api_fail(b, "mc_merge");
    P->n += m - keep;
    return KVS_OK;
}

static enum kvs_status cu_mc_attend(struct kvs_backend *b, const struct kvs_kv_rows *L, const struct kvs_mc_rows *P,
                                    int side, const struct kvs_kv_attend_args *a, const float *q, float *out)
{
    struct cuda_be *s = b->ctx;
    void *dqp;
    if (a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || a->head_dim <= 0 || (side != 0 && side != 1))
        return KVS_ERR_ARG;
    if (a->T == 0) return KVS_OK;
    /* q and out are device buffers; only the query positions go up */
    TRY(put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp));
    struct kvs_cuda_mc_attend d = {.T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim,
                                   .q = q, .q_pos = dqp, .n = L->n, .k = L->k, .v = L->v, .pos = L->pos,
                                   .nm = P ? P->n : 0, .side = side, .out = out};
    if (P) d.ek = P->ek, d.ev = P->ev, d.nrm = P->nrm, d.mpos = P->pos;
    if (s->api->mc_attend(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "mc_attend");
    return KVS_OK;
}

static enum kvs_status cu_mc_read(struct kvs_backend *b, const struct kvs_mc_rows *P, int nkv, int d, int row0, int n,
                                  uint16_t *ek, uint16_t *ev, uint16_t *nrm, int32_t *pos)
{
    if (nkv <= 0 || d <= 0 || row0 < 0 || n < 0 || row0 > P->n - n) return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    size_t dkv = (size_t)nkv * d, bytes = (size_t)n * dkv * sizeof(uint16_t);
    if (ek) TRY(get(b, ek, (const uint16_t *)P->ek + (size_t)row0 * dkv, bytes));
    if (ev) TRY(get(b, ev, (const uint16_t *)P->ev + (size_t)row0 * dkv, bytes));
    if (nrm) TRY(get(b, nrm, (const uint16_t *)P->nrm + (size_t)row0 * 4 * nkv, (size_t)n * 4 * nkv * sizeof(uint16_t)));
    if (pos) TRY(get(b, pos, (const int32_t *)P->pos + row0, (size_t)n * sizeof(int32_t)));
    return KVS_OK;
}

/* ---- the quantized K/V pool in device memory (twins: engine/cpu/kv_quant.c); the fp16 tier is
 * the kv_* entries' rows, the block table host bookkeeping ---- */

static bool kvq_fmt_ok(const struct kvs_kvq_fmt *f)
{
    return f->dkv > 0 && (f->bits == 2 || f->bits == 4 || f->bits == 8) && f->group > 0 && f->vrow > 0;
}

static void cu_kvq_free(struct cuda_be *s, struct kvs_kvq_rows *L)
{
    s->api->free(s->cx, L->kq);
    s->api->free(s->cx, L->vq);
    s->api->free(s->cx, L->pq);
    s->api->free(s->cx, L->score);
    L->kq = L->vq = L->pq = NULL;
    L->score = NULL;
    L->kq_cap = 0, L->tq_cap = 0, L->n_score = 0;
}

static enum kvs_status cu_kvq_grow(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                   int tq_cap, size_t kq_cap, int n_score)
{
    struct cuda_be *s = b->ctx;
    if (!kvq_fmt_ok(f) || tq_cap < L->tq || kq_cap < L->kq_bytes || n_score < 0) return KVS_ERR_ARG;
    if (tq_cap == 0 && kq_cap == 0 && n_score == 0) {
        cu_kvq_free(s, L);
        return KVS_OK;
    }
    if ((size_t)tq_cap > SIZE_MAX / f->vrow) return KVS_ERR_ARG;
    if (n_score > 0 && !L->score) {
        void *d = NULL;
        float *z = calloc((size_t)n_score, sizeof(float));
        if (!z) return KVS_ERR_NOMEM;
        int rc = s->api->alloc(s->cx, &d, (size_t)n_score * sizeof(float));
        if (rc == KVS_CUDA_OK) rc = s->api->upload(s->cx, d, z, (size_t)n_score * sizeof(float));
        free(z);
        if (rc != KVS_CUDA_OK) {
            s->api->free(s->cx, d);
            return api_fail(b, "kvq_grow");
        }
        L->score = d;
        L->n_score = n_score;
    }
    if (tq_cap == L->tq_cap && kq_cap == L->kq_cap) return KVS_OK;
    void *k = NULL, *v = NULL, *p = NULL;
    if (s->api->alloc(s->cx, &k, kq_cap ? kq_cap : 1) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &v, (size_t)(tq_cap ? tq_cap : 1) * f->vrow) != KVS_CUDA_OK ||
        s->api->alloc(s->cx, &p, (size_t)(tq_cap ? tq_cap : 1) * sizeof(int32_t)) != KVS_CUDA_OK)
        goto fail;
    /* what the pool holds moves to the new blocks on the device; the old ones go once copied */
    if ((L->kq_bytes && s->api->copy(s->cx, k, L->kq, L->kq_bytes) != KVS_CUDA_OK) ||
        (L->tq && (s->api->copy(s->cx, v, L->vq, (size_t)L->tq * f->vrow) != KVS_CUDA_OK ||
                   s->api->copy(s->cx, p, L->pq, (size_t)L->tq * sizeof(int32_t)) != KVS_CUDA_OK)))
        goto fail;
    s->api->free(s->cx, L->kq);
    s->api->free(s->cx, L->vq);
    s->api->free(s->cx, L->pq);
    L->kq = k, L->vq = v, L->pq = p;
    L->kq_cap = kq_cap;
    L->tq_cap = tq_cap;
    return KVS_OK;
fail:;
    enum kvs_status st = api_fail(b, "kvq_grow");
    s->api->free(s->cx, k);
    s->api->free(s->cx, v);
    s->api->free(s->cx, p);
    return st;
}

static enum kvs_status cu_kvq_quantize(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f)
{
    struct cuda_be *s = b->ctx;
    if (!kvq_fmt_ok(f) || L->f16.n < (int)f->group || L->nblk >= L->blk_cap) return KVS_ERR_ARG;
    uint32_t kb = (uint32_t)f->dkv * (4 + (f->group * f->bits + 7) / 8);
    if (L->tq + (int)f->group > L->tq_cap || L->kq_bytes + kb > L->kq_cap) return KVS_ERR_ARG;
    struct kvs_cuda_kvq_quantize a = {.dkv = f->dkv, .bits = (int)f->bits, .group = (int)f->group,
                                      .vrow = (int)f->vrow, .k16 = L->f16.k, .v16 = L->f16.v,
                                      .kdst = (uint8_t *)L->kq + L->kq_bytes,
                                      .vdst = (uint8_t *)L->vq + (size_t)L->tq * f->vrow};
    if (s->api->kvq_quantize(s->cx, &a) != KVS_CUDA_OK ||
        s->api->copy(s->cx, (int32_t *)L->pq + L->tq, L->f16.pos, f->group * sizeof(int32_t)) != KVS_CUDA_OK)
        return api_fail(b, "kvq_quantize");
    L->blk_nt[L->nblk] = f->group;
    L->blk_koff[L->nblk] = (uint32_t)L->kq_bytes;
    L->blk_t0[L->nblk] = (uint32_t)L->tq;
    L->nblk++;
    L->tq += (int)f->group;
    L->kq_bytes += kb;
    return KVS_OK;
}

static enum kvs_status cu_kvq_attend(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                     const struct kvs_kv_attend_args *a, const float *q, float *out, bool score)
{
    struct cuda_be *s = b->ctx;
    void *dqp, *dblk = NULL;
    if (!kvq_fmt_ok(f) || a->T < 0 || a->n_head <= 0 || a->n_head_kv <= 0 || (score && !L->score)) return KVS_ERR_ARG;
    if (L->nblk) { /* the block table goes up with the query positions */
        int32_t *t = malloc((size_t)L->nblk * 3 * sizeof(int32_t));
        if (!t) return KVS_ERR_NOMEM;
        for (int i = 0; i < L->nblk; i++)
            t[3 * i] = (int32_t)L->blk_nt[i], t[3 * i + 1] = (int32_t)L->blk_koff[i], t[3 * i + 2] = (int32_t)L->blk_t0[i];
        enum kvs_status st = put(b, ST_W, t, (size_t)L->nblk * 3 * sizeof(int32_t), &dblk);
        free(t);
        if (st != KVS_OK) return st;
    }
    TRY(put(b, ST_QPOS, a->q_pos, (size_t)a->T * sizeof(int32_t), &dqp));
    struct kvs_cuda_kvq_attend d = {
        .L = {.dkv = f->dkv, .bits = (int)f->bits, .group = (int)f->group, .vrow = (int)f->vrow, .nblk = L->nblk,
              .tq = L->tq, .n16 = L->f16.n, .blk = dblk, .kq = L->kq, .vq = L->vq, .pq = L->pq, .k16 = L->f16.k,
              .v16 = L->f16.v, .p16 = L->f16.pos},
        .T = a->T, .n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim, .q = q, .q_pos = dqp,
        .out = out, .score = score ? L->score : NULL};
    if (s->api->kvq_attend(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "kvq_attend");
    return KVS_OK;
}

static enum kvs_status cu_kvq_compact(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                      const uint8_t *keep)
{
    struct cuda_be *s = b->ctx;
    if (!kvq_fmt_ok(f)) return KVS_ERR_ARG;
    int32_t *plan = malloc((size_t)(L->nblk ? L->nblk : 1) * 6 * sizeof(int32_t));
    int32_t *src = malloc((size_t)(L->tq ? L->tq : 1) * 4 * sizeof(int32_t));
    uint32_t *nt = malloc((size_t)(L->nblk ? L->nblk : 1) * 3 * sizeof(uint32_t));
    enum kvs_status st = KVS_ERR_NOMEM;
    if (!plan || !src || !nt) goto done;
    int nb = 0, tw = 0;
    size_t kw = 0;
    for (int bi = 0; bi < L->nblk; bi++) {
        int n0 = (int)L->blk_nt[bi], t0 = (int)L->blk_t0[bi], kept = 0;
        for (int t = 0; t < n0; t++)
            if (keep[t0 + t]) {
                int32_t *r = src + 4 * (tw + kept);
                r[0] = t0 + t, r[1] = n0, r[2] = (int32_t)L->blk_koff[bi], r[3] = t0;
                kept++;
            }
        if (!kept) continue;
        int32_t *pl = plan + 6 * nb;
        pl[0] = n0, pl[1] = (int32_t)L->blk_koff[bi], pl[2] = t0, pl[3] = kept, pl[4] = (int32_t)kw, pl[5] = tw;
        nt[3 * nb] = (uint32_t)kept, nt[3 * nb + 1] = (uint32_t)kw, nt[3 * nb + 2] = (uint32_t)tw;
        nb++;
        tw += kept;
        kw += (size_t)f->dkv * (4 + ((size_t)kept * f->bits + 7) / 8);
    }
    void *dplan = NULL, *dsrc = NULL;
    if (tw) {
        if ((st = put(b, ST_W, plan, (size_t)nb * 6 * sizeof(int32_t), &dplan)) != KVS_OK) goto done;
        if ((st = put(b, ST_POS, src, (size_t)tw * 4 * sizeof(int32_t), &dsrc)) != KVS_OK) goto done;
        struct kvs_cuda_kvq_compact d = {.dkv = f->dkv, .bits = (int)f->bits, .group = (int)f->group,
                                         .vrow = (int)f->vrow, .nb_new = nb, .tq_new = tw, .kq_new = kw,
                                         .plan = dplan, .src = dsrc, .kq = L->kq, .vq = L->vq, .pq = L->pq};
        if (s->api->kvq_compact(s->cx, &d) != KVS_CUDA_OK) {
            st = api_fail(b, "kvq_compact");
            goto done;
        }
    }
    for (int i = 0; i < nb; i++) L->blk_nt[i] = nt[3 * i], L->blk_koff[i] = nt[3 * i + 1], L->blk_t0[i] = nt[3 * i + 2];
    L->nblk = nb;
    L->tq = tw;
    L->kq_bytes = kw;
    st = KVS_OK;
done:
    free(plan);
    free(src);
    free(nt);
    return st;
}

static enum kvs_status cu_kvq_read(struct kvs_backend *b, const struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                   uint8_t *kq, uint8_t *vq, int32_t *pq)
{
    if (!kvq_fmt_ok(f)) return KVS_ERR_ARG;
    if (kq && L->kq_bytes) TRY(get(b, kq, L->kq, L->kq_bytes));
    if (vq && L->tq) TRY(get(b, vq, L->vq, (size_t)L->tq * f->vrow));
    if (pq && L->tq) TRY(get(b, pq, L->pq, (size_t)L->tq * sizeof(int32_t)));
    return KVS_OK;
}

static enum kvs_status cu_kvq_scores(struct kvs_backend *b, struct kvs_kvq_rows *L, const struct kvs_kvq_fmt *f,
                                     int n_ctx, int kernel, float *pooled)
{
    struct cuda_be *s = b->ctx;
    void *dp = NULL;
    if (!kvq_fmt_ok(f) || !L->score || n_ctx < 0 || n_ctx > L->n_score) return KVS_ERR_ARG;
    if (pooled && n_ctx && !(dp = stage(b, ST_U, (size_t)n_ctx * sizeof(float)))) return KVS_ERR_BACKEND;
    struct kvs_cuda_kvq_scores d = {.score = L->score, .n_score = L->n_score, .n_ctx = n_ctx, .kernel = kernel,
                                    .pq = L->pq, .p16 = L->f16.pos, .tq = L->tq, .n16 = L->f16.n, .pooled = dp};
    if (s->api->kvq_scores(s->cx, &d) != KVS_CUDA_OK) return api_fail(b, "kvq_scores");
    if (dp) TRY(get(b, pooled, dp, (size_t)n_ctx * sizeof(float)));
    return KVS_OK;
}

/* Cosine scores between arrays of a device segment: the kernel writes them to a staging buffer
 * and they come back to OUT (host). */
static enum kvs_status cu_lat_cosine(struct kvs_backend *b, const struct kvs_lat_rows *L, const struct kvs_lat_fmt *f,
                                     int arr0, int arr1, bool adj, int row0, int n, float *out)
{
    struct cuda_be *s = b->ctx;
    if (!lat_fmt_ok(s, L, f) || arr0 < 0 || arr1 < arr0 || arr1 >= L->n_arr || (adj && arr1 == arr0) || row0 < 0 ||
        n < 0 || row0 > L->n - n)
        return KVS_ERR_ARG;
    if (!n) return KVS_OK;
    struct kvs_cuda_lat_cosine a = {.n_arr = arr1 - arr0 + 1, .width = f->width, .row0 = row0, .n = n, .adj = adj};
    if (f->codec == KVS_LAT_QROW) a.bits = (int)f->bits, a.group = (int)f->group, a.row_bytes = f->row_bytes;
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
    for (int i = 0; i < s->n_bk16; i++) s->api->weight_free(s->cx, s->bk16[i].w);
    free(s->bk16);
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
    .kv_keys_gather = cu_kv_keys_gather,
    .lat_grow = cu_lat_grow,
    .lat_store = cu_lat_store,
    .lat_read = cu_lat_read,
    .lat_copy = cu_lat_copy,
    .lat_compact = cu_lat_compact,
    .lat_merge = cu_lat_merge,
    .lat_attend = cu_lat_attend,
    .mem_info = cu_mem_info,
    .acts_saturated = cu_acts_saturated,
    .cache_saturated = cu_cache_saturated,
    .mc_grow = cu_mc_grow,
    .mc_score = cu_mc_score,
    .mc_merge = cu_mc_merge,
    .mc_attend = cu_mc_attend,
    .mc_read = cu_mc_read,
    .kvq_grow = cu_kvq_grow,
    .kvq_quantize = cu_kvq_quantize,
    .kvq_attend = cu_kvq_attend,
    .kvq_compact = cu_kvq_compact,
    .kvq_read = cu_kvq_read,
    .kvq_scores = cu_kvq_scores,
    .lat_codec = cu_lat_codec,
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
    /* packed latent rows stay on the device only where the library says it takes them */
    s->qrow = s->api->lat_codecs && (s->api->lat_codecs(s->cx) & KVS_CUDA_LAT_CODEC_QROW) && s->api->lat_qstore &&
              s->api->lat_qload && s->api->lat_qcompact && s->api->lat_qmerge;
    b->ops = &cuda_ops;
    b->ctx = s;
    cu_set_weights(b, "auto"); /* cannot fail for "auto" */
    kvs_seterr(b->device, sizeof b->device, "%s (sm_%d)", s->api->device_name(s->cx),
               s->api->compute_capability(s->cx));
    return KVS_OK;
}
