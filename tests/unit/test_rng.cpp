// Counter-based RNG (core/src/rng.cpp): Philox4x32-10 against the published
// Random123 known-answer vectors, FNV-1a name keys, and the distributions.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <set>

#include "weft/rng.hpp"

namespace {

// Random123 convention: counter words c0..c3, key words k0, k1. weft's
// philox4x32(key, counter_hi, counter_lo): c0,c1 = lo/hi 32 bits of counter_lo,
// c2,c3 = of counter_hi; k0,k1 = lo/hi of key.
struct Kat {
  uint32_t c[4];
  uint32_t k[2];
  uint32_t expected[4];
};

void run_kat(const Kat& v) {
  uint64_t counter_lo = (uint64_t{v.c[1]} << 32) | v.c[0];
  uint64_t counter_hi = (uint64_t{v.c[3]} << 32) | v.c[2];
  uint64_t key = (uint64_t{v.k[1]} << 32) | v.k[0];
  uint32_t out[4] = {0, 0, 0, 0};
  weft::philox4x32(key, counter_hi, counter_lo, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], v.expected[i]) << "word " << i << std::hex << " got 0x" << out[i];
}

}  // namespace

TEST(Philox, KnownAnswerZero) {
  run_kat({{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
}

TEST(Philox, KnownAnswerAllOnes) {
  run_kat({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
           {0xffffffffu, 0xffffffffu},
           {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
}

TEST(Philox, KnownAnswerPi) {
  run_kat({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
           {0xa4093822u, 0x299f31d0u},
           {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST(Philox, PureAndSensitiveToEveryInput) {
  uint32_t a[4], b[4];
  weft::philox4x32(42, 7, 9, a);
  weft::philox4x32(42, 7, 9, b);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(a[i], b[i]);
  std::set<std::array<uint32_t, 4>> seen;
  for (uint64_t key : {0ull, 1ull, 1ull << 32})
    for (uint64_t hi : {0ull, 1ull, 1ull << 32})
      for (uint64_t lo : {0ull, 1ull, 1ull << 32}) {
        uint32_t r[4];
        weft::philox4x32(key, hi, lo, r);
        seen.insert({r[0], r[1], r[2], r[3]});
      }
  EXPECT_EQ(seen.size(), 27u);
}

TEST(NameKey, Fnv1a64KnownValues) {
  EXPECT_EQ(weft::name_key(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(weft::name_key("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(weft::name_key("foobar"), 0x85944171f73967e8ull);
  EXPECT_NE(weft::name_key("blocks.0.attn.qkv.weight"), weft::name_key("blocks.1.attn.qkv.weight"));
}

TEST(Distributions, Uniform01InOpenIntervalWithMeanHalf) {
  const int n = 100000;
  double sum = 0;
  float lo = 1, hi = 0;
  for (int i = 0; i < n; ++i) {
    float u = weft::uniform01(1234, 5, static_cast<uint64_t>(i));
    ASSERT_GT(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);  // std error 0.0009
  EXPECT_LT(lo, 0.001f);
  EXPECT_GT(hi, 0.999f);
  EXPECT_EQ(weft::uniform01(1, 2, 3), weft::uniform01(1, 2, 3));
  EXPECT_NE(weft::uniform01(1, 2, 3), weft::uniform01(1, 2, 4));
  EXPECT_NE(weft::uniform01(1, 2, 3), weft::uniform01(1, 3, 3));
  EXPECT_NE(weft::uniform01(1, 2, 3), weft::uniform01(2, 2, 3));
}

TEST(Distributions, Normal01MeanAndStd) {
  const int n = 100000;
  double sum = 0, sum2 = 0;
  int beyond3 = 0;
  for (int i = 0; i < n; ++i) {
    float x = weft::normal01(1234, weft::name_key("blocks.0.mlp.fc.weight"), static_cast<uint64_t>(i));
    ASSERT_TRUE(std::isfinite(x)) << i;
    sum += x;
    sum2 += double(x) * x;
    if (std::fabs(x) > 3) ++beyond3;
  }
  double mean = sum / n;
  double std = std::sqrt(sum2 / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.015);  // std error 0.0032
  EXPECT_NEAR(std, 1.0, 0.01);    // std error 0.0022
  // P(|x| > 3) = 0.0027: about 270 of 1e5.
  EXPECT_GT(beyond3, 180);
  EXPECT_LT(beyond3, 370);
  EXPECT_EQ(weft::normal01(7, 8, 9), weft::normal01(7, 8, 9));
}
