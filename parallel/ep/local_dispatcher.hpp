// alltoall dispatcher, expert = 1: every expert lives on this rank, so
// dispatch is a stable sort of the token rows by expert and combine puts
// them back in the original order.
#pragma once

#include <vector>

#include "weft/backend.hpp"
#include "weft/expert.hpp"

namespace weft {

class LocalDispatcher : public Dispatcher {
 public:
  explicit LocalDispatcher(Backend* backend) : backend_(backend) {}
  // x[N,C] -> rows grouped by expert [N,C]; rows_per_local_expert[e] = rows routed to e.
  Tensor dispatch(const Tensor& x, const std::vector<int32_t>& expert_of_row, int num_experts,
                  std::vector<int64_t>& rows_per_local_expert) override;
  // y[N,C] grouped by expert -> original row order [N,C].
  Tensor combine(const Tensor& y) override;
  int ep_size() const override { return 1; }

 private:
  Tensor permute(const Tensor& src, bool inverse);
  Backend* backend_;
  std::vector<int64_t> order_;  // order_[k] = original row of grouped row k
};

}  // namespace weft
