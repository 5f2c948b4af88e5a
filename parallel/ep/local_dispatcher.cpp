#include "local_dispatcher.hpp"

#include <algorithm>
#include <numeric>

#include "weft/error.hpp"

namespace weft {

Tensor LocalDispatcher::permute(const Tensor& src, bool inverse) {
  const int64_t n = src.dim(0), c = src.numel() / std::max<int64_t>(1, n);
  WEFT_ASSERT(static_cast<int64_t>(order_.size()) == n, "dispatcher: row count changed between dispatch and combine");
  Tensor out = backend_->alloc(src.shape(), src.dtype(), MemCategory::Activation);
  for (int64_t k = 0; k < n; ++k) {
    int64_t from = inverse ? k : order_[k], to = inverse ? order_[k] : k;
    backend_->copy(out.view(to * c, {c}), src.view(from * c, {c}));
  }
  return out;
}

Tensor LocalDispatcher::dispatch(const Tensor& x, const std::vector<int32_t>& expert_of_row, int num_experts,
                                 std::vector<int64_t>& rows_per_local_expert) {
  const int64_t n = x.dim(0);
  WEFT_ASSERT(static_cast<int64_t>(expert_of_row.size()) == n, "dispatcher: one expert id per row");
  rows_per_local_expert.assign(num_experts, 0);
  for (int32_t e : expert_of_row) {
    WEFT_ASSERT(e >= 0 && e < num_experts, "dispatcher: expert id out of range");
    ++rows_per_local_expert[e];
  }
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0);
  std::stable_sort(order_.begin(), order_.end(),
                   [&](int64_t a, int64_t b) { return expert_of_row[a] < expert_of_row[b]; });
  return permute(x, false);
}

Tensor LocalDispatcher::combine(const Tensor& y) { return permute(y, true); }

}  // namespace weft
