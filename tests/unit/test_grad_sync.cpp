// Gradient bucket planning and optimizer-call runs shared by ddp and zero1,
// against hand-worked plans, and how optimizers are handed 16-bit gradients.
#include <gtest/gtest.h>

#include <vector>

#include "cpu_backend.hpp"
#include "weft/grad_sync.hpp"
#include "weft/half.hpp"

namespace {

struct Flat {
  std::vector<weft::Param> params;
  weft::FlatParams flat;
  explicit Flat(const std::vector<int64_t>& sizes) : params(sizes.size()) {
    int64_t off = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      params[i].data = weft::Tensor(nullptr, 0, {sizes[i]}, weft::DType::F32);
      flat.params.push_back(&params[i]);
      flat.offsets.push_back(off);
      off += sizes[i];
    }
    flat.numel = off;
  }
};

TEST(GradBuckets, FilledInBackwardOrderUpToTheBucketSize) {
  Flat f({10, 20, 5, 30});  // offsets 0, 10, 30, 35
  std::vector<int> of;
  // 120 bytes = 30 floats: a bucket closes once it holds at least 30 elements.
  auto b = weft::plan_grad_buckets(f.flat, 120, of);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].begin, 35);  // p3 alone (30 elements) fills the first bucket
  EXPECT_EQ(b[0].end, 65);
  EXPECT_EQ(b[0].params, 1);
  EXPECT_EQ(b[1].begin, 0);  // p2, p1, p0
  EXPECT_EQ(b[1].end, 35);
  EXPECT_EQ(b[1].params, 3);
  EXPECT_EQ(of, (std::vector<int>{1, 1, 1, 0}));
  EXPECT_EQ(b[1].size(), 35);
  // Readiness: the bucket completes with its third final gradient, not before.
  EXPECT_FALSE(b[1].mark_ready());
  EXPECT_FALSE(b[1].mark_ready());
  EXPECT_FALSE(b[1].complete());
  EXPECT_TRUE(b[1].mark_ready());
  EXPECT_TRUE(b[1].complete());
  EXPECT_FALSE(b[0].complete());
  // One huge bucket holds everything.
  auto one = weft::plan_grad_buckets(f.flat, 1 << 20, of);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].begin, 0);
  EXPECT_EQ(one[0].end, 65);
  EXPECT_EQ(one[0].params, 4);
}

TEST(GradBuckets, ParamIndex) {
  Flat f({3, 4});
  EXPECT_EQ(weft::param_index(f.flat, f.params[1]), 1u);
  weft::Param stranger;  // not in the flat buffer
  EXPECT_THROW(weft::param_index(f.flat, stranger), weft::InternalError);
}

TEST(DecayRuns, MergeNeighboursWithTheSameFlagAndClip) {
  Flat f({10, 20, 5, 30, 4});  // offsets 0, 10, 30, 35, 65; end 69
  const bool decay[5] = {true, true, false, false, true};
  for (int i = 0; i < 5; ++i) f.params[i].weight_decay = decay[i];
  auto all = weft::decay_runs(f.flat, 0, f.flat.numel);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].begin, 0);
  EXPECT_EQ(all[0].end, 30);
  EXPECT_TRUE(all[0].decay);
  EXPECT_EQ(all[1].begin, 30);
  EXPECT_EQ(all[1].end, 65);
  EXPECT_FALSE(all[1].decay);
  EXPECT_EQ(all[2].begin, 65);
  EXPECT_EQ(all[2].end, 69);
  EXPECT_TRUE(all[2].decay);
  // A zero1 shard [12, 40): the tail of p1, p2, the head of p3.
  auto shard = weft::decay_runs(f.flat, 12, 40);
  ASSERT_EQ(shard.size(), 2u);
  EXPECT_EQ(shard[0].begin, 12);
  EXPECT_EQ(shard[0].end, 30);
  EXPECT_TRUE(shard[0].decay);
  EXPECT_EQ(shard[1].begin, 30);
  EXPECT_EQ(shard[1].end, 40);
  EXPECT_FALSE(shard[1].decay);
  EXPECT_TRUE(weft::decay_runs(f.flat, 20, 20).empty());
}

// with_fp32_grads: fp32 gradients in one piece (the buffer itself); 16-bit
// ones (a view at an odd offset) widened exactly, in chunks of 2^20 that
// cover every element once and in order.
TEST(Fp32Grads, SixteenBitGradientsAreWidenedChunkByChunk) {
  weft::CpuBackend be(2);
  const int64_t n = (int64_t{1} << 21) + 12345;
  std::vector<uint16_t> host(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) host[i] = weft::float_to_bf16(static_cast<float>(i % 256 - 128));  // exact in bf16
  weft::Tensor all = be.alloc({n}, weft::DType::BF16, weft::MemCategory::Grad);
  be.copy_from_host(all, host.data());
  const weft::Tensor grads = all.view(7, {n - 7});
  std::vector<int64_t> offsets, lengths;
  int64_t wrong = 0;
  weft::with_fp32_grads(be, grads, [&](int64_t offset, const float* g, int64_t len) {
    offsets.push_back(offset);
    lengths.push_back(len);
    for (int64_t i = 0; i < len; ++i) wrong += g[i] != static_cast<float>((7 + offset + i) % 256 - 128);
  });
  const int64_t chunk = int64_t{1} << 20;
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, chunk, 2 * chunk}));
  EXPECT_EQ(lengths, (std::vector<int64_t>{chunk, chunk, n - 7 - 2 * chunk}));
  EXPECT_EQ(wrong, 0);

  weft::Tensor f32 = be.alloc({n}, weft::DType::F32, weft::MemCategory::Grad);
  int calls = 0;
  weft::with_fp32_grads(be, f32.view(3, {n - 3}), [&](int64_t offset, const float* g, int64_t len) {
    ++calls;
    EXPECT_EQ(offset, 0);
    EXPECT_EQ(g, f32.data<float>() + 3);
    EXPECT_EQ(len, n - 3);
  });
  EXPECT_EQ(calls, 1);
}

// Buckets close by bytes: 16-bit gradients fit twice the elements.
TEST(GradBuckets, SixteenBitGradientsFillBucketsByTheirBytes) {
  Flat f({10, 20, 5, 30});
  weft::CpuBackend be(1);
  f.flat.grad = be.alloc({f.flat.numel}, weft::DType::BF16, weft::MemCategory::Grad);
  std::vector<int> of;
  auto b = weft::plan_grad_buckets(f.flat, 60, of);  // 60 bytes = 30 bf16 elements
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].begin, 35);
  EXPECT_EQ(b[1].begin, 0);
  f.flat.grad = be.alloc({f.flat.numel}, weft::DType::F32, weft::MemCategory::Grad);
  EXPECT_EQ(weft::plan_grad_buckets(f.flat, 60, of).size(), 3u);  // 15 floats: p3 | p2 p1 | p0
}

}  // namespace
