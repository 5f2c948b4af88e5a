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

// Dropout masks. A site (one dropout of one layer, by logical name such as
// "blocks.3.attn.dropout") has the key dropout_site_key(run seed, name); the
// element `index` of sample `sample` (its place in the run's sample order) is
// kept with probability 1 - p. Nothing depends on the layout, the microbatch
// or the thread, so every layout drops the same logical elements.
uint64_t dropout_site_key(uint64_t seed, std::string_view site);
inline bool dropout_keep(uint64_t site_key, uint64_t sample, uint64_t index, float p) {
  uint32_t r[4];
  philox4x32(site_key, sample, index, r);
  return (static_cast<float>(r[0] >> 8) + 0.5f) * (1.0f / 16777216.0f) >= p;
}

}  // namespace weft
