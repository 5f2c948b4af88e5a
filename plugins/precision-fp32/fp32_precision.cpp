#include "fp32_precision.hpp"

namespace weft {

DType Fp32Precision::compute_dtype() const { return DType::F32; }
DType Fp32Precision::master_dtype() const { return DType::F32; }
float Fp32Precision::loss_scale() const { return 1.0f; }
// No scaling to adjust; a non-finite gradient is left to the trainer's checks.
bool Fp32Precision::update_scale(bool /*found_inf*/) { return false; }

}  // namespace weft
