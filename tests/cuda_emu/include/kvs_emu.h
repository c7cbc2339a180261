/* CUDA host emulation, core: the execution model the kernels see when the kernels/ .cu files are compiled as
 * host C++ (g++ -DKVS_CUDA_EMU). One fiber per CUDA thread (tests/cuda_emu/emu.cpp) so that
 * __syncthreads, __syncwarp and warp shuffles really synchronise and are checked for divergence;
 * __shared__ variables live in one linker section that is NaN-filled before every block.
 * Included through the stand-in cuda_runtime.h only; depends on the C++17 standard library. */
#ifndef KVS_EMU_H
#define KVS_EMU_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

typedef struct kvs_emu_stream *cudaStream_t;

/* CUDA qualifiers are plain C++ here. */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
/* Blocks run one after another, so static storage is per-block storage; the section lets the
 * launcher find every __shared__ byte and fill it with NaN before each block. */
#define __shared__ static __attribute__((section("kvs_emu_shared")))

namespace kvs_emu {

/* Index of the running fiber and of its block; written by the scheduler only. */
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;

void syncthreads(const char *file, int line);
void syncwarp(const char *file, int line, unsigned mask = 0xffffffffu);
/* A call a GPU would reject or fault on (a misaligned WMMA pointer): one line naming the call site
 * and the thread, then abort. */
[[noreturn]] void fault(const char *file, int line, const char *what);
/* kind: 0 idx, 1 up, 2 down, 3 xor. The value travels as 64 bits. */
uint64_t shfl(const char *file, int line, int kind, unsigned mask, uint64_t bits, int arg, int width);

template <typename T> static inline T shfl_t(const char *file, int line, int kind, unsigned mask, T v, int arg,
                                             int width)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = shfl(file, line, kind, mask, bits, arg, width);
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* __syncwarp() and __syncwarp(mask) at one call site. */
struct syncwarp_at {
    const char *file;
    int line;
    void operator()(unsigned mask = 0xffffffffu) const { syncwarp(file, line, mask); }
};

template <int KIND, typename T>
static inline T shfl_kind(const char *file, int line, unsigned mask, T v, int arg, int width = 32)
{
    return shfl_t(file, line, KIND, mask, v, arg, width);
}

/* Runs the grid: every (block, thread) calls FN(ARG). Returns a cudaError_t value. */
typedef void (*thread_fn)(void *arg);
int launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, thread_fn fn, void *arg);
/* Pointer arguments of a kernel must be device memory (or NULL); false (with a message) otherwise. */
bool check_kernel_pointer(const char *kernel, int index, const void *p);

template <typename T> static inline bool check_arg(const char *kernel, int index, const T &v)
{
    if constexpr (std::is_pointer<T>::value) return check_kernel_pointer(kernel, index, (const void *)v);
    else return true;
}

template <typename... P> struct launcher {
    const char *name;
    void (*kernel)(P...);
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;

    template <typename... A> void operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
        struct bound {
            void (*kernel)(P...);
            std::tuple<P...> args;
        } b{kernel, std::tuple<P...>(std::forward<A>(a)...)};
        bool ok = std::apply(
            [this](const P &...p) {
                int i = 0;
                bool all = true;
                ((all = check_arg(name, i++, p) && all), ...);
                return all;
            },
            b.args);
        if (!ok) return;
        launch(name, grid, block, shmem, stream,
               [](void *p) {
                   bound *bb = (bound *)p;
                   std::apply(bb->kernel, bb->args); /* each thread gets its own copies of the arguments */
               },
               &b);
    }
};

template <typename... P>
static inline launcher<P...> make_launcher(const char *name, void (*kernel)(P...), dim3 grid, dim3 block,
                                           size_t shmem, cudaStream_t stream)
{
    return launcher<P...>{name, kernel, grid, block, shmem, stream};
}

} // namespace kvs_emu

#define threadIdx (kvs_emu::thread_idx)
#define blockIdx (kvs_emu::block_idx)
#define blockDim (kvs_emu::block_dim)
#define gridDim (kvs_emu::grid_dim)

#define __syncthreads() kvs_emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) kvs_emu::syncwarp_at{__FILE__, __LINE__}(__VA_ARGS__)
#define __shfl_sync(...) kvs_emu::shfl_kind<0>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) kvs_emu::shfl_kind<1>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) kvs_emu::shfl_kind<2>(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) kvs_emu::shfl_kind<3>(__FILE__, __LINE__, __VA_ARGS__)

/* Atomics: blocks run one after another and a fiber only yields at a barrier or shuffle, so a
 * plain read-modify-write is indivisible here. Returns the old value, as CUDA does. */
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
    unsigned long long old = *p;
    *p = old + v;
    return old;
}

/* Device math that the host library lacks. */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __fdividef(float a, float b) { return a / b; }
[[noreturn]] static inline void __trap(void) { __builtin_trap(); }

#endif
