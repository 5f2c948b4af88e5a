// The CPU backend's dtype conversions: widening bf16 / f16 kernel inputs to
// fp32 (F16C where the CPU has it) and `cast` between f32 and bf16 / f16.
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <cstring>
#include <string>

#include "weft/error.hpp"
#include "weft/half.hpp"

namespace weft {

using namespace cpu;  // NOLINT(google-build-using-namespace)

namespace cpu {

__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_float(src[i]);
}

__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = float_to_f16(src[i]);
}

// out[0:n] = the fp32 values at p (one row, on the calling thread).
void widen_row(float* out, TypedPtr p, int64_t n) {
  if (p.dtype == DType::F32) {
    std::memcpy(out, p.data, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  const uint16_t* src = static_cast<const uint16_t*>(p.data);
  if (p.dtype == DType::BF16)
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_float(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_float(src[i]);
}

// The fp32 values of the n elements at p: p itself when they are fp32, else
// widened into `scratch` (exact: every bf16 and f16 value is an fp32 value).
const float* widen(ThreadPool& pool, TypedPtr p, int64_t n, std::vector<float>& scratch, bool f16c) {
  if (p.dtype == DType::F32 || n <= 0) return static_cast<const float*>(p.data);
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  scratch.resize(static_cast<size_t>(n));
  const uint16_t* src = static_cast<const uint16_t*>(p.data);
  float* dst = scratch.data();
  const bool bf16 = p.dtype == DType::BF16;
  pool.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (bf16) {
      for (int64_t i = i0; i < i1; ++i) {  // bf16 is the top half of an fp32
        const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(dst + i, &u, sizeof u);
      }
    } else if (f16c) {
      f16_to_f32_f16c(dst + i0, src + i0, i1 - i0);
    } else {
      for (int64_t i = i0; i < i1; ++i) dst[i] = f16_to_float(src[i]);
    }
  });
  return dst;
}

}  // namespace cpu

namespace {
template <class Src, class Dst, class Conv>
void cast_loop(ThreadPool& pool, Dst* dst, const Src* src, int64_t n, Conv conv) {
  pool.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] = conv(src[i]);
  });
}
}  // namespace

bool CpuBackend::supports_compute_dtype(DType dtype) const {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16;
}

void CpuBackend::cast(const Tensor& dst, const Tensor& src) {
  OpTimer timer(profile_.get(), kOpCast);
  WEFT_ASSERT(dst.numel() == src.numel(),
              "cast: " + shape_str(src.shape()) + " into " + shape_str(dst.shape()));
  const int64_t n = src.numel();
  const DType from = src.dtype(), to = dst.dtype();
  if (from == to) {
    if (n > 0 && dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), src.bytes());
  } else if (from == DType::F32 && to == DType::BF16) {
    cast_loop(pool_, dst.data<uint16_t>(), src.data<float>(), n, float_to_bf16);
  } else if (from == DType::BF16 && to == DType::F32) {
    cast_loop(pool_, dst.data<float>(), src.data<uint16_t>(), n, bf16_to_float);
  } else if (from == DType::F32 && to == DType::F16) {
    if (f16c_) {
      uint16_t* d = dst.data<uint16_t>();
      const float* x = src.data<float>();
      pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) { f32_to_f16_f16c(d + i0, x + i0, i1 - i0); });
    } else {
      cast_loop(pool_, dst.data<uint16_t>(), src.data<float>(), n, float_to_f16);
    }
  } else if (from == DType::F16 && to == DType::F32) {
    if (f16c_) {
      float* d = dst.data<float>();
      const uint16_t* x = src.data<uint16_t>();
      pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) { f16_to_f32_f16c(d + i0, x + i0, i1 - i0); });
    } else {
      cast_loop(pool_, dst.data<float>(), src.data<uint16_t>(), n, f16_to_float);
    }
  } else {
    throw Error(std::string("cpu backend: cast from ") + dtype_name(from) + " to " + dtype_name(to) +
                " is not supported (f32<->bf16, f32<->f16, same dtype)");
  }
}

}  // namespace weft
