#include "ddp.hpp"

#include <algorithm>

#include "weft/params.hpp"

namespace weft {

void Ddp::setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) {
  flat_ = &flat;
  optimizer_ = &optimizer;
  backend_ = &backend;
  dp_ = dp;
  for (int s = 0; s < optimizer.state_slots(); ++s)
    state_.push_back(backend.alloc({flat.numel}, DType::F32, MemCategory::OptimState));
  if (flat.mixed()) {
    WEFT_ASSERT(static_cast<int64_t>(flat.initial_master.size()) == flat.numel, "ddp: no initial master weights");
    master_ = backend.alloc({flat.numel}, DType::F32, MemCategory::OptimState);
    if (flat.numel > 0) backend.copy_from_host(master_, flat.initial_master.data());
  }
  for (const GradBucket& range : plan_grad_buckets(flat, bucket_bytes_, bucket_of_param_))
    buckets_.emplace_back(range);
  runs_ = decay_runs(flat, 0, flat.numel);
  norm_ = norm_ranges(flat, 0, flat.numel);
}

int64_t Ddp::offset_of(const Param& param) const { return flat_->offsets[param_index(*flat_, param)]; }

void Ddp::launch(Bucket& bucket) {
  if (!dp_ || dp_->size() == 1) return;
  Tensor grads = flat_->grad.view(bucket.begin, {bucket.size()});
  if (flat_->grad_reduce_dtype == DType::F32) {
    bucket.work = dp_->all_reduce(grads, ReduceOp::Sum);
    return;
  }
  // Reduced in the compute dtype: half the bytes; cast back in finish_reduction.
  if (!bucket.reduced.defined())
    bucket.reduced = backend_->alloc({bucket.size()}, flat_->grad_reduce_dtype, MemCategory::CommBuffer);
  backend_->cast(bucket.reduced, grads);
  bucket.work = dp_->all_reduce(bucket.reduced, ReduceOp::Sum);
}

void Ddp::grad_ready(Param& param) {
  Bucket& b = buckets_[bucket_of_param_[param_index(*flat_, param)]];
  if (b.mark_ready()) launch(b);
}

double Ddp::finish_reduction() {
  for (Bucket& b : buckets_) {
    if (!b.complete()) launch(b);  // a parameter without a ready signal (unused in this step)
    if (b.work) {
      b.work->wait();
      if (b.reduced.defined()) backend_->cast(flat_->grad.view(b.begin, {b.size()}), b.reduced);
    }
    b.work.reset();
    b.ready = 0;
  }
  double sum = 0;
  for (const ElementRange& r : norm_) sum += backend_->sum_squares(flat_->grad.data<float>() + r.begin, r.end - r.begin);
  return sum;
}

void Ddp::step(double lr, double grad_scale, int64_t step) {
  const float* g = flat_->grad.data<float>();
  float* weights = flat_->mixed() ? master_.data<float>() : flat_->data.data<float>();
  std::vector<float*> slots(state_.size());
  for (const DecayRun& run : runs_) {
    for (size_t s = 0; s < state_.size(); ++s) slots[s] = state_[s].data<float>() + run.begin;
    optimizer_->update(*backend_, weights + run.begin, g + run.begin, slots.data(), run.end - run.begin, lr,
                       grad_scale, run.decay, step);
  }
  if (flat_->mixed()) backend_->cast(flat_->data, master_);  // the compute copy follows the masters
}

int64_t Ddp::optimizer_state_bytes() const {
  int64_t bytes = master_.defined() ? static_cast<int64_t>(master_.bytes()) : 0;
  for (const Tensor& t : state_) bytes += static_cast<int64_t>(t.bytes());
  return bytes;
}

void Ddp::read_state(const Param& param, int slot, float* out) {
  backend_->copy_to_host(out, state_.at(slot).view(offset_of(param), {param.data.numel()}));
}

void Ddp::write_state(const Param& param, int slot, const float* in) {
  backend_->copy_from_host(state_.at(slot).view(offset_of(param), {param.data.numel()}), in);
}

void Ddp::read_master(const Param& param, float* out) {
  if (!flat_->mixed()) return backend_->copy_to_host(out, param.data);
  backend_->copy_to_host(out, master_.view(offset_of(param), {param.data.numel()}));
}

void Ddp::write_master(const Param& param, const float* in) {
  if (!flat_->mixed()) return backend_->copy_from_host(param.data, in);
  backend_->copy_from_host(master_.view(offset_of(param), {param.data.numel()}), in);
  copy_from_host_as(*backend_, param.data, in);
}

}  // namespace weft
