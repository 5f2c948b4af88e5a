// CpuBackend: the readable, multithreaded reference backend. Everything runs on
// one persistent ThreadPool per backend (one per rank): GEMMs are cut into
// column or row panels (long, thin products along k) that single-threaded
// OpenBLAS calls compute on the pool's threads, so no BLAS thread pool spins
// against ours; the other kernels are
// plain C++ (AVX2 paths chosen at run time where the CPU has them).
// Kernel results do not depend on the thread count: work is split so that each
// output element is produced by one task in a fixed order, and reductions run
// over fixed blocks in double.
//
// Memory: alloc() hands out zero-filled (alloc_uninitialized() unfilled), 64-byte
// aligned blocks and counts them by category; freed blocks of 64 KiB and more are kept in a cache (free lists
// by size) and handed out again, so a steady-state training step maps no new
// memory. Accounting counts live tensors only, never the cache.
//
// WEFT_CPU_PROFILE=1 in the environment makes every backend time its kernels
// and print a per-kernel table (calls, ms, GFLOP/s, cache use) to stderr when
// it is destroyed.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "thread_pool.hpp"
#include "weft/backend.hpp"
#include "weft/half.hpp"

namespace weft {

class CpuBackend final : public Backend {
 public:
  // Query/key tile sizes of the fused attention kernels.
  static constexpr int64_t kAttnTileQ = 32;
  static constexpr int64_t kAttnTileK = 32;

  // vector_kernels = false keeps to the baseline x86-64 loops even where the
  // CPU has AVX2 and FMA (slower; for checking both builds of each kernel).
  explicit CpuBackend(int threads, bool vector_kernels = true);
  ~CpuBackend() override;

  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::Host; }
  int threads() const override { return pool_.size(); }

  Tensor alloc(const Shape& shape, DType dtype, MemCategory category) override;
  Tensor alloc_uninitialized(const Shape& shape, DType dtype, MemCategory category) override;
  MemStats mem_stats() const override;
  void reset_peak() override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override {}

  void gemm(const GemmArgs& args) override;
  void add_bias(float* out, TypedPtr bias, int64_t n, int64_t o) override;
  void bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) override;

  void layernorm_forward(float* out, float* mean, float* rstd, TypedPtr x, TypedPtr w, TypedPtr b,
                         int64_t n, int64_t c, float eps) override;
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, TypedPtr x,
                          TypedPtr w, const float* mean, const float* rstd, int64_t n,
                          int64_t c) override;
  void gelu_forward(float* out, TypedPtr x, int64_t n) override;
  void gelu_backward(float* dx, TypedPtr x, const float* dout, int64_t n) override;

  void attention_forward(float* out, float* lse, TypedPtr qkv, int64_t b, int64_t t, int64_t c,
                         int64_t h, const AttentionMask& mask = {}) override;
  void attention_backward(float* dqkv, const float* dout, TypedPtr qkv, TypedPtr out,
                          const float* lse, int64_t b, int64_t t, int64_t c, int64_t h,
                          const AttentionMask& mask = {}) override;
  void dropout(float* x, int64_t b, int64_t t, int64_t c, const DropoutArgs& args) override;  // dropout.cpp
  void gelu_erf_forward(float* out, TypedPtr x, int64_t n) override;                          // gelu_erf.cpp
  void gelu_erf_backward(float* dx, TypedPtr x, const float* dout, int64_t n) override;

  void embedding_forward(float* out, const int32_t* ids, TypedPtr table, int64_t n, int64_t c,
                         int64_t first, int64_t rows) override;
  void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n, int64_t c,
                          int64_t first, int64_t rows) override;

  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                     int64_t n, int64_t v, int64_t vp, float dloss_scale) override;
  void xent_shard_max(float* row_max, float* target_logit, const float* logits, const int32_t* targets,
                      int64_t n, int64_t vs, int64_t first, int64_t v) override;
  void xent_shard_sum_exp(float* sum_exp, const float* logits, const float* row_max, int64_t n, int64_t vs,
                          int64_t first, int64_t v) override;
  void xent_shard_finish(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                         const float* row_max, const float* sum_exp, const float* target_logit, int64_t n,
                         int64_t vs, int64_t first, int64_t v, float dloss_scale) override;

  void add(float* out, const float* a, const float* b, int64_t n) override;
  void accumulate(float* acc, const float* x, int64_t n) override;
  void scale(float* x, float s, int64_t n) override;
  void fill(float* x, float value, int64_t n) override;
  double sum_squares(TypedPtr x, int64_t n) override;
  void accumulate_rounded(const Tensor& acc, const float* x) override;
  void zero(const Tensor& x) override;
  double sum(const float* x, int64_t n) override;

  void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
             float beta2, float eps, float weight_decay, int64_t step, float grad_scale) override;
  void cast(const Tensor& dst, const Tensor& src) override;
  bool supports_compute_dtype(DType dtype) const override;

  // Llama-family kernels (llama_kernels.cpp).
  void rmsnorm_forward(float* out, float* rstd, TypedPtr x, TypedPtr w, int64_t n, int64_t c,
                       float eps) override;
  void rmsnorm_backward(float* dx, float* dw, const float* dout, TypedPtr x, TypedPtr w, const float* rstd,
                        int64_t n, int64_t c) override;
  void rope_forward(float* out, const float* x, int64_t b, int64_t t, int64_t h, int64_t d, float theta) override;
  void rope_backward(float* dx, const float* dout, int64_t b, int64_t t, int64_t h, int64_t d,
                     float theta) override;
  void swiglu_forward(float* out, TypedPtr gate, TypedPtr up, int64_t n) override;
  void swiglu_backward(float* dgate, float* dup, TypedPtr gate, TypedPtr up, const float* dout,
                       int64_t n) override;
  void gqa_pack(float* qkv, const float* q, const float* k, const float* v, int64_t b, int64_t t, int64_t h,
                int64_t kv, int64_t d) override;
  void gqa_unpack(float* dq, float* dk, float* dv, const float* dqkv, int64_t b, int64_t t, int64_t h, int64_t kv,
                  int64_t d) override;

  ThreadPool& pool() { return pool_; }
  bool vector_kernels() const { return avx2_; }  // the AVX2 + FMA builds run

  // Bytes held in the block cache now, blocks served from it so far, and
  // blocks of a cacheable size (>= 64 KiB) it could not serve (fresh memory).
  int64_t cached_bytes() const;
  int64_t cache_hits() const;
  int64_t cache_misses() const;

  struct Arena;     // accounting + block cache, shared with every Storage handed out
  struct Profile;   // per-kernel timers (WEFT_CPU_PROFILE)

 private:
  // GemmArgs with its inputs widened to fp32: what the sgemm panels work on.
  struct Sgemm {
    bool trans_a = false, trans_b = false;
    int64_t m = 0, n = 0, k = 0;
    float alpha = 1.f, beta = 0.f;
    const float* a = nullptr; int64_t lda = 0;
    const float* b = nullptr; int64_t ldb = 0;
    float* c = nullptr; int64_t ldc = 0;
    int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  };
  Tensor allocate(const Shape& shape, DType dtype, MemCategory category, bool zero);
  // The fp32 values of the n elements at p (convert.cpp): p itself when they
  // are fp32, else widened into `scratch`, a Workspace tensor from the block
  // cache (exact: every bf16 and f16 value is an fp32 value).
  const float* widen(TypedPtr p, int64_t n, Tensor& scratch);
  void gemm_serial(const Sgemm& g);
  void gemm_split_k(const Sgemm& g);

  ThreadPool pool_;
  std::shared_ptr<Arena> arena_;
  std::unique_ptr<Profile> profile_;  // null unless WEFT_CPU_PROFILE is set
  bool avx2_ = false;                 // the CPU runs the AVX2 kernels
  bool f16c_ = false;                 // f16 conversions in hardware (F16C)
  std::mutex scratch_mutex_;
  std::vector<float> gemm_scratch_;   // split-k partial products [(threads-1) * m * n]
};

}  // namespace weft
