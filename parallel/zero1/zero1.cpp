#include "zero1.hpp"

#include <algorithm>

#include "weft/params.hpp"

namespace weft {

void Zero1::setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) {
  flat_ = &flat;
  optimizer_ = &optimizer;
  backend_ = &backend;
  dp_ = dp;
  ranks_ = dp ? dp->size() : 1;
  rank_ = dp ? dp->rank() : 0;
  const DType grad_dt = flat.grad.dtype();  // f32, or 16 bits (accumulated and reduced in it)
  for (const GradBucket& range : plan_grad_buckets(flat, bucket_bytes_, bucket_of_param_)) {
    Bucket b(range);
    b.shard = (b.size() + ranks_ - 1) / ranks_;
    b.own_begin = std::min(b.end, b.begin + rank_ * b.shard);
    b.own_end = std::min(b.end, b.own_begin + b.shard);
    b.state_offset = owned_;
    owned_ += b.own_end - b.own_begin;
    b.runs = decay_runs(flat, b.own_begin, b.own_end);
    b.norm = norm_ranges(flat, b.own_begin, b.own_end);
    b.send = backend.alloc({ranks_ * b.shard}, grad_dt, MemCategory::CommBuffer);
    b.recv = backend.alloc({b.shard}, grad_dt, MemCategory::CommBuffer);
    if (flat.mixed() && ranks_ > 1) {  // the all-gather of the compute copy
      if (grad_dt == flat.data.dtype()) {
        b.send16 = b.send, b.recv16 = b.recv;  // the reduced gradients are read before the gather
      } else {
        b.send16 = backend.alloc({ranks_ * b.shard}, flat.data.dtype(), MemCategory::CommBuffer);
        b.recv16 = backend.alloc({b.shard}, flat.data.dtype(), MemCategory::CommBuffer);
      }
    }
    buckets_.push_back(std::move(b));
  }
  for (int s = 0; s < optimizer.state_slots(); ++s)
    state_.push_back(backend.alloc({std::max<int64_t>(owned_, 1)}, DType::F32, MemCategory::OptimState));
  if (flat.mixed()) {
    WEFT_ASSERT(static_cast<int64_t>(flat.initial_master.size()) == flat.numel, "zero1: no initial master weights");
    master_ = backend.alloc({std::max<int64_t>(owned_, 1)}, DType::F32, MemCategory::OptimState);
    for (const Bucket& b : buckets_)
      if (b.own_end > b.own_begin)
        backend.copy_from_host(master_.view(b.state_offset, {b.own_end - b.own_begin}),
                               flat.initial_master.data() + b.own_begin);
  }
}

void Zero1::launch(Bucket& b) {
  backend_->copy(b.send.view(0, {b.size()}), flat_->grad.view(b.begin, {b.size()}));  // padding stays zero
  if (ranks_ == 1) {
    backend_->copy(b.recv, b.send.view(0, {b.shard}));
    return;
  }
  b.work = dp_->reduce_scatter(b.send, b.recv, ReduceOp::Sum);  // in the gradients' dtype
}

void Zero1::grad_ready(Param& param) {
  Bucket& b = buckets_[bucket_of_param_[param_index(*flat_, param)]];
  if (b.mark_ready()) launch(b);
}

double Zero1::finish_reduction() {
  double local = 0;
  for (Bucket& b : buckets_) {
    if (!b.complete()) launch(b);
    if (b.work) b.work->wait();
    b.work.reset();
    b.ready = 0;
    // Only owned elements count, so every element is counted exactly once.
    for (const ElementRange& r : b.norm)
      local += backend_->sum_squares(TypedPtr::of(b.recv.view(r.begin - b.own_begin, {r.end - r.begin})),
                                     r.end - r.begin);
  }
  if (ranks_ == 1) return local;
  Tensor sum = backend_->alloc({1}, DType::F32, MemCategory::Workspace);
  float partial = static_cast<float>(local);
  backend_->copy_from_host(sum, &partial);
  dp_->all_reduce(sum, ReduceOp::Sum)->wait();
  float total = 0;
  backend_->copy_to_host(&total, sum);
  return total;
}

void Zero1::step(double lr, double grad_scale, int64_t step) {
  const bool mixed = flat_->mixed();
  std::vector<float*> slots(state_.size());
  for (Bucket& b : buckets_) {
    // b.recv: the reduced gradients of [own_begin, own_end)
    int64_t owned = b.own_end - b.own_begin;
    for (const DecayRun& run : b.runs) {
      with_fp32_grads(*backend_, b.recv.view(run.begin - b.own_begin, {run.end - run.begin}),
                      [&](int64_t offset, const float* g, int64_t n) {
                        const int64_t local = run.begin - b.own_begin + offset;
                        for (size_t s = 0; s < state_.size(); ++s)
                          slots[s] = state_[s].data<float>() + b.state_offset + local;
                        float* weights = mixed ? master_.data<float>() + b.state_offset + local
                                               : flat_->data.data<float>() + run.begin + offset;
                        optimizer_->update(*backend_, weights, g, slots.data(), n, lr, grad_scale, run.decay, step);
                      });
    }
    if (mixed) {
      // The updated master slice, cast to the compute dtype, is what travels.
      if (ranks_ == 1) {
        if (owned > 0) backend_->cast(flat_->data.view(b.own_begin, {owned}), master_.view(b.state_offset, {owned}));
        continue;
      }
      if (owned > 0) backend_->cast(b.recv16.view(0, {owned}), master_.view(b.state_offset, {owned}));
      dp_->all_gather(b.recv16, b.send16)->wait();
      backend_->copy(flat_->data.view(b.begin, {b.size()}), b.send16.view(0, {b.size()}));
      continue;
    }
    if (ranks_ == 1) continue;
    // Gather the updated slices: rank r's slice lands at r*shard of the padded bucket.
    if (owned > 0) backend_->copy(b.recv.view(0, {owned}), flat_->data.view(b.own_begin, {owned}));
    dp_->all_gather(b.recv, b.send)->wait();
    backend_->copy(flat_->data.view(b.begin, {b.size()}), b.send.view(0, {b.size()}));
  }
}

int64_t Zero1::optimizer_state_bytes() const {
  return owned_ * 4 * (static_cast<int64_t>(state_.size()) + (master_.defined() ? 1 : 0));
}

// The full values of `param` from a buffer of owned elements (state slot or
// masters): collective over the dp group, every rank contributes what it owns.
void Zero1::gather_owned(const Tensor& owned, const Param& param, float* out) {
  int64_t n = param.data.numel();
  int64_t pb = flat_->offsets[param_index(*flat_, param)];
  Tensor full = backend_->alloc({n}, DType::F32, MemCategory::Workspace);
  for (const Bucket& b : buckets_) {
    int64_t lo = std::max(pb, b.own_begin), hi = std::min(pb + n, b.own_end);
    if (lo < hi) backend_->copy(full.view(lo - pb, {hi - lo}), owned.view(b.state_offset + lo - b.own_begin, {hi - lo}));
  }
  if (ranks_ > 1) dp_->all_reduce(full, ReduceOp::Sum)->wait();
  backend_->copy_to_host(out, full);
}

// Sets this rank's owned elements of `param` in `owned` from the full values.
void Zero1::scatter_owned(const Tensor& owned, const Param& param, const float* in) {
  int64_t n = param.data.numel();
  int64_t pb = flat_->offsets[param_index(*flat_, param)];
  for (const Bucket& b : buckets_) {
    int64_t lo = std::max(pb, b.own_begin), hi = std::min(pb + n, b.own_end);
    if (lo < hi)
      backend_->copy_from_host(owned.view(b.state_offset + lo - b.own_begin, {hi - lo}), in + (lo - pb));
  }
}

void Zero1::read_state(const Param& param, int slot, float* out) { gather_owned(state_.at(slot), param, out); }

void Zero1::write_state(const Param& param, int slot, const float* in) { scatter_owned(state_.at(slot), param, in); }

void Zero1::read_master(const Param& param, float* out) {
  if (!flat_->mixed()) return backend_->copy_to_host(out, param.data);
  gather_owned(master_, param, out);
}

void Zero1::write_master(const Param& param, const float* in) {
  if (!flat_->mixed()) return backend_->copy_from_host(param.data, in);
  scatter_owned(master_, param, in);
  copy_from_host_as(*backend_, param.data, in);
}

}  // namespace weft
