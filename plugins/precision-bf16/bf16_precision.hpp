// Precision "bf16": the model computes with a bf16 copy of the fp32 master
// weights (GEMM inputs bf16, fp32 accumulation); gradients, master weights and
// optimizer state fp32. bf16 has fp32's exponent range: no loss scaling.
#pragma once

#include "weft/precision.hpp"

namespace weft {

class Bf16Precision final : public Precision {
 public:
  explicit Bf16Precision(bool accumulate_grads_in_fp32) : fp32_grads_(accumulate_grads_in_fp32) {}
  DType compute_dtype() const override { return DType::BF16; }
  DType master_dtype() const override { return DType::F32; }
  bool accumulate_grads_in_fp32() const override { return fp32_grads_; }
  float loss_scale() const override { return 1.0f; }
  bool update_scale(bool /*found_inf*/) override { return false; }  // non-finite: the trainer's run.on_nan

 private:
  bool fp32_grads_;
};

}  // namespace weft
