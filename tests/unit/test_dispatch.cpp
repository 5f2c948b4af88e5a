// The expert = 1 dispatcher against a naive regrouping: rows come out grouped
// by expert in original order within each group, and combine inverts it.
#include <gtest/gtest.h>

#include "cpu_backend.hpp"
#include "local_dispatcher.hpp"

TEST(LocalDispatcher, GroupsRowsByExpertAndCombineInverts) {
  weft::CpuBackend backend(1);
  weft::LocalDispatcher dispatcher(&backend);
  const int64_t n = 7, c = 3;
  const std::vector<int32_t> expert = {2, 0, 2, 1, 0, 2, 0};
  weft::Tensor x = backend.alloc({n, c}, weft::DType::F32, weft::MemCategory::Activation);
  for (int64_t i = 0; i < n * c; ++i) x.data<float>()[i] = static_cast<float>(i);
  std::vector<int64_t> counts;
  weft::Tensor grouped = dispatcher.dispatch(x, expert, 3, counts);
  EXPECT_EQ(counts, (std::vector<int64_t>{3, 1, 3}));
  std::vector<int64_t> expected_rows;  // naive: for each expert, its rows in order
  for (int e = 0; e < 3; ++e)
    for (int64_t i = 0; i < n; ++i)
      if (expert[i] == e) expected_rows.push_back(i);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < c; ++j)
      EXPECT_EQ(grouped.data<float>()[k * c + j], x.data<float>()[expected_rows[k] * c + j]) << k << "," << j;
  weft::Tensor back = dispatcher.combine(grouped);
  for (int64_t i = 0; i < n * c; ++i) EXPECT_EQ(back.data<float>()[i], x.data<float>()[i]);
  EXPECT_EQ(dispatcher.ep_size(), 1);
}
