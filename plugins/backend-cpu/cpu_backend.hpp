// CpuBackend: the readable, multithreaded reference backend. GEMM goes to
// OpenBLAS; every other kernel is plain C++ split over a persistent ThreadPool.
// Kernel results do not depend on the thread count: work is split so that each
// output element is produced by one task in a fixed order, and reductions run
// over fixed blocks in double.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "thread_pool.hpp"
#include "weft/backend.hpp"

namespace weft {

// Float <-> 16-bit conversions, round-to-nearest-even (exposed for tests).
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t h);
uint16_t float_to_f16(float x);
float f16_to_float(uint16_t h);

class CpuBackend final : public Backend {
 public:
  // Query/key tile sizes of the fused attention kernels.
  static constexpr int64_t kAttnTileQ = 32;
  static constexpr int64_t kAttnTileK = 32;

  explicit CpuBackend(int threads);
  ~CpuBackend() override;

  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::Host; }
  int threads() const override { return pool_.size(); }

  Tensor alloc(const Shape& shape, DType dtype, MemCategory category) override;
  MemStats mem_stats() const override;
  void reset_peak() override;
  void copy_to_host(void* dst, const Tensor& src) override;
  void copy_from_host(const Tensor& dst, const void* src) override;
  void copy(const Tensor& dst, const Tensor& src) override;
  void synchronize() override {}

  void gemm(const GemmArgs& args) override;
  void add_bias(float* out, const float* bias, int64_t n, int64_t o) override;
  void bias_grad(float* dbias, const float* dout, int64_t n, int64_t o) override;

  void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                         const float* b, int64_t n, int64_t c, float eps) override;
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                          const float* w, const float* mean, const float* rstd, int64_t n,
                          int64_t c) override;
  void gelu_forward(float* out, const float* x, int64_t n) override;
  void gelu_backward(float* dx, const float* x, const float* dout, int64_t n) override;

  void attention_forward(float* out, float* lse, const float* qkv, int64_t b, int64_t t, int64_t c,
                         int64_t h) override;
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* lse, int64_t b, int64_t t, int64_t c, int64_t h) override;

  void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t n,
                         int64_t c) override;
  void embedding_backward(float* dtable, const int32_t* ids, const float* dout, int64_t n,
                          int64_t c) override;

  void cross_entropy(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                     int64_t n, int64_t v, int64_t vp, float dloss_scale) override;

  void add(float* out, const float* a, const float* b, int64_t n) override;
  void accumulate(float* acc, const float* x, int64_t n) override;
  void scale(float* x, float s, int64_t n) override;
  double sum_squares(const float* x, int64_t n) override;
  double sum(const float* x, int64_t n) override;

  void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
             float beta2, float eps, float weight_decay, int64_t step) override;
  void cast(const Tensor& dst, const Tensor& src) override;

  ThreadPool& pool() { return pool_; }

 private:
  // Byte counts by category; shared with every Storage this backend hands out,
  // so a tensor may outlive the backend.
  struct Accounting {
    mutable std::mutex mutex;
    MemStats stats;
    void add(MemCategory category, int64_t bytes);
  };

  ThreadPool pool_;
  std::shared_ptr<Accounting> accounting_;
};

}  // namespace weft
