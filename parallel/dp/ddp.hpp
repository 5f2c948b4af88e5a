// ddp: every dp rank keeps full optimizer state and reduces (sums) gradients
// over the dp group in buckets of about `bucket_mb`, each launched as soon as
// its last parameter's gradient is final (during the last microbatch's backward).
// Mixed precision: it keeps the fp32 master weights of every element and
// casts them into the compute copy after each update; 16-bit gradients are
// reduced as they are and widened a chunk at a time for the optimizer.
#pragma once

#include <vector>

#include "weft/grad_sync.hpp"

namespace weft {

class Ddp : public DataParallel {
 public:
  explicit Ddp(double bucket_mb) : bucket_bytes_(static_cast<int64_t>(bucket_mb * 1024 * 1024)) {}
  void setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) override;
  void grad_ready(Param& param) override;
  double finish_reduction() override;
  void step(double lr, double grad_scale, int64_t step) override;
  int64_t optimizer_state_bytes() const override;
  double optimizer_state_share(int) const override { return 1.0; }
  void read_state(const Param& param, int slot, float* out) override;
  void write_state(const Param& param, int slot, const float* in) override;
  void read_master(const Param& param, float* out) override;
  void write_master(const Param& param, const float* in) override;

 private:
  struct Bucket : GradBucket {
    explicit Bucket(const GradBucket& range) : GradBucket(range) {}
    std::unique_ptr<Work> work;  // the all-reduce in flight
  };
  void launch(Bucket& bucket);
  int64_t offset_of(const Param& param) const;

  int64_t bucket_bytes_;
  FlatParams* flat_ = nullptr;
  Optimizer* optimizer_ = nullptr;
  Backend* backend_ = nullptr;
  Communicator* dp_ = nullptr;
  std::vector<Tensor> state_;          // [numel] per optimizer slot
  Tensor master_;                      // [numel] f32 master weights (mixed precision only)
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_param_;   // index into buckets_, per flat param
  std::vector<DecayRun> runs_;         // one optimizer call each
  std::vector<ElementRange> norm_;     // what this rank counts in the gradient norm
};

}  // namespace weft
