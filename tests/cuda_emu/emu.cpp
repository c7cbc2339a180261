/* CUDA host emulation, runtime: one fiber per CUDA thread (an x86-64 register switch, or
 * makecontext/swapcontext elsewhere; stacks with guard pages, reused), blocks run one after another
 * with __syncthreads / __syncwarp / shuffles checked for divergence, launch-limit checks, and
 * "device" memory as tracked host allocations: NaN-filled, bounds-checked by every copy, memset and
 * kernel pointer argument, with a red zone behind each one checked after every launch.
 * Programming errors that a GPU would turn into a fault abort with a line naming the kernel. */
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__) || defined(KVS_EMU_UCONTEXT)
#define EMU_UCONTEXT 1
#include <ucontext.h>
#endif

namespace kvs_emu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;
}

/* The marker the engine looks for (engine/backend/backend_cuda.c): this library is not a GPU. */
extern "C" __attribute__((visibility("default"))) const char *kvs_cuda_emulation(void)
{
    return "CUDA emulation (host)";
}

namespace {

constexpr size_t STACK_BYTES = 64 << 10;
constexpr size_t REDZONE = 64;
constexpr unsigned char REDZONE_BYTE = 0xa5;
constexpr size_t SHARED_LIMIT = 48 << 10;

enum fiber_state { F_NEW, F_RUN, F_BAR, F_WARP, F_DONE };
enum shfl_kind { K_IDX, K_UP, K_DOWN, K_XOR, K_SYNCWARP };
const char *const kind_name[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                 "__syncwarp"};

struct fiber {
    void *sp = nullptr; /* saved stack pointer while suspended */
    char *stack = nullptr;
#ifdef EMU_UCONTEXT
    ucontext_t uc;
#endif
    int state = F_DONE;
    uint3 tid{0, 0, 0};
};

struct warp {
    unsigned pending, mask, exited;
    const char *file;
    int line, kind;
    uint64_t val[32], out[32];
    int src[32];
};

struct {
    std::mutex lock; /* one launch at a time: the thread/block indices are globals */
    std::vector<fiber> f;
    warp w[32];
    int n, cur, done, first_done, at_bar;
    int next_new; /* lowest thread of the block not started yet */
    const char *bar_file;
    int bar_line;
    void *sched_sp;
#ifdef EMU_UCONTEXT
    ucontext_t sched_uc;
#endif
    kvs_emu::thread_fn fn;
    void *arg;
    const char *name;
} S;

std::mutex mem_lock;
std::map<uintptr_t, size_t> allocs; /* base -> bytes of every live device allocation */
size_t live_bytes; /* sum of allocs' bytes: the emulated card's memory in use (cudaMemGetInfo) */
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cuda-emu: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* A kernel bug the GPU would not survive either: one line naming kernel, block and thread. */
[[noreturn]] void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda-emu: kernel %s block (%u,%u,%u): ", S.name ? S.name : "?", kvs_emu::block_idx.x,
            kvs_emu::block_idx.y, kvs_emu::block_idx.z);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    abort();
}

} // namespace

/* ---------------------------------------------------------------- fibers */

extern "C" __attribute__((visibility("hidden"), noreturn)) void kvs_emu_fiber_main(void);

#ifndef EMU_UCONTEXT
/* kvs_emu_switch(save, to): pushes the callee-saved registers, stores the stack pointer in *save,
 * continues on stack TO. A fresh stack holds six zero registers and kvs_emu_entry as return address. */
asm(R"(
    .text
    .globl kvs_emu_switch
    .hidden kvs_emu_switch
    .type kvs_emu_switch, @function
kvs_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kvs_emu_switch, .-kvs_emu_switch
    .globl kvs_emu_entry
    .hidden kvs_emu_entry
    .type kvs_emu_entry, @function
kvs_emu_entry:
    call kvs_emu_fiber_main
    ud2
    .size kvs_emu_entry, .-kvs_emu_entry
)");
extern "C" void kvs_emu_switch(void **save, void *to);
extern "C" void kvs_emu_entry(void);
#endif

namespace {

void fiber_prepare(fiber &f)
{
    if (!f.stack) {
        long page = sysconf(_SC_PAGESIZE);
        void *m = mmap(nullptr, STACK_BYTES + (size_t)page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                       0);
        if (m == MAP_FAILED) die("out of memory for fiber stacks");
        mprotect(m, (size_t)page, PROT_NONE); /* guard page: an overflow faults instead of corrupting */
        f.stack = (char *)m + page;
    }
#ifdef EMU_UCONTEXT
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack;
    f.uc.uc_stack.ss_size = STACK_BYTES;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, (void (*)())kvs_emu_fiber_main, 0);
#else
    uintptr_t top = ((uintptr_t)f.stack + STACK_BYTES - 16) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = (void *)kvs_emu_entry; /* after `ret` the stack is 16-aligned, as a call expects */
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f.sp = sp;
#endif
}

void switch_to(int i)
{
    S.cur = i;
    kvs_emu::thread_idx = S.f[i].tid;
#ifdef EMU_UCONTEXT
    swapcontext(&S.sched_uc, &S.f[i].uc);
#else
    kvs_emu_switch(&S.sched_sp, S.f[i].sp);
#endif
}

void yield(void)
{
#ifdef EMU_UCONTEXT
    swapcontext(&S.f[S.cur].uc, &S.sched_uc);
#else
    kvs_emu_switch(&S.f[S.cur].sp, S.sched_sp);
#endif
}

const uint3 &tid_of(int i) { return S.f[i].tid; }

unsigned warp_lanes_mask(int w)
{
    int lanes = S.n - w * 32;
    return lanes >= 32 ? 0xffffffffu : (1u << lanes) - 1u;
}

/* Bookkeeping of a thread whose kernel function returned. */
void thread_finish(void)
{
    int i = S.cur, lane = i & 31;
    const uint3 &t = tid_of(i);
    warp &W = S.w[i >> 5];
    if (S.at_bar)
        die("thread (%u,%u,%u) exited while %d thread(s) wait at __syncthreads (%s:%d)", t.x, t.y, t.z, S.at_bar,
            S.bar_file, S.bar_line);
    if (W.pending && (W.mask >> lane & 1u))
        die("thread (%u,%u,%u) exited while lanes 0x%08x of its warp wait for it at %s (%s:%d)", t.x, t.y, t.z,
            W.pending, kind_name[W.kind], W.file, W.line);
    W.exited |= 1u << lane;
    S.f[i].state = F_DONE;
    if (S.done++ == 0) S.first_done = i;
}

void report_deadlock(void)
{
    for (int w = 0; w * 32 < S.n; w++) {
        warp &W = S.w[w];
        if (W.pending)
            die("deadlock: lanes 0x%08x of warp %d wait at %s (%s:%d) for lanes 0x%08x, which wait elsewhere", W.pending,
                w, kind_name[W.kind], W.file, W.line, W.mask & ~W.pending);
    }
    die("deadlock: %d of %d threads wait at __syncthreads (%s:%d), the others are blocked elsewhere", S.at_bar, S.n,
        S.bar_file ? S.bar_file : "?", S.bar_line);
}

extern "C" char __start_kvs_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_kvs_emu_shared[] __attribute__((weak, visibility("hidden")));

size_t shared_bytes(void)
{
    return __start_kvs_emu_shared && __stop_kvs_emu_shared ? (size_t)(__stop_kvs_emu_shared - __start_kvs_emu_shared)
                                                           : 0;
}

void run_block(void)
{
    /* every __shared__ byte of the library starts as NaN, so a read before a write shows */
    if (shared_bytes()) memset(__start_kvs_emu_shared, 0xff, shared_bytes());
    S.done = 0;
    S.first_done = -1;
    S.at_bar = 0;
    S.bar_file = nullptr;
    S.bar_line = 0;
    memset(S.w, 0, sizeof S.w);
    for (int i = 0; i < S.n; i++) S.f[i].state = F_NEW;
    S.next_new = 0;
    for (;;) {
        bool ran = false;
        for (int i = 0; i < S.n; i++) {
            if (S.f[i].state == F_NEW) { /* threads start in order: i == S.next_new */
                S.next_new = i + 1;
                S.f[i].state = F_RUN;
                fiber_prepare(S.f[i]);
            } else if (S.f[i].state != F_RUN) {
                continue;
            }
            switch_to(i);
            ran = true;
        }
        if (S.done == S.n) break;
        if (!ran) report_deadlock();
    }
}

bool find_alloc(const void *p, uintptr_t *base, size_t *bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    if (a > it->first + it->second) return false;
    *base = it->first;
    *bytes = it->second;
    return true;
}

bool is_device(const void *p)
{
    std::lock_guard<std::mutex> g(mem_lock);
    uintptr_t b;
    size_t n;
    return p && find_alloc(p, &b, &n) && (uintptr_t)p < b + n;
}

void check_redzones(const char *after)
{
    std::lock_guard<std::mutex> g(mem_lock);
    for (auto &a : allocs) {
        const unsigned char *z = (const unsigned char *)(a.first + a.second);
        for (size_t i = 0; i < REDZONE; i++)
            if (z[i] != REDZONE_BYTE) {
                fprintf(stderr, "cuda-emu: %s wrote past the end of the %zu-byte allocation at %p (byte +%zu)\n", after,
                        a.second, (void *)a.first, i);
                fflush(stderr);
                abort();
            }
    }
}

} // namespace

/* A fiber runs its thread; when that returns without having waited, the fiber goes straight on
 * with the next thread not started yet, on the same stack (that thread's own stack is unused), so a
 * kernel without barriers costs one switch per block, not two per thread. A thread that waits keeps
 * the stack it runs on until it ends. */
extern "C" void kvs_emu_fiber_main(void)
{
    for (;;) {
        S.fn(S.arg);
        thread_finish();
        if (S.next_new >= S.n) break;
        int k = S.next_new++;
        S.f[k].state = F_RUN;
        S.cur = k;
        kvs_emu::thread_idx = S.f[k].tid;
    }
    yield();
    abort(); /* a finished fiber is never resumed */
}

/* ---------------------------------------------------------------- synchronisation */

void kvs_emu::syncthreads(const char *file, int line)
{
    int i = S.cur;
    const uint3 &t = tid_of(i);
    if (S.done) {
        const uint3 &e = tid_of(S.first_done);
        die("thread (%u,%u,%u) reached __syncthreads (%s:%d) after thread (%u,%u,%u) exited", t.x, t.y, t.z, file,
            line, e.x, e.y, e.z);
    }
    if (S.at_bar == 0) {
        S.bar_file = file;
        S.bar_line = line;
    } else if (S.bar_line != line || strcmp(S.bar_file, file)) {
        die("divergent __syncthreads: thread (%u,%u,%u) at %s:%d while %d thread(s) wait at %s:%d", t.x, t.y, t.z,
            file, line, S.at_bar, S.bar_file, S.bar_line);
    }
    if (++S.at_bar == S.n) {
        for (int k = 0; k < S.n; k++)
            if (S.f[k].state == F_BAR) S.f[k].state = F_RUN;
        S.at_bar = 0;
        return;
    }
    S.f[i].state = F_BAR;
    yield();
}

static uint64_t warp_op(const char *file, int line, int kind, unsigned mask, uint64_t bits, int arg, int width)
{
    int i = S.cur, w = i >> 5, lane = i & 31;
    const uint3 &t = tid_of(i);
    warp &W = S.w[w];
    unsigned valid = warp_lanes_mask(w);
    if (!(mask >> lane & 1u))
        die("thread (%u,%u,%u) calls %s (%s:%d) with mask 0x%08x that leaves out its own lane %d", t.x, t.y, t.z,
            kind_name[kind], file, line, mask, lane);
    if (mask & ~valid)
        die("%s (%s:%d) mask 0x%08x names lanes beyond the %d threads of warp %d", kind_name[kind], file, line, mask,
            __builtin_popcount(valid), w);
    if (mask & W.exited)
        die("thread (%u,%u,%u) waits at %s (%s:%d) for lanes 0x%08x that have exited", t.x, t.y, t.z,
            kind_name[kind], file, line, mask & W.exited);
    if (kind != K_SYNCWARP && (width <= 0 || width > 32 || (width & (width - 1))))
        die("%s (%s:%d) width %d is not a power of two up to 32", kind_name[kind], file, line, width);
    if (!W.pending) {
        W.mask = mask;
        W.kind = kind;
        W.file = file;
        W.line = line;
    } else if (W.mask != mask || W.kind != kind || W.line != line || strcmp(W.file, file)) {
        die("warp %d diverged: lane %d at %s (%s:%d, mask 0x%08x) while lanes 0x%08x wait at %s (%s:%d, mask 0x%08x)",
            w, lane, kind_name[kind], file, line, mask, W.pending, kind_name[W.kind], W.file, W.line, W.mask);
    }
    int seg = lane & ~(width - 1), in = lane - seg, src = lane;
    switch (kind) {
    case K_IDX: src = seg + (arg & (width - 1)); break;
    case K_UP: src = in >= arg ? lane - arg : lane; break;
    case K_DOWN: src = in + arg < width ? lane + arg : lane; break;
    case K_XOR: src = lane ^ arg; src = src >= 0 && src < seg + width ? src : lane; break;
    default: break;
    }
    W.val[lane] = bits;
    W.src[lane] = src;
    W.pending |= 1u << lane;
    if (W.pending == mask) {
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1u)) continue;
            int s = W.src[l];
            if (s < 0 || s > 31 || !(mask >> s & 1u))
                die("%s (%s:%d): lane %d reads lane %d, which is not in mask 0x%08x", kind_name[kind], file, line, l, s,
                    mask);
            W.out[l] = W.val[s];
            if (l != lane) S.f[w * 32 + l].state = F_RUN;
        }
        W.pending = 0;
        return W.out[lane];
    }
    S.f[i].state = F_WARP;
    yield();
    return W.out[lane];
}

void kvs_emu::syncwarp(const char *file, int line, unsigned mask) { warp_op(file, line, K_SYNCWARP, mask, 0, 0, 32); }

/* WMMA misuse (tests/cuda_emu/include/mma.h): a misaligned pointer or leading dimension. */
void kvs_emu::fault(const char *file, int line, const char *what)
{
    const uint3 &t = tid_of(S.cur);
    die("thread (%u,%u,%u) at %s:%d: %s", t.x, t.y, t.z, file, line, what);
}

uint64_t kvs_emu::shfl(const char *file, int line, int kind, unsigned mask, uint64_t bits, int arg, int width)
{
    return warp_op(file, line, kind, mask, bits, arg, width);
}

/* ---------------------------------------------------------------- launch */

bool kvs_emu::check_kernel_pointer(const char *kernel, int index, const void *p)
{
    if (!p) return true;
    std::lock_guard<std::mutex> g(mem_lock);
    uintptr_t b;
    size_t n;
    if (find_alloc(p, &b, &n)) return true;
    say("launch of %s: pointer argument %d (%p) is not device memory", kernel, index, p);
    fail(cudaErrorInvalidValue);
    return false;
}

int kvs_emu::launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, thread_fn fn,
                    void *arg)
{
    std::lock_guard<std::mutex> g(S.lock);
    uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (!block.x || !block.y || !block.z || block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) {
        say("launch of %s: block (%u,%u,%u) outside the limits (1..1024 threads, z <= 64)", name, block.x, block.y,
            block.z);
        return fail(cudaErrorInvalidConfiguration);
    }
    if (!grid.x || !grid.y || !grid.z || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        say("launch of %s: grid (%u,%u,%u) outside the limits (x 1..2^31-1, y and z 1..65535)", name, grid.x, grid.y,
            grid.z);
        return fail(cudaErrorInvalidConfiguration);
    }
    if (shmem) {
        say("launch of %s: %zu bytes of dynamic shared memory: not emulated", name, shmem);
        return fail(cudaErrorInvalidValue);
    }
    /* all static __shared__ arrays of the library together: an upper bound of this kernel's */
    if (shared_bytes() + shmem > SHARED_LIMIT) {
        say("launch of %s: %zu bytes of shared memory > %zu", name, shared_bytes() + shmem, SHARED_LIMIT);
        return fail(cudaErrorInvalidValue);
    }
    if (S.f.size() < threads) S.f.resize(1024);
    S.n = (int)threads;
    for (int i = 0; i < S.n; i++) {
        S.f[i].tid = uint3{(unsigned)i % block.x, (unsigned)i / block.x % block.y, (unsigned)i / (block.x * block.y)};
    }
    S.fn = fn;
    S.arg = arg;
    S.name = name;
    grid_dim = grid;
    block_dim = block;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                block_idx = uint3{x, y, z};
                run_block();
            }
    char what[160];
    snprintf(what, sizeof what, "kernel %s", name);
    check_redzones(what);
    S.name = nullptr;
    return cudaSuccess;
}

/* ---------------------------------------------------------------- runtime API */

bool kvs_emu::device_range(const void *p, size_t bytes, const char *what)
{
    std::lock_guard<std::mutex> g(mem_lock);
    uintptr_t b;
    size_t n;
    if (!p || !find_alloc(p, &b, &n)) {
        say("%s: %p is not device memory", what, p);
        return false;
    }
    if (bytes > n || (uintptr_t)p - b > n - bytes) {
        say("%s: %zu bytes at offset %zu run past the end of a %zu-byte allocation", what, bytes,
            (size_t)((uintptr_t)p - b), n);
        return false;
    }
    return true;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    }
    return "unrecognized error code";
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    if (!v) return fail(cudaErrorInvalidValue);
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v)
{
    if (!v) return fail(cudaErrorInvalidValue);
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n)
{
    if (!n) return fail(cudaErrorInvalidValue);
    *n = 1;
    return cudaSuccess;
}

/* The emulated card's size: KVS_CUDA_EMU_MEM (bytes, or with a K, M, G or T suffix of powers of
 * 1024) when set, read at every call so that a test can change it; the host's physical memory
 * otherwise. Allocations beyond it fail as on a full GPU. */
static size_t emu_total_mem(void)
{
    const char *e = getenv("KVS_CUDA_EMU_MEM");
    if (e && *e) {
        char *end = nullptr;
        unsigned long long v = strtoull(e, &end, 10);
        int shift = 0;
        switch (*end) {
        case 'K': shift = 10, end++; break;
        case 'M': shift = 20, end++; break;
        case 'G': shift = 30, end++; break;
        case 'T': shift = 40, end++; break;
        default: break;
        }
        if (end != e && !*end && v > 0 && v <= (~0ull >> shift)) return (size_t)(v << shift);
        static bool told;
        if (!told) say("KVS_CUDA_EMU_MEM=%s is not a size (bytes, or a number with K, M, G or T): ignored", e);
        told = true;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
    size_t total = emu_total_mem();
    std::lock_guard<std::mutex> g(mem_lock);
    *total_bytes = total;
    *free_bytes = live_bytes < total ? total - live_bytes : 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device)
{
    if (!p) return fail(cudaErrorInvalidValue);
    if (device != 0) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", kvs_cuda_emulation());
    p->totalGlobalMem = emu_total_mem();
    p->sharedMemPerBlock = SHARED_LIMIT;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->major = 8; /* the kernels' oldest real target */
    p->minor = 0;
    /* KVS_CUDA_EMU_CC=75 pretends another compute capability (tests of the weights' dtype choice) */
    const char *cc = getenv("KVS_CUDA_EMU_CC");
    if (cc && cc[0] >= '1' && cc[0] <= '9' && cc[1] >= '0' && cc[1] <= '9' && !cc[2])
        p->major = cc[0] - '0', p->minor = cc[1] - '0';
    p->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *device)
{
    if (!device) return fail(cudaErrorInvalidValue);
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

struct kvs_emu_stream {
    unsigned flags;
};
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    if (!s) return fail(cudaErrorInvalidValue);
    *s = new kvs_emu_stream{flags};
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}
/* Launches and copies finish before they return: every stream is always idle. */
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (!p) return fail(cudaErrorInvalidValue);
    *p = nullptr;
    if (!bytes) return cudaSuccess;
    size_t total = (bytes + REDZONE + 255) & ~(size_t)255;
    if (total < bytes) return fail(cudaErrorMemoryAllocation);
    size_t card = emu_total_mem();
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (bytes > card || live_bytes > card - bytes) return fail(cudaErrorMemoryAllocation);
    }
    unsigned char *m = (unsigned char *)aligned_alloc(256, total);
    if (!m) return fail(cudaErrorMemoryAllocation);
    memset(m, 0xff, bytes); /* NaN in every float, fp16 and bf16 */
    memset(m + bytes, REDZONE_BYTE, REDZONE);
    std::lock_guard<std::mutex> g(mem_lock);
    allocs[(uintptr_t)m] = bytes;
    live_bytes += bytes;
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        auto it = allocs.find((uintptr_t)p);
        if (it == allocs.end()) {
            fprintf(stderr, "cuda-emu: cudaFree(%p): not a live device allocation (freed twice, or not from "
                            "cudaMalloc)\n", p);
            fflush(stderr);
            abort();
        }
    }
    check_redzones("cudaFree: a kernel or copy");
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = allocs.find((uintptr_t)p);
    live_bytes -= it->second;
    allocs.erase(it);
    free(p);
    return cudaSuccess;
}

/* NVTX ranges: pushes append "name>" to a log, pops append "<"; a pop without a push is recorded
 * as "!" so the nesting can be checked. kvs_cuda_emu_nvtx_log hands the log over and clears it. */
static std::string nvtx_log;
static int nvtx_depth;
int nvtxRangePushA(const char *message)
{
    std::lock_guard<std::mutex> g(mem_lock);
    nvtx_log += message ? message : "(null)";
    nvtx_log += '>';
    return nvtx_depth++;
}
int nvtxRangePop(void)
{
    std::lock_guard<std::mutex> g(mem_lock);
    if (nvtx_depth == 0) {
        nvtx_log += '!';
        return -1;
    }
    nvtx_log += '<';
    return --nvtx_depth;
}
/* Copies the log into BUF (CAP bytes, truncated) and clears it; returns the current depth. */
extern "C" __attribute__((visibility("default"))) int kvs_cuda_emu_nvtx_log(char *buf, size_t cap)
{
    std::lock_guard<std::mutex> g(mem_lock);
    if (cap) snprintf(buf, cap, "%s", nvtx_log.c_str());
    nvtx_log.clear();
    return nvtx_depth;
}

/* Pinned host memory is plain host memory here, tracked so that a wrong free is reported. */
static std::map<uintptr_t, size_t> host_allocs;
cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    if (!p) return fail(cudaErrorInvalidValue);
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return fail(cudaErrorMemoryAllocation);
    memset(*p, 0xff, bytes); /* NaN, like device memory: nothing may read it before writing */
    std::lock_guard<std::mutex> g(mem_lock);
    host_allocs[(uintptr_t)*p] = bytes;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    if (!p) return cudaSuccess;
    {
        std::lock_guard<std::mutex> g(mem_lock);
        if (!host_allocs.erase((uintptr_t)p)) {
            fprintf(stderr, "cuda-emu: cudaFreeHost(%p): not from cudaMallocHost\n", p);
            fflush(stderr);
            abort();
        }
    }
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t)
{
    if (!bytes) return cudaSuccess;
    if (!dst || !src) return fail(cudaErrorInvalidValue);
    bool dd, sd;
    switch (kind) {
    case cudaMemcpyHostToHost: dd = false, sd = false; break;
    case cudaMemcpyHostToDevice: dd = true, sd = false; break;
    case cudaMemcpyDeviceToHost: dd = false, sd = true; break;
    case cudaMemcpyDeviceToDevice: dd = true, sd = true; break;
    case cudaMemcpyDefault: dd = is_device(dst), sd = is_device(src); break;
    default: return fail(cudaErrorInvalidMemcpyDirection);
    }
    if (dd ? !kvs_emu::device_range(dst, bytes, "cudaMemcpy destination") : is_device(dst)) {
        if (!dd) say("cudaMemcpy: host destination %p is device memory (kind %d)", dst, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    if (sd ? !kvs_emu::device_range(src, bytes, "cudaMemcpy source") : is_device(src)) {
        if (!sd) say("cudaMemcpy: host source %p is device memory (kind %d)", src, (int)kind);
        return fail(cudaErrorInvalidValue);
    }
    memmove(dst, src, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t)
{
    if (!bytes) return cudaSuccess;
    if (!kvs_emu::device_range(p, bytes, "cudaMemset")) return fail(cudaErrorInvalidValue);
    memset(p, value, bytes);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }
