#include "weft/rng.hpp"

#include <cmath>

namespace weft {

uint64_t name_key(std::string_view name) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64-bit offset basis
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

void philox4x32(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = 0xD2511F53ull * c0;
    uint64_t p1 = 0xCD9E8D57ull * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static float to_unit(uint32_t x) {  // (0, 1), never 0 so log() is finite
  return (static_cast<float>(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float uniform01(uint64_t seed, uint64_t stream, uint64_t index) {
  uint32_t r[4];
  philox4x32(seed, stream, index, r);
  return to_unit(r[0]);
}

uint64_t dropout_site_key(uint64_t seed, std::string_view site) {
  // The name's hash mixed with the seed (odd multiplier: distinct seeds give distinct keys for a site).
  return name_key(site) ^ (seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
}

float normal01(uint64_t seed, uint64_t stream, uint64_t index) {
  uint32_t r[4];
  philox4x32(seed, stream, index, r);
  double u1 = (static_cast<double>(r[0]) + 0.5) / 4294967296.0;
  double u2 = (static_cast<double>(r[1]) + 0.5) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

}  // namespace weft
