// DataParallel strategy (family data_parallel: ddp, zero1, ...): reduces the
// gradients over the dp group, owns the optimizer state for what this rank
// updates, and applies the optimizer.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/module.hpp"
#include "weft/optimizer.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

// All params of this rank as views into two flat buffers: the weights the
// model computes with (fp32, or the precision's bf16/f16 compute copy) and
// the gradients (fp32, or the compute dtype when the precision's
// accumulate_grads_in_fp32 is false: accumulated over microbatches, reduced
// over dp and read by the optimizer in 16 bits, docs/precision.md).
struct FlatParams {
  std::vector<Param*> params;    // in buffer order
  std::vector<int64_t> offsets;  // element offset of params[i]
  Tensor data;                   // [numel], the compute dtype
  Tensor grad;                   // [numel], f32 or the compute dtype
  int64_t numel = 0;
  // With a 16-bit compute dtype the fp32 master weights belong to the
  // data-parallel strategy: their initial values wait here (host, [numel])
  // until its setup() took its share; then they are cleared.
  std::vector<float> initial_master;
  bool mixed() const { return data.defined() && data.dtype() != DType::F32; }
  // Whether this rank counts the tp-replicated params in the gradient norm:
  // true on tp rank 0 only, so summing the norm over tp counts each logical
  // element once (sharded params on every rank, replicated ones once).
  bool count_replicated = true;
};

// Index of `param` in flat.params; InternalError when it is not there.
size_t param_index(const FlatParams& flat, const Param& param);

// A contiguous range of the flat gradient buffer reduced as one message, and
// how many of its params have reported a final gradient in this step (a
// strategy launches the bucket's reduction when that reaches `params`).
struct GradBucket {
  int64_t begin = 0, end = 0;  // element range
  int params = 0;              // params inside it
  int ready = 0;               // of those, final in this step
  int64_t size() const { return end - begin; }
  // Counts one more final gradient; true when that completes the bucket.
  bool mark_ready() { return ++ready == params; }
  bool complete() const { return ready == params; }
};
// Groups params into buckets of about `bucket_bytes` in backward order (the
// last params of the flat buffer get their gradients first); bucket_of_param[i]
// is the bucket of flat.params[i].
std::vector<GradBucket> plan_grad_buckets(const FlatParams& flat, int64_t bucket_bytes,
                                          std::vector<int>& bucket_of_param);

// Hands gradients `grads` ([n], f32 or 16-bit) to `use` as fp32, the way
// optimizers read them: in one piece when they are fp32, else widened
// (exactly) a chunk of at most 2^20 elements at a time into one workspace, so
// 16-bit gradients never get an fp32 copy of their own size. `offset` is the
// chunk's first element within `grads`.
void with_fp32_grads(Backend& backend, const Tensor& grads,
                     const std::function<void(int64_t offset, const float* g, int64_t n)>& use);

// A maximal element range of consecutive params, clipped to [begin, end), that
// share the weight-decay flag: optimizers update ranges elementwise, so one
// update call per run (not per param) covers them.
struct DecayRun {
  int64_t begin = 0, end = 0;
  bool decay = false;
};
std::vector<DecayRun> decay_runs(const FlatParams& flat, int64_t begin, int64_t end);

// The element ranges of [begin, end) that this rank counts in the gradient
// norm (FlatParams::count_replicated; never a Param::tied_copy), consecutive
// params merged.
struct ElementRange {
  int64_t begin = 0, end = 0;
};
std::vector<ElementRange> norm_ranges(const FlatParams& flat, int64_t begin, int64_t end);

class DataParallel {
 public:
  virtual ~DataParallel() = default;
  // Called once, after params are materialised, before the first step.
  virtual void setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) = 0;
  // A gradient became final during the last microbatch's backward.
  virtual void grad_ready(Param& param) = 0;
  // Completes reduction; returns the squared gradient norm over the dp group
  // of the elements norm_ranges() selects, each counted once (before clipping);
  // the caller sums it over tp.
  virtual double finish_reduction() = 0;
  // Applies the optimizer with grads scaled by `grad_scale` (clipping, and
  // 1 / loss scale under fp16), then makes params consistent on every dp
  // rank. Mixed precision: the fp32 masters are updated and the compute copy
  // (FlatParams::data) refreshed from them.
  virtual void step(double lr, double grad_scale, int64_t step) = 0;
  virtual int64_t optimizer_state_bytes() const = 0;
  // For estimates before anything is allocated: the share of the optimizer
  // state one rank of a dp group of this size keeps (ddp 1, zero1 1/dp).
  virtual double optimizer_state_share(int dp) const = 0;
  // Optimizer state by logical parameter for checkpoints: slot s of param p.
  virtual void read_state(const Param& param, int slot, float* out) = 0;
  virtual void write_state(const Param& param, int slot, const float* in) = 0;
  // The fp32 (master) values of a parameter, for checkpoints: Param::data in
  // fp32, the masters under mixed precision (collective over dp where they
  // are sharded). write_master also sets the compute copy from them.
  virtual void read_master(const Param& param, float* out) = 0;
  virtual void write_master(const Param& param, const float* in) = 0;
};

template <>
struct FamilyTraits<DataParallel> {
  static constexpr const char* kName = "data_parallel";
  using Factory = std::function<std::unique_ptr<DataParallel>(const Options&)>;
};

}  // namespace weft
