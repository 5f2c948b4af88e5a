// The two token dispatchers of the expert_parallel family (core's expert.hpp
// gives the row layout). Both give bit-identical rows:
//   alltoall   each row travels once to its expert's rank and once back
//              (all_to_all_v over the ep group, after the row counts).
//   allgather  every rank gathers all ranks' rows (padded to the longest),
//              takes those of its experts, and the outputs come back by a
//              reduce-scatter of zero-filled buffers (x + 0 = x: exact).
// With ep = 1 both pass the rows through untouched.
#pragma once

#include <memory>
#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/expert.hpp"

namespace weft {

class RowDispatcher : public Dispatcher {
 public:
  RowDispatcher(Backend* backend, Communicator* ep) : backend_(backend), ep_(ep) {}
  DispatchLayout plan(const std::vector<int64_t>& rows_per_expert) override;
  int ep_size() const override { return ep_ ? ep_->size() : 1; }
  int ep_rank() const override { return ep_ ? ep_->rank() : 0; }

 protected:
  // Rows `rows` of `src` starting at row `from` -> `dst` at row `to` (width c).
  void copy_rows(const Tensor& dst, int64_t to, const Tensor& src, int64_t from, int64_t rows, int64_t c);
  Backend* backend_;
  Communicator* ep_;
};

class AllToAllDispatcher : public RowDispatcher {
 public:
  using RowDispatcher::RowDispatcher;
  Tensor to_experts(const DispatchLayout& layout, const Tensor& rows) override;
  Tensor to_tokens(const DispatchLayout& layout, const Tensor& rows) override;

 private:
  // Expert side, source-major [s][j] <-> expert-major [j][s].
  Tensor regroup(const DispatchLayout& layout, const Tensor& rows, bool to_expert_major);
};

class AllGatherDispatcher : public RowDispatcher {
 public:
  using RowDispatcher::RowDispatcher;
  Tensor to_experts(const DispatchLayout& layout, const Tensor& rows) override;
  Tensor to_tokens(const DispatchLayout& layout, const Tensor& rows) override;
};

}  // namespace weft
