// Counter-based RNG (Philox-4x32-10). Parameter init is keyed by
// (seed, logical param name, element index), so every parallel layout draws
// exactly the same numbers for the same logical element (docs/design.md).
#pragma once

#include <cstdint>
#include <string_view>

namespace weft {

// 64-bit FNV-1a of a logical name, used as part of the key.
uint64_t name_key(std::string_view name);

// Four 32-bit random words for (key, counter); pure function.
void philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]);

// Uniform in (0, 1) from the stream (seed, stream, index).
float uniform01(uint64_t seed, uint64_t stream, uint64_t index);

// Standard normal (Box-Muller on the pair drawn for `index`).
float normal01(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace weft
