// The CPU backend's embedding lookup and gradient, and the softmax cross
// entropy: fused over a whole vocabulary row, or in three passes over a
// vocabulary shard.
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "weft/error.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

void CpuBackend::embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c,
                                   int64_t first, int64_t rows) {
  OpTimer timer(profile_.get(), kOpEmbFwd);
  const size_t es = dtype_size(table.dtype);
  const char* base = static_cast<const char*>(table.data);
  pool_.parallel_for(n, row_grain(c), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
      const int64_t row = static_cast<int64_t>(ids[r]) - first;
      if (row >= 0 && row < rows)
        widen_row(out + r * c, TypedPtr(base + row * c * es, table.dtype), c);
      else
        std::fill(out + r * c, out + (r + 1) * c, 0.f);  // another shard's row
    }
  });
}

void CpuBackend::embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                                    int64_t first, int64_t rows) {
  OpTimer timer(profile_.get(), kOpEmbBwd);
  // Partitioned over columns: each task owns a column range of every table row
  // and adds the rows of dout in order, so repeated ids never race.
  for (int64_t r = 0; r < n; ++r) WEFT_ASSERT(ids[r] >= 0, "embedding: negative id " + std::to_string(ids[r]));
  pool_.parallel_for(c, kColumnGrain, [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t row = static_cast<int64_t>(ids[r]) - first;
      if (row < 0 || row >= rows) continue;
      float* dst = dtable + row * c;
      const float* src = dout + r * c;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  });
}

namespace {

// One row of the fused softmax cross-entropy, AVX2: the max, then e^(x - max)
// (stored in dr when there is a gradient) summed in double (8 floats widened
// per step, two accumulators), then dr scaled to dloss_scale * softmax in
// place while it is still in cache. Returns the loss. dr may alias lr:
// lr[target] is read first.
WEFT_AVX2_FMA float xent_row_avx2(float* dr, const float* lr, int32_t target, int64_t v, int64_t vp, float scale) {
  const float x_target = lr[target];
  __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= v; j += 8) vmax = _mm256_max_ps(_mm256_loadu_ps(lr + j), vmax);
  float mx = simd::hmax(vmax);
  for (; j < v; ++j) mx = std::max(mx, lr[j]);
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (j = 0; j + 8 <= v; j += 8) {
    const __m256 e = simd::exp256(_mm256_sub_ps(_mm256_loadu_ps(lr + j), vmx));
    if (dr) _mm256_storeu_ps(dr + j, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double s = simd::hsum(s0) + simd::hsum(s1);
  for (; j < v; ++j) {
    const float e = std::exp(lr[j] - mx);
    if (dr) dr[j] = e;
    s += static_cast<double>(e);
  }
  const double log_z = static_cast<double>(mx) + std::log(s);
  const float loss = static_cast<float>(log_z - static_cast<double>(x_target));
  if (dr) {
    const float k = static_cast<float>(static_cast<double>(scale) / s);  // dloss_scale / sum
    const __m256 vk = _mm256_set1_ps(k);
    for (j = 0; j + 8 <= v; j += 8) _mm256_storeu_ps(dr + j, _mm256_mul_ps(vk, _mm256_loadu_ps(dr + j)));
    for (; j < v; ++j) dr[j] *= k;
    dr[target] -= scale;
    std::fill(dr + v, dr + vp, 0.f);
  }
  return loss;
}

}  // namespace

void CpuBackend::cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                               int64_t v, int64_t vp, float dloss_scale) {
  OpTimer timer(profile_.get(), kOpXent);
  WEFT_ASSERT(v > 0 && vp >= v, "cross_entropy: need 0 < v <= vp");
  pool_.parallel_for(n, row_grain(vp), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vp;
      float* dr = dlogits ? dlogits + r * vp : nullptr;
      const int32_t target = targets[r];
      if (target < 0) {
        losses[r] = 0.f;
        if (dr) std::fill(dr, dr + vp, 0.f);
        continue;
      }
      WEFT_ASSERT(target < v, "cross_entropy: target " + std::to_string(target) + " >= vocab " + std::to_string(v));
      if (avx2_) {
        losses[r] = xent_row_avx2(dr, lr, target, v, vp, dloss_scale);
        continue;
      }
      // Scalar reference path; in-place safe for the same reason.
      float mx = lr[0];
      for (int64_t j = 1; j < v; ++j) mx = std::max(mx, lr[j]);
      double s = 0.0;
      for (int64_t j = 0; j < v; ++j) s += std::exp(static_cast<double>(lr[j] - mx));
      const double log_z = static_cast<double>(mx) + std::log(s);
      losses[r] = static_cast<float>(log_z - static_cast<double>(lr[target]));
      if (dr) {
        const float lz = static_cast<float>(log_z);
        for (int64_t j = 0; j < v; ++j) dr[j] = dloss_scale * std::exp(lr[j] - lz);
        dr[target] -= dloss_scale;
        std::fill(dr + v, dr + vp, 0.f);
      }
    }
  });
}

// Vocabulary-parallel passes: the shard's real columns are [0, real) with
// real = clamp(v - first, 0, vs); sums in double, like the fused kernel.
namespace {
int64_t real_columns(int64_t vs, int64_t first, int64_t v) { return std::clamp<int64_t>(v - first, 0, vs); }
}  // namespace

void CpuBackend::xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                                int64_t n, int64_t vs, int64_t first, int64_t v) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < real; ++j) mx = std::max(mx, lr[j]);
      row_max[r] = mx;
      const int64_t t = static_cast<int64_t>(targets[r]) - first;
      target_logit[r] = targets[r] >= 0 && t >= 0 && t < real ? lr[t] : 0.f;
    }
  });
}

void CpuBackend::xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n,
                                    int64_t vs, int64_t first, int64_t v) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      double s = 0.0;
      for (int64_t j = 0; j < real; ++j) s += std::exp(static_cast<double>(lr[j] - row_max[r]));
      sum_exp[r] = static_cast<float>(s);
    }
  });
}

void CpuBackend::xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                                   const float* row_max, const float* sum_exp, const float* target_logit,
                                   int64_t n, int64_t vs, int64_t first, int64_t v, float dloss_scale) {
  OpTimer timer(profile_.get(), kOpXent);
  const int64_t real = real_columns(vs, first, v);
  pool_.parallel_for(n, row_grain(vs), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lr = logits + r * vs;
      float* dr = dlogits ? dlogits + r * vs : nullptr;
      if (targets[r] < 0) {
        losses[r] = 0.f;
        if (dr) std::fill(dr, dr + vs, 0.f);
        continue;
      }
      WEFT_ASSERT(targets[r] < v, "cross_entropy: target " + std::to_string(targets[r]) + " >= vocab " +
                                      std::to_string(v));
      const double log_z = static_cast<double>(row_max[r]) + std::log(static_cast<double>(sum_exp[r]));
      losses[r] = static_cast<float>(log_z - static_cast<double>(target_logit[r]));
      if (!dr) continue;
      const float lz = static_cast<float>(log_z);
      for (int64_t j = 0; j < real; ++j) dr[j] = dloss_scale * std::exp(lr[j] - lz);
      const int64_t t = static_cast<int64_t>(targets[r]) - first;
      if (t >= 0 && t < real) dr[t] -= dloss_scale;
      std::fill(dr + real, dr + vs, 0.f);
    }
  });
}

}  // namespace weft
