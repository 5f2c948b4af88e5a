// Precision "fp16": as bf16 with an f16 compute copy, plus dynamic loss
// scaling (loss_scaler.hpp), since f16's range is too narrow for raw gradients.
#pragma once

#include "loss_scaler.hpp"
#include "weft/precision.hpp"

namespace weft {

class Fp16Precision final : public Precision {
 public:
  Fp16Precision(const LossScalerConfig& config, bool accumulate_grads_in_fp32)
      : scaler_(config), fp32_grads_(accumulate_grads_in_fp32) {}
  DType compute_dtype() const override { return DType::F16; }
  DType master_dtype() const override { return DType::F32; }
  bool accumulate_grads_in_fp32() const override { return fp32_grads_; }
  float loss_scale() const override { return static_cast<float>(scaler_.scale()); }
  bool update_scale(bool found_inf) override { return scaler_.update(found_inf); }
  std::map<std::string, double> state() const override { return scaler_.state(); }
  void load_state(const std::map<std::string, double>& state) override { scaler_.load_state(state); }

 private:
  LossScaler scaler_;
  bool fp32_grads_;
};

}  // namespace weft
