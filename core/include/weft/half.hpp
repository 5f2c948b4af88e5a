// 16-bit floats: conversions between fp32 and bf16 / f16 bit patterns, round
// to nearest even (f16 overflows to inf, NaN stays a quiet NaN). Backends use
// them for the compute copy of the weights, communicators to sum 16-bit buffers in fp32.
#pragma once

#include <cstdint>

namespace weft {

uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t h);
uint16_t float_to_f16(float x);
float f16_to_float(uint16_t h);

}  // namespace weft
