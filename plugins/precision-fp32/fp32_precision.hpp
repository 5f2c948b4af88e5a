// Precision "fp32": everything in fp32, no loss scaling.
#pragma once

#include "weft/precision.hpp"

namespace weft {

class Fp32Precision final : public Precision {
 public:
  DType compute_dtype() const override;
  DType master_dtype() const override;
  float loss_scale() const override;
  bool update_scale(bool found_inf) override;
};

}  // namespace weft
