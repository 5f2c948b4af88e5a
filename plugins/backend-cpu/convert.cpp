// The CPU backend's dtype conversions: widening bf16 / f16 kernel inputs to
// fp32, `cast` between f32 and bf16 / f16, adding fp32 values into a 16-bit
// buffer (accumulate_rounded) and zeroing a buffer of any dtype, 8 or 16 elements at a time with
// AVX2 (bf16) and F16C (f16) where the CPU has them, the same bits as the
// scalar conversions of weft/half.hpp.
#include "cpu_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
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

WEFT_AVX2 void bf16_to_f32_avx2(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {  // bf16 is the top half of an fp32
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_slli_epi32(w, 16));
  }
  for (; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

// float_to_bf16 lane by lane: NaN -> quiet NaN (top bits | 0x40), else
// (u + 0x7fff + bit 16 of u) >> 16 (round to nearest even, in uint32 as there).
WEFT_AVX2 void f32_to_bf16_avx2(uint16_t* dst, const float* src, int64_t n) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1), quiet = _mm256_set1_epi32(0x40);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i r[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8 * h));
      const __m256i top = _mm256_srli_epi32(u, 16);
      const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
      const __m256i rounded =
          _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(top, one))), 16);
      r[h] = _mm256_blendv_epi8(rounded, _mm256_or_si256(top, quiet), nan);
    }
    // packus works per 128-bit lane: [r0 0-3 | r1 0-3 | r0 4-7 | r1 4-7] -> in order
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), packed);
  }
  for (; i < n; ++i) dst[i] = float_to_bf16(src[i]);
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

}  // namespace cpu

namespace {
// dst[0:n] = the 16-bit src widened exactly (bf16 or f16), on the calling
// thread, with AVX2 / F16C where the CPU has them.
void widen_chunk(float* dst, const uint16_t* src, int64_t n, bool bf16, bool avx2, bool f16c) {
  if (bf16 && avx2) {
    bf16_to_f32_avx2(dst, src, n);
  } else if (bf16) {
    for (int64_t i = 0; i < n; ++i) {  // bf16 is the top half of an fp32
      const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
      std::memcpy(dst + i, &u, sizeof u);
    }
  } else if (f16c) {
    f16_to_f32_f16c(dst, src, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_float(src[i]);
  }
}

// dst[0:n] = src rounded to nearest even to bf16 or f16, as widen_chunk.
void narrow_chunk(uint16_t* dst, const float* src, int64_t n, bool bf16, bool avx2, bool f16c) {
  if (bf16 && avx2) return f32_to_bf16_avx2(dst, src, n);
  if (!bf16 && f16c) return f32_to_f16_f16c(dst, src, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16 ? float_to_bf16(src[i]) : float_to_f16(src[i]);
}
}  // namespace

const float* CpuBackend::widen(TypedPtr p, int64_t n, Tensor& scratch) {
  if (p.dtype == DType::F32 || n <= 0) return static_cast<const float*>(p.data);
  WEFT_ASSERT(p.dtype == DType::BF16 || p.dtype == DType::F16,
              std::string("cpu backend: a kernel input of dtype ") + dtype_name(p.dtype) + " (f32, bf16, f16 only)");
  scratch = alloc_uninitialized({n}, DType::F32, MemCategory::Workspace);  // [n]
  const uint16_t* src = static_cast<const uint16_t*>(p.data);
  float* dst = scratch.data<float>();
  const bool bf16 = p.dtype == DType::BF16, avx2 = avx2_, f16c = f16c_;
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    widen_chunk(dst + i0, src + i0, i1 - i0, bf16, avx2, f16c);
  });
  return dst;
}

namespace {
// dst[0:n] = src converted on the pool: `vector_fn` over each chunk where the
// CPU has its instructions (`vector`), else `scalar` element by element.
template <class Src, class Dst, class VectorFn, class Scalar>
void convert(ThreadPool& pool, Dst* dst, const Src* src, int64_t n, bool vector, VectorFn vector_fn,
             Scalar scalar) {
  pool.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    if (vector) return vector_fn(dst + i0, src + i0, i1 - i0);
    for (int64_t i = i0; i < i1; ++i) dst[i] = scalar(src[i]);
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
    convert(pool_, dst.data<uint16_t>(), src.data<float>(), n, avx2_, f32_to_bf16_avx2, float_to_bf16);
  } else if (from == DType::BF16 && to == DType::F32) {
    convert(pool_, dst.data<float>(), src.data<uint16_t>(), n, avx2_, bf16_to_f32_avx2, bf16_to_float);
  } else if (from == DType::F32 && to == DType::F16) {
    convert(pool_, dst.data<uint16_t>(), src.data<float>(), n, f16c_, f32_to_f16_f16c, float_to_f16);
  } else if (from == DType::F16 && to == DType::F32) {
    convert(pool_, dst.data<float>(), src.data<uint16_t>(), n, f16c_, f16_to_f32_f16c, f16_to_float);
  } else {
    throw Error(std::string("cpu backend: cast from ") + dtype_name(from) + " to " + dtype_name(to) +
                " is not supported (f32<->bf16, f32<->f16, same dtype)");
  }
}

void CpuBackend::accumulate_rounded(const Tensor& acc, const float* x) {
  const int64_t n = acc.numel();
  const DType dt = acc.dtype();
  if (dt == DType::F32) return accumulate(acc.data<float>(), x, n);
  OpTimer timer(profile_.get(), kOpAccRounded);
  WEFT_ASSERT(dt == DType::BF16 || dt == DType::F16,
              std::string("cpu backend: accumulate_rounded into dtype ") + dtype_name(dt) + " (f32, bf16, f16 only)");
  uint16_t* a = acc.data<uint16_t>();
  const bool bf16 = dt == DType::BF16, avx2 = avx2_, f16c = f16c_;
  constexpr int64_t kChunk = 256;  // elements widened, summed and narrowed at a time
  pool_.parallel_for(n, kElementGrain, [&](int64_t i0, int64_t i1) {
    float wide[kChunk];
    for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
      const int64_t len = std::min(kChunk, i1 - c0);
      widen_chunk(wide, a + c0, len, bf16, avx2, f16c);
      for (int64_t i = 0; i < len; ++i) wide[i] += x[c0 + i];  // in fp32
      narrow_chunk(a + c0, wide, len, bf16, avx2, f16c);
    }
  });
}

void CpuBackend::zero(const Tensor& x) {
  OpTimer timer(profile_.get(), kOpZero);
  char* bytes = static_cast<char*>(x.raw());
  pool_.parallel_for(static_cast<int64_t>(x.bytes()), kCopyGrain, [&](int64_t i0, int64_t i1) {
    std::memset(bytes + i0, 0, static_cast<size_t>(i1 - i0));
  });
}

}  // namespace weft
