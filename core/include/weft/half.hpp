// 16-bit floats: conversions between fp32 and bf16 / f16 bit patterns, round
// to nearest even (f16 overflows to inf, NaN stays a quiet NaN). Backends use
// them for the compute copy of the weights, communicators to sum 16-bit
// buffers in fp32. Inline, so elementwise loops over them vectorise.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace weft {

namespace half_detail {
inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
}  // namespace half_detail

inline uint16_t float_to_bf16(float x) {
  uint32_t u = half_detail::float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_float(uint16_t h) { return half_detail::bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_f16(float x) {
  const uint32_t u = half_detail::float_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or NaN (NaN stays quiet NaN, keeps top payload bits)
    return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u | ((a >> 13) & 0x03ffu) : 0u));
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a >= 0x38800000u) {                                              // normal half (>= 2^-14)
    uint32_t h = (a >> 13) - (112u << 10);                             // rebias exponent 127 -> 15
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: fine
    return static_cast<uint16_t>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds to zero
  // Subnormal half: value / 2^-24, rounded to nearest even.
  const uint32_t e = a >> 23;
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // 0x400 becomes the smallest normal
  return static_cast<uint16_t>(sign | h);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x03ffu;
  if (exp == 0) {
    const float mag = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal, exact
    return sign ? -mag : mag;
  }
  if (exp == 31) return half_detail::bits_float(sign | 0x7f800000u | (mant << 13));
  return half_detail::bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace weft
