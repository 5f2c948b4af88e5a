// Dispatcher (family expert_parallel: alltoall, allgather): moves routed
// tokens to the ranks that hold their experts and back.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "weft/layers.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  // x[N,C] with expert ids[N] (top-1 slot) -> tokens for this rank's experts, grouped by expert.
  virtual Tensor dispatch(const Tensor& x, const std::vector<int32_t>& expert_of_row, int num_experts,
                          std::vector<int64_t>& rows_per_local_expert) = 0;
  // Inverse of the last dispatch: expert outputs back to the original row order.
  virtual Tensor combine(const Tensor& y) = 0;
  virtual int ep_size() const = 0;
};

template <>
struct FamilyTraits<Dispatcher> {
  static constexpr const char* kName = "expert_parallel";
  using Factory = std::function<std::unique_ptr<Dispatcher>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
