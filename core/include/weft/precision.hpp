// Precision policy (family precision: fp32, bf16, fp16): the dtypes of
// compute and of the kept weights, and loss scaling.
#pragma once

#include <functional>
#include <memory>

#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/tensor.hpp"

namespace weft {

class Precision {
 public:
  virtual ~Precision() = default;
  virtual DType compute_dtype() const = 0;  // activations and GEMM inputs
  virtual DType master_dtype() const = 0;   // weights the optimizer updates
  virtual float loss_scale() const = 0;     // 1 unless fp16
  // fp16 dynamic scaling: told whether grads overflowed; returns whether to skip the step.
  virtual bool update_scale(bool found_inf) = 0;
};

template <>
struct FamilyTraits<Precision> {
  static constexpr const char* kName = "precision";
  using Factory = std::function<std::unique_ptr<Precision>(const Options&)>;
};

}  // namespace weft
