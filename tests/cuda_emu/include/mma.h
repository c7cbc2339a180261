/* Stand-in for CUDA's <mma.h> (nvcuda::wmma) under host emulation: 16x16x16 fragments of __half or
 * __nv_bfloat16 inputs with float accumulators, row- or column-major, load/store/fill/mma_sync.
 * The fragment layout is opaque by the API contract, so each emulated thread holds the whole tile
 * and computes the whole product (fp32 fused multiply-adds in k order). Every call is warp-collective
 * as on a GPU: all 32 lanes must reach the same call site (checked like __syncwarp), and pointers
 * and leading dimensions must meet the alignment the hardware needs (256-bit pointers, ldm a
 * multiple of 16 bytes). Written for kvscope's kernels; depends on kvs_emu.h only. */
#ifndef KVS_EMU_MMA_H
#define KVS_EMU_MMA_H

#include <cstdint>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "kvs_emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
static inline float to_float(__half v) { return __half2float(v); }
static inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
static inline float to_float(float v) { return v; }

template <typename Use, int M, int N, int K> struct shape;
template <int M, int N, int K> struct shape<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct shape<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct shape<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

/* The whole warp meets at the call site (divergence shows as a deadlock or a "diverged" line). */
static inline void collective(const char *file, int line) { kvs_emu::syncwarp(file, line, 0xffffffffu); }

template <typename T> static inline void check_ptr(const T *p, unsigned ldm, const char *file, int line)
{
    if ((uintptr_t)p % 32u) kvs_emu::fault(file, line, "wmma pointer not 256-bit aligned");
    if ((ldm * sizeof(T)) % 16u) kvs_emu::fault(file, line, "wmma ldm not a multiple of 16 bytes");
}
} // namespace detail

/* Elements x[r * cols + c] of the logical (rows, cols) tile, row-major whatever LAYOUT says. */
template <typename Use, int M, int N, int K, typename T, typename Layout = void> class fragment {
  public:
    static constexpr int rows = detail::shape<Use, M, N, K>::rows, cols = detail::shape<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols;
    T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, const T &v, const char *file = __builtin_FILE(),
                                 int line = __builtin_LINE())
{
    for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
    detail::collective(file, line);
}

/* matrix_a / matrix_b: the layout is the fragment's; element (r, c) at p[r*ldm + c] (row-major) or
 * p[c*ldm + r] (column-major). Each lane reads before the warp meets, so a missing barrier before
 * the load shows as a read of values another lane has not written yet. */
template <typename Use, int M, int N, int K, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const T *p, unsigned ldm,
                                    const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                  "a matrix_a/matrix_b fragment names its layout");
    detail::check_ptr(p, ldm, file, line);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = std::is_same<L, row_major>::value ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    detail::collective(file, line);
}

template <int M, int N, int K>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *p, unsigned ldm,
                                    layout_t layout, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    detail::check_ptr(p, ldm, file, line);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            f.x[r * f.cols + c] = layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    detail::collective(file, line);
}

/* Every lane writes the same values: what one lane stores is what the warp stores. */
template <int M, int N, int K>
static inline void store_matrix_sync(float *p, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                                     layout_t layout, const char *file = __builtin_FILE(),
                                     int line = __builtin_LINE())
{
    detail::check_ptr(p, ldm, file, line);
    for (int r = 0; r < f.rows; r++)
        for (int c = 0; c < f.cols; c++)
            (layout == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]) = f.x[r * f.cols + c];
    detail::collective(file, line);
}

/* d = a · b + c in fp32 (d may be c). */
template <int M, int N, int K, typename T, typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, T, LA> &a,
                            const fragment<matrix_b, M, N, K, T, LB> &b,
                            const fragment<accumulator, M, N, K, float> &c, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE())
{
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                  "wmma inputs are __half or __nv_bfloat16 here");
    float out[M * N];
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float s = c.x[m * N + n];
            for (int k = 0; k < K; k++) s = fmaf(detail::to_float(a.x[m * K + k]), detail::to_float(b.x[k * N + n]), s);
            out[m * N + n] = s;
        }
    for (int i = 0; i < M * N; i++) d.x[i] = out[i];
    detail::collective(file, line);
}

} // namespace wmma
} // namespace nvcuda

#endif
