// The CPU backend's optimizer kernel: AdamW over a flat range (AVX2 and scalar
// paths with the same bits).
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <cmath>

#include "weft/error.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

namespace {

struct AdamWCoef {
  float lr, beta1, beta2, eps, wd, bc1, bc2, grad_scale;
};

// One pass over p, g, m, v. The vector path does, lane by lane, exactly the
// scalar operations in the scalar order (no FMA), so both give the same bits.
inline void adamw_scalar(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& k) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = k.grad_scale * g[i];
    const float mi = k.beta1 * m[i] + (1.f - k.beta1) * gi;
    const float vi = k.beta2 * v[i] + (1.f - k.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi / k.bc1;
    const float vhat = vi / k.bc2;
    p[i] -= k.lr * (mhat / (std::sqrt(vhat) + k.eps) + k.wd * p[i]);
  }
}

WEFT_AVX2 void adamw_avx2(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& k) {
  const __m256 b1 = _mm256_set1_ps(k.beta1), b2 = _mm256_set1_ps(k.beta2);
  const __m256 omb1 = _mm256_set1_ps(1.f - k.beta1), omb2 = _mm256_set1_ps(1.f - k.beta2);
  const __m256 bc1 = _mm256_set1_ps(k.bc1), bc2 = _mm256_set1_ps(k.bc2);
  const __m256 lr = _mm256_set1_ps(k.lr), eps = _mm256_set1_ps(k.eps), wd = _mm256_set1_ps(k.wd);
  const __m256 gs = _mm256_set1_ps(k.grad_scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_mul_ps(gs, _mm256_loadu_ps(g + i));
    const __m256 mi = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(omb1, gi));
    const __m256 vi =
        _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(omb2, gi), gi));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    const __m256 mhat = _mm256_div_ps(mi, bc1);
    const __m256 vhat = _mm256_div_ps(vi, bc2);
    const __m256 pi = _mm256_loadu_ps(p + i);
    const __m256 upd = _mm256_add_ps(_mm256_div_ps(mhat, _mm256_add_ps(_mm256_sqrt_ps(vhat), eps)), _mm256_mul_ps(wd, pi));
    _mm256_storeu_ps(p + i, _mm256_sub_ps(pi, _mm256_mul_ps(lr, upd)));
  }
  adamw_scalar(p + i, g + i, m + i, v + i, n - i, k);
}

}  // namespace

void CpuBackend::adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                       float eps, float weight_decay, int64_t step, float grad_scale) {
  OpTimer timer(profile_.get(), kOpAdamW);
  WEFT_ASSERT(step >= 1, "adamw: step counts from 1");
  AdamWCoef k;
  k.lr = lr, k.beta1 = beta1, k.beta2 = beta2, k.eps = eps, k.wd = weight_decay, k.grad_scale = grad_scale;
  k.bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step)));
  k.bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step)));
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (avx2_) return adamw_avx2(p + i0, g + i0, m + i0, v + i0, i1 - i0, k);
    adamw_scalar(p + i0, g + i0, m + i0, v + i0, i1 - i0, k);
  });
}

}  // namespace weft
