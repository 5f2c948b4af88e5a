// Internals shared by the CPU backend's kernel files (not part of the plugin
// interface): chunk sizes, the per-kernel profile timer, the dispatch macros of
// kernels compiled for AVX2 and the baseline ISA, and the widening of 16-bit
// inputs to fp32 (convert.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <vector>

#include "cpu_backend.hpp"
#include "simd_avx2.hpp"

namespace weft::cpu {

inline constexpr int64_t kElementGrain = 1 << 15;  // elementwise kernels: elements per chunk
inline constexpr int64_t kColumnGrain = 16;        // column-partitioned reductions: columns per chunk
inline constexpr int64_t kSumBlock = 1 << 12;      // sum/sum_squares: elements per fixed block
inline constexpr int64_t kCopyGrain = 1 << 20;     // copy, zero-fill: bytes per chunk

// Rows per chunk so that a chunk holds roughly kElementGrain elements.
inline int64_t row_grain(int64_t row_len) {
  return std::max<int64_t>(1, kElementGrain / std::max<int64_t>(1, row_len));
}

// ---- dtype conversions (convert.cpp)

// F16C: the CPU's f16 <-> f32 conversions, 8 at a time (round to nearest
// even, the same bits as float_to_f16 / f16_to_float).
void f16_to_f32_f16c(float* dst, const uint16_t* src, int64_t n);
void f32_to_f16_f16c(uint16_t* dst, const float* src, int64_t n);
// AVX2: bf16 <-> f32, the same bits as bf16_to_float / float_to_bf16.
WEFT_AVX2 void bf16_to_f32_avx2(float* dst, const uint16_t* src, int64_t n);
WEFT_AVX2 void f32_to_bf16_avx2(uint16_t* dst, const float* src, int64_t n);
// out[0:n] = the fp32 values at p (one row, on the calling thread).
void widen_row(float* out, TypedPtr p, int64_t n);

// ---- Profile: per-kernel calls, wall time and flops (WEFT_CPU_PROFILE=1)

enum Op : int {
  kOpGemmNN, kOpGemmNT, kOpGemmTN, kOpGemmTT, kOpAddBias, kOpBiasGrad, kOpLnFwd, kOpLnBwd, kOpGeluFwd, kOpGeluBwd, kOpAttnFwd, kOpAttnBwd,
  kOpEmbFwd, kOpEmbBwd, kOpXent, kOpAdd, kOpAccumulate, kOpScale, kOpFill, kOpSum, kOpSumSq, kOpAdamW, kOpCast,
  kOpCopy, kOpAlloc, kOpAccRounded, kOpZero, kOpCount
};
inline constexpr const char* kOpNames[kOpCount] = {
    "gemm A.B", "gemm A.B^T", "gemm A^T.B", "gemm A^T.B^T", "add_bias", "bias_grad", "layernorm_fwd", "layernorm_bwd", "gelu_fwd", "gelu_bwd", "attention_fwd",
    "attention_bwd", "embedding_fwd", "embedding_bwd", "cross_entropy", "add", "accumulate", "scale", "fill", "sum",
    "sum_squares", "adamw", "cast", "copy", "alloc", "accumulate_rounded", "zero"};

}  // namespace weft::cpu

namespace weft {

struct CpuBackend::Profile {
  std::array<std::atomic<int64_t>, cpu::kOpCount> calls{}, ns{}, flops{};
};

}  // namespace weft

namespace weft::cpu {

// Adds one call of `op` (and its wall time) to the profile when profiling is on.
class OpTimer {
 public:
  OpTimer(CpuBackend::Profile* p, Op op, double flops = 0) : p_(p), op_(op), flops_(flops) {
    if (p_) t0_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (!p_) return;
    const auto dt = std::chrono::steady_clock::now() - t0_;
    p_->calls[op_].fetch_add(1, std::memory_order_relaxed);
    p_->ns[op_].fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count(), std::memory_order_relaxed);
    p_->flops[op_].fetch_add(static_cast<int64_t>(flops_), std::memory_order_relaxed);
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  CpuBackend::Profile* p_;
  Op op_;
  double flops_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace weft::cpu

// Inline kernel bodies (WEFT_INLINE) are compiled twice, for AVX2 (WEFT_AVX2, no FMA, so
// no contraction) and for the baseline ISA: both give the same bits.
#define WEFT_INLINE inline __attribute__((always_inline))
#define WEFT_DISPATCH(name, params, args)       \
  WEFT_AVX2 void name##_avx2 params { name args; } \
  void name##_generic params { name args; }
