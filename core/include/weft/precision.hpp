// Precision policy (family precision: fp32, bf16, fp16), docs/precision.md.
// It says which dtype the model computes with (the weights' compute copy and
// the GEMM inputs), and, for fp16, scales the loss dynamically. Master
// weights and optimizer state stay fp32 in every mode (gradients too, unless
// accumulate_grads_in_fp32 is off): the data-parallel strategy keeps the fp32
// masters and refreshes the compute copy after each optimizer step.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/tensor.hpp"

namespace weft {

class Precision {
 public:
  virtual ~Precision() = default;
  virtual DType compute_dtype() const = 0;  // F32, BF16 or F16: Param::data and GEMM inputs
  virtual DType master_dtype() const = 0;   // F32: the weights the optimizer updates
  // false: the gradient buffer is in the compute dtype: gradients accumulate
  // over microbatches and reduce over dp in 16 bits, each contribution summed
  // in fp32 and rounded once (Megatron's accumulate_allreduce_grads_in_fp32 off).
  virtual bool accumulate_grads_in_fp32() const { return true; }
  virtual float loss_scale() const = 0;     // the loss is multiplied by it before backward; 1 unless fp16
  // Told whether this step's (scaled) gradients hold inf/NaN, after the
  // reduction; adjusts the scale and returns whether to skip the step.
  virtual bool update_scale(bool found_inf) = 0;
  // Scaler state for checkpoints (fp16: scale, growth and hysteresis trackers,
  // steps skipped); empty for modes without one.
  virtual std::map<std::string, double> state() const { return {}; }
  virtual void load_state(const std::map<std::string, double>& /*state*/) {}
};

template <>
struct FamilyTraits<Precision> {
  static constexpr const char* kName = "precision";
  using Factory = std::function<std::unique_ptr<Precision>(const Options&)>;
};

}  // namespace weft
