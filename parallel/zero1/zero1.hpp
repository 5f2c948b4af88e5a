// zero1 (ZeRO stage 1 / distributed optimizer): gradients are reduce-scattered
// over the dp group in buckets; each rank keeps optimizer state only for its
// slice of every bucket, updates that slice, and all-gathers the parameters.
// Bucket b of `len` elements is padded to a multiple of dp; rank r owns
// elements [r*shard, (r+1)*shard) of it (shard = padded / dp).
// Mixed precision (Megatron's distributed optimizer): the fp32 master weights
// are sharded like the state; the updated slice is cast to the compute dtype
// and the all-gather carries that (bf16/f16), straight into FlatParams::data.
// 16-bit gradients are reduce-scattered as they are and widened a chunk at a
// time for the optimizer.
#pragma once

#include <vector>

#include "weft/grad_sync.hpp"

namespace weft {

class Zero1 : public DataParallel {
 public:
  explicit Zero1(double bucket_mb) : bucket_bytes_(static_cast<int64_t>(bucket_mb * 1024 * 1024)) {}
  void setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) override;
  void grad_ready(Param& param) override;
  double finish_reduction() override;
  void step(double lr, double grad_scale, int64_t step) override;
  int64_t optimizer_state_bytes() const override;
  double optimizer_state_share(int dp) const override { return 1.0 / dp; }
  void read_state(const Param& param, int slot, float* out) override;
  void write_state(const Param& param, int slot, const float* in) override;
  void read_master(const Param& param, float* out) override;
  void write_master(const Param& param, const float* in) override;

 private:
  struct Bucket : GradBucket {
    explicit Bucket(const GradBucket& range) : GradBucket(range) {}
    int64_t shard = 0;           // padded length / dp
    int64_t own_begin = 0, own_end = 0;  // this rank's elements, flat indices (may be empty)
    int64_t state_offset = 0;    // where this rank's slice starts in the state buffers
    std::vector<DecayRun> runs;  // of [own_begin, own_end): one optimizer call each
    std::vector<ElementRange> norm;  // of [own_begin, own_end): counted in the gradient norm
    Tensor send;  // [dp*shard] padded gradients, in their dtype (comm buffer)
    Tensor recv;  // [shard] reduced gradient slice, then (fp32) parameter slice for the gather
    Tensor send16, recv16;  // [dp*shard], [shard] in the compute dtype, mixed precision's gather
                            // (send and recv themselves when the gradients are in that dtype)
    std::unique_ptr<Work> work;
  };
  void launch(Bucket& bucket);
  void gather_owned(const Tensor& owned, const Param& param, float* out);
  void scatter_owned(const Tensor& owned, const Param& param, const float* in);

  int64_t bucket_bytes_;
  FlatParams* flat_ = nullptr;
  Optimizer* optimizer_ = nullptr;
  Backend* backend_ = nullptr;
  Communicator* dp_ = nullptr;
  int ranks_ = 1, rank_ = 0;
  std::vector<Tensor> state_;  // [owned elements] per optimizer slot
  Tensor master_;              // [owned elements] f32 master weights (mixed precision only)
  int64_t owned_ = 0;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_param_;
};

}  // namespace weft
