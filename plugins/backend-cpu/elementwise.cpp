// The CPU backend's elementwise kernels and reductions: bias add and its
// gradient, GeLU (tanh form; 16-bit inputs widened first), add, accumulate,
// scale, fill, sum and sum of squares (of f32, bf16 or f16; fixed blocks in double, independent of
// the thread count).
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

namespace {

// out[r0:r1, :] += bias
WEFT_INLINE void add_bias_rows(float* out, const float* bias, int64_t r0, int64_t r1, int64_t o) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = out + r * o;
    for (int64_t j = 0; j < o; ++j) row[j] += bias[j];
  }
}
WEFT_DISPATCH(add_bias_rows, (float* out, const float* bias, int64_t r0, int64_t r1, int64_t o),
              (out, bias, r0, r1, o))

// dbias[j0:j1] += column sums of dout[N, O] over rows in order, in double (acc: j1 - j0 doubles).
WEFT_INLINE void bias_grad_cols(float* dbias, const float* dout, double* acc, int64_t n, int64_t o, int64_t j0,
                                int64_t j1) {
  const int64_t w = j1 - j0;
  for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    const float* row = dout + r * o + j0;
    for (int64_t j = 0; j < w; ++j) acc[j] += row[j];
  }
  for (int64_t j = 0; j < w; ++j) dbias[j0 + j] += static_cast<float>(acc[j]);
}
WEFT_DISPATCH(bias_grad_cols,
              (float* dbias, const float* dout, double* acc, int64_t n, int64_t o, int64_t j0, int64_t j1),
              (dbias, dout, acc, n, o, j0, j1))

}  // namespace

void CpuBackend::add_bias(float* out, TypedPtr bias_in, int64_t n, int64_t o) {
  OpTimer timer(profile_.get(), kOpAddBias);
  Tensor wide;
  const float* bias = widen(bias_in, o, wide);
  pool_.parallel_for(n, row_grain(o), [&](int64_t r0, int64_t r1) {
    if (avx2_) return add_bias_rows_avx2(out, bias, r0, r1, o);
    add_bias_rows_generic(out, bias, r0, r1, o);
  });
}

void CpuBackend::bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) {
  OpTimer timer(profile_.get(), kOpBiasGrad);
  // Partitioned over columns; each column sums its rows in order (in double).
  pool_.parallel_for(o, kColumnGrain, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0);
    if (avx2_) return bias_grad_cols_avx2(dbias, dout, acc.data(), n, o, j0, j1);
    bias_grad_cols_generic(dbias, dout, acc.data(), n, o, j0, j1);
  });
}

// GeLU (tanh form) through the logistic function, which needs one exp and has
// no cancellation in 1 + tanh for large negative inputs:
//   u = a (x + b x^3),  s = (1 + tanh u) / 2 = 1 / (1 + e^{-2u}),
//   gelu(x) = x s,  gelu'(x) = s + 2 x s (1 - s) a (1 + 3 b x^2).
namespace {
constexpr float kGeluA = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluB = 0.044715f;

inline float gelu_s(float v) { return 1.f / (1.f + std::exp(-2.f * (kGeluA * (v + kGeluB * v * v * v)))); }

WEFT_AVX2_FMA inline __m256 gelu_s8(__m256 v) {
  const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
  const __m256 u = _mm256_mul_ps(_mm256_set1_ps(kGeluA), _mm256_fmadd_ps(_mm256_set1_ps(kGeluB), v3, v));
  const __m256 z = simd::exp256(_mm256_mul_ps(_mm256_set1_ps(-2.f), u));
  return _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), z));
}

WEFT_AVX2_FMA inline __m256 gelu_grad8(__m256 v) {
  const __m256 s = gelu_s8(v);
  const __m256 du = _mm256_mul_ps(_mm256_set1_ps(kGeluA),
                                  _mm256_fmadd_ps(_mm256_set1_ps(3.f * kGeluB), _mm256_mul_ps(v, v), _mm256_set1_ps(1.f)));
  const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_add_ps(v, v), s), _mm256_sub_ps(_mm256_set1_ps(1.f), s));
  return _mm256_fmadd_ps(t, du, s);
}

// The last n % 8 elements go through the same vector code (masked), so an
// element's result does not depend on where a chunk boundary falls.
WEFT_AVX2_FMA void gelu_forward_avx2(float* out, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(v, gelu_s8(v)));
  }
  if (i < n) {
    const __m256i mask = simd::tail_mask(n - i);
    const __m256 v = _mm256_maskload_ps(x + i, mask);
    _mm256_maskstore_ps(out + i, mask, _mm256_mul_ps(v, gelu_s8(v)));
  }
}

WEFT_AVX2_FMA void gelu_backward_avx2(float* dx, const float* x, const float* dout, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = gelu_grad8(_mm256_loadu_ps(x + i));
    _mm256_storeu_ps(dx + i, _mm256_mul_ps(g, _mm256_loadu_ps(dout + i)));
  }
  if (i < n) {
    const __m256i mask = simd::tail_mask(n - i);
    const __m256 g = gelu_grad8(_mm256_maskload_ps(x + i, mask));
    _mm256_maskstore_ps(dx + i, mask, _mm256_mul_ps(g, _mm256_maskload_ps(dout + i, mask)));
  }
}

}  // namespace

void CpuBackend::gelu_forward(float* out, TypedPtr x_in, int64_t n) {
  OpTimer timer(profile_.get(), kOpGeluFwd);
  Tensor wide;
  const float* x = widen(x_in, n, wide);  // [n] fp32
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return gelu_forward_avx2(out + i0, x + i0, i1 - i0);
    for (int64_t i = i0; i < i1; ++i) out[i] = x[i] * gelu_s(x[i]);
  });
}

void CpuBackend::gelu_backward(float* dx, TypedPtr x_in, const float* dout, int64_t n) {
  OpTimer timer(profile_.get(), kOpGeluBwd);
  Tensor wide;
  const float* x = widen(x_in, n, wide);  // [n] fp32
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return gelu_backward_avx2(dx + i0, x + i0, dout + i0, i1 - i0);
    for (int64_t i = i0; i < i1; ++i) {
      const float v = x[i], s = gelu_s(v);
      const float du = kGeluA * (1.f + 3.f * kGeluB * v * v);
      dx[i] = (s + 2.f * v * s * (1.f - s) * du) * dout[i];
    }
  });
}

void CpuBackend::add(float* out, const float* a, const float* b, int64_t n) {
  OpTimer timer(profile_.get(), kOpAdd);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

void CpuBackend::accumulate(float* acc, const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpAccumulate);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) acc[i] += x[i];
  });
}

void CpuBackend::scale(float* x, float s, int64_t n) {
  OpTimer timer(profile_.get(), kOpScale);
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] *= s;
  });
}

void CpuBackend::fill(float* x, float value, int64_t n) {
  OpTimer timer(profile_.get(), kOpFill);
  pool_.parallel_for(n, kCopyGrain / 4, [&](int64_t i0, int64_t i1) { std::fill(x + i0, x + i1, value); });
}

namespace {

// Sum (square = false) or sum of squares of x[0, n) in double: 16 partial sums
// (4 vectors of 4 doubles) in a fixed order, then combined in a fixed order.
template <bool kSquare>
WEFT_AVX2_FMA double block_sum_avx2(const float* x, int64_t n) {
  __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int u = 0; u < 4; ++u) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * u));
      acc[u] = kSquare ? _mm256_fmadd_pd(v, v, acc[u]) : _mm256_add_pd(acc[u], v);
    }
  }
  double s = simd::hsum(_mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3])));
  for (; i < n; ++i) s += kSquare ? static_cast<double>(x[i]) * x[i] : static_cast<double>(x[i]);
  return s;
}

template <bool kSquare>
double block_sum_scalar(const float* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += kSquare ? static_cast<double>(x[i]) * x[i] : static_cast<double>(x[i]);
  return s;
}

// Sums over fixed blocks of kSumBlock elements, then the blocks in order: the
// result does not depend on the thread count. A 16-bit x is widened one block
// at a time (exactly), so it sums to the same as its fp32 copy would.
template <bool kSquare>
double blocked_sum(ThreadPool& pool, bool avx2, TypedPtr x, int64_t n) {
  if (n <= 0) return 0.0;
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  const size_t elem = x.dtype == DType::F32 ? 4 : 2;
  std::vector<double> partial(blocks, 0.0);
  pool.parallel_for(blocks, kElementGrain / kSumBlock, [&](int64_t b0, int64_t b1) {
    std::vector<float> wide(x.dtype == DType::F32 ? 0 : kSumBlock);  // [kSumBlock] one widened block
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t i0 = bi * kSumBlock, len = std::min(n, i0 + kSumBlock) - i0;
      const float* xs = static_cast<const float*>(x.data) + i0;
      if (x.dtype != DType::F32) {
        widen_row(wide.data(), TypedPtr(static_cast<const char*>(x.data) + i0 * elem, x.dtype), len);
        xs = wide.data();
      }
      partial[bi] = avx2 ? block_sum_avx2<kSquare>(xs, len) : block_sum_scalar<kSquare>(xs, len);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}
}  // namespace

double CpuBackend::sum_squares(TypedPtr x, int64_t n) {
  OpTimer timer(profile_.get(), kOpSumSq);
  return blocked_sum<true>(pool_, avx2_, x, n);
}

double CpuBackend::sum(const float* x, int64_t n) {
  OpTimer timer(profile_.get(), kOpSum);
  return blocked_sum<false>(pool_, avx2_, x, n);
}

}  // namespace weft
