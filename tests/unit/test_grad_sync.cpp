// Gradient bucket planning shared by ddp and zero1, against hand-worked plans.
#include <gtest/gtest.h>

#include "weft/grad_sync.hpp"

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

}  // namespace
