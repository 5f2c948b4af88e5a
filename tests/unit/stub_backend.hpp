// A Backend whose every kernel does nothing: the base of the unit tests' test
// doubles, which override only what they observe. Adding a kernel to
// weft::Backend means one empty override here.
#pragma once

#include <string>

#include "weft/backend.hpp"

class StubBackend : public weft::Backend {
 public:
  std::string name() const override { return "stub"; }
  weft::Device device() const override { return weft::Device::Host; }
  int threads() const override { return 1; }
  weft::Tensor alloc(const weft::Shape&, weft::DType, weft::MemCategory) override { return {}; }
  weft::Tensor alloc_uninitialized(const weft::Shape&, weft::DType, weft::MemCategory) override { return {}; }
  weft::MemStats mem_stats() const override { return {}; }
  void reset_peak() override {}
  void copy_to_host(void*, const weft::Tensor&) override {}
  void copy_from_host(const weft::Tensor&, const void*) override {}
  void copy(const weft::Tensor&, const weft::Tensor&) override {}
  void synchronize() override {}
  void gemm(const weft::GemmArgs&) override {}
  void add_bias(float*, weft::TypedPtr, int64_t, int64_t) override {}
  void bias_grad(float*, const float*, int64_t, int64_t) override {}
  void layernorm_forward(float*, float*, float*, weft::TypedPtr, weft::TypedPtr, weft::TypedPtr, int64_t, int64_t,
                         float) override {}
  void layernorm_backward(float*, float*, float*, const float*, weft::TypedPtr, weft::TypedPtr, const float*,
                          const float*, int64_t, int64_t) override {}
  void gelu_forward(float*, weft::TypedPtr, int64_t) override {}
  void gelu_backward(float*, weft::TypedPtr, const float*, int64_t) override {}
  void attention_forward(float*, float*, weft::TypedPtr, int64_t, int64_t, int64_t, int64_t,
                         const weft::AttentionMask&) override {}
  void attention_backward(float*, const float*, weft::TypedPtr, weft::TypedPtr, const float*, int64_t, int64_t,
                          int64_t, int64_t, const weft::AttentionMask&) override {}
  void embedding_forward(float*, const int32_t*, weft::TypedPtr, int64_t, int64_t, int64_t, int64_t) override {}
  void embedding_backward(float*, const int32_t*, const float*, int64_t, int64_t, int64_t, int64_t) override {}
  void cross_entropy(float*, float*, const float*, const int32_t*, int64_t, int64_t, int64_t, float) override {}
  void xent_shard_max(float*, float*, const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t) override {}
  void xent_shard_sum_exp(float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t) override {}
  void xent_shard_finish(float*, float*, const float*, const int32_t*, const float*, const float*, const float*,
                         int64_t, int64_t, int64_t, int64_t, float) override {}
  void add(float*, const float*, const float*, int64_t) override {}
  void accumulate(float*, const float*, int64_t) override {}
  void scale(float*, float, int64_t) override {}
  void fill(float*, float, int64_t) override {}
  double sum_squares(weft::TypedPtr, int64_t) override { return 0; }
  void accumulate_rounded(const weft::Tensor&, const float*) override {}
  void zero(const weft::Tensor&) override {}
  double sum(const float*, int64_t) override { return 0; }
  void adamw(float*, const float*, float*, float*, int64_t, float, float, float, float, float, int64_t,
             float) override {}
  void cast(const weft::Tensor&, const weft::Tensor&) override {}
  bool supports_compute_dtype(weft::DType) const override { return true; }
  void rmsnorm_forward(float*, float*, weft::TypedPtr, weft::TypedPtr, int64_t, int64_t, float) override {}
  void rmsnorm_backward(float*, float*, const float*, weft::TypedPtr, weft::TypedPtr, const float*, int64_t,
                        int64_t) override {}
  void rope_forward(float*, const float*, int64_t, int64_t, int64_t, int64_t, float) override {}
  void rope_backward(float*, const float*, int64_t, int64_t, int64_t, int64_t, float) override {}
  void swiglu_forward(float*, weft::TypedPtr, weft::TypedPtr, int64_t) override {}
  void swiglu_backward(float*, float*, weft::TypedPtr, weft::TypedPtr, const float*, int64_t) override {}
  void gqa_pack(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t,
                int64_t) override {}
  void gqa_unpack(float*, float*, float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t) override {}
};
