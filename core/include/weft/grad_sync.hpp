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

// All params of this rank as views into two flat fp32 buffers.
struct FlatParams {
  std::vector<Param*> params;    // in buffer order
  std::vector<int64_t> offsets;  // element offset of params[i]
  Tensor data;                   // [numel]
  Tensor grad;                   // [numel]
  int64_t numel = 0;
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
  // Applies the optimizer with grads scaled by `grad_scale` (clipping), then
  // makes params consistent on every dp rank.
  virtual void step(double lr, double grad_scale, int64_t step) = 0;
  virtual int64_t optimizer_state_bytes() const = 0;
  // For estimates before anything is allocated: the share of the optimizer
  // state one rank of a dp group of this size keeps (ddp 1, zero1 1/dp).
  virtual double optimizer_state_share(int dp) const = 0;
  // Optimizer state by logical parameter for checkpoints: slot s of param p.
  virtual void read_state(const Param& param, int slot, float* out) = 0;
  virtual void write_state(const Param& param, int slot, const float* in) = 0;
};

template <>
struct FamilyTraits<DataParallel> {
  static constexpr const char* kName = "data_parallel";
  using Factory = std::function<std::unique_ptr<DataParallel>(const Options&)>;
};

}  // namespace weft
