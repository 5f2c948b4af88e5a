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
  // In the gradients' dtype: fp32, or 16 bits (half the bytes) when they accumulate in it.
  bucket.work = dp_->all_reduce(flat_->grad.view(bucket.begin, {bucket.size()}), ReduceOp::Sum);
}

void Ddp::grad_ready(Param& param) {
  Bucket& b = buckets_[bucket_of_param_[param_index(*flat_, param)]];
  if (b.mark_ready()) launch(b);
}

double Ddp::finish_reduction() {
  for (Bucket& b : buckets_) {
    if (!b.complete()) launch(b);  // a parameter without a ready signal (unused in this step)
    if (b.work) b.work->wait();
    b.work.reset();
    b.ready = 0;
  }
  double sum = 0;
  for (const ElementRange& r : norm_)
    sum += backend_->sum_squares(TypedPtr::of(flat_->grad.view(r.begin, {r.end - r.begin})), r.end - r.begin);
  return sum;
}

void Ddp::step(double lr, double grad_scale, int64_t step) {
  float* weights = flat_->mixed() ? master_.data<float>() : flat_->data.data<float>();
  std::vector<float*> slots(state_.size());
  for (const DecayRun& run : runs_) {
    with_fp32_grads(*backend_, flat_->grad.view(run.begin, {run.end - run.begin}),
                    [&](int64_t offset, const float* g, int64_t n) {
                      const int64_t at = run.begin + offset;
                      for (size_t s = 0; s < state_.size(); ++s) slots[s] = state_[s].data<float>() + at;
                      optimizer_->update(*backend_, weights + at, g, slots.data(), n, lr, grad_scale, run.decay,
                                         step);
                    });
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
