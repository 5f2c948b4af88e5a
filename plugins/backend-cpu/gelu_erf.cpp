// Exact GeLU on the CPU backend: gelu(x) = x Phi(x), Phi the standard normal
// CDF 0.5 (1 + erf(x / sqrt 2)); gelu'(x) = Phi(x) + x phi(x), phi the density.
// 16-bit inputs are widened to fp32 first.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_kernels.hpp"

namespace weft {

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per chunk
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

}  // namespace

void CpuBackend::gelu_erf_forward(float* out, TypedPtr x_in, int64_t n) {
  Tensor wide;
  const float* x = widen(x_in, n, wide);  // [n] fp32
  pool_.parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double v = x[i];
      out[i] = static_cast<float>(0.5 * v * (1.0 + std::erf(v * kInvSqrt2)));
    }
  });
}

void CpuBackend::gelu_erf_backward(float* dx, TypedPtr x_in, const float* dout, int64_t n) {
  Tensor wide;
  const float* x = widen(x_in, n, wide);  // [n] fp32
  pool_.parallel_for(n, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double v = x[i];
      const double cdf = 0.5 * (1.0 + std::erf(v * kInvSqrt2));
      const double pdf = kInvSqrt2Pi * std::exp(-0.5 * v * v);
      dx[i] = static_cast<float>((cdf + v * pdf) * dout[i]);
    }
  });
}

}  // namespace weft
