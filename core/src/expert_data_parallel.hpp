// Data parallelism of a model whose experts are split over ep ranks
// (docs/distributed.md): dense params reduce over the dp group, expert params
// over the expert-data-parallel group (the dp / ep ranks holding the same
// experts). Each part has its own instance of the recipe's strategy (ddp,
// zero1, ...) over its own range of the flat buffers: dense params first,
// experts last (rank_params orders them so).
#pragma once

#include <memory>

#include "weft/comm.hpp"
#include "weft/grad_sync.hpp"

namespace weft {

class ExpertDataParallel : public DataParallel {
 public:
  // `edp`: this rank's expert-data-parallel group; `ep`: its expert-parallel
  // group (the gradient norm of the experts sums over it).
  ExpertDataParallel(std::unique_ptr<DataParallel> dense, std::unique_ptr<DataParallel> experts, Communicator* edp,
                     Communicator* ep);

  void setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) override;
  void grad_ready(Param& param) override;
  double finish_reduction() override;
  void step(double lr, double grad_scale, int64_t step) override;
  int64_t optimizer_state_bytes() const override;
  double optimizer_state_share(int dp) const override { return dense_->optimizer_state_share(dp); }
  void read_state(const Param& param, int slot, float* out) override;
  void write_state(const Param& param, int slot, const float* in) override;
  void read_master(const Param& param, float* out) override;
  void write_master(const Param& param, const float* in) override;

 private:
  DataParallel& part(const Param& param) { return param.expert ? *experts_ : *dense_; }
  std::unique_ptr<DataParallel> dense_, experts_;
  Communicator* edp_;
  Communicator* ep_;
  Backend* backend_ = nullptr;
  FlatParams dense_flat_, expert_flat_;  // views of the two ranges of the whole flat buffers
};

}  // namespace weft
