#include "expert_data_parallel.hpp"

#include "weft/error.hpp"

namespace weft {

namespace {

// flat.params[first, last) as a FlatParams of its own over the same storage.
FlatParams flat_range(const FlatParams& flat, size_t first, size_t last) {
  FlatParams part;
  part.count_replicated = flat.count_replicated;
  const int64_t begin = first < flat.params.size() ? flat.offsets[first] : flat.numel;
  const int64_t end = last < flat.params.size() ? flat.offsets[last] : flat.numel;
  for (size_t i = first; i < last; ++i) {
    part.params.push_back(flat.params[i]);
    part.offsets.push_back(flat.offsets[i] - begin);
  }
  part.numel = end - begin;
  part.data = flat.data.view(begin, {part.numel});
  part.grad = flat.grad.view(begin, {part.numel});
  if (!flat.initial_master.empty())  // mixed precision: the fp32 masters each strategy takes
    part.initial_master.assign(flat.initial_master.begin() + begin, flat.initial_master.begin() + end);
  return part;
}

}  // namespace

ExpertDataParallel::ExpertDataParallel(std::unique_ptr<DataParallel> dense, std::unique_ptr<DataParallel> experts,
                                       Communicator* edp, Communicator* ep)
    : dense_(std::move(dense)), experts_(std::move(experts)), edp_(edp), ep_(ep) {}

void ExpertDataParallel::setup(FlatParams& flat, Optimizer& optimizer, Backend& backend, Communicator* dp) {
  backend_ = &backend;
  size_t split = 0;
  while (split < flat.params.size() && !flat.params[split]->expert) ++split;
  for (size_t i = split; i < flat.params.size(); ++i)
    WEFT_ASSERT(flat.params[i]->expert, flat.params[i]->name + ": a dense param after the experts in the flat buffer");
  dense_flat_ = flat_range(flat, 0, split);
  expert_flat_ = flat_range(flat, split, flat.params.size());
  dense_->setup(dense_flat_, optimizer, backend, dp);
  experts_->setup(expert_flat_, optimizer, backend, edp_);
  std::vector<float>().swap(flat.initial_master);  // both strategies hold their masters now
}

void ExpertDataParallel::grad_ready(Param& param) { part(param).grad_ready(param); }

// Dense squares are already summed over dp; each ep rank holds other experts,
// so theirs sum over the ep group as well.
double ExpertDataParallel::finish_reduction() {
  const double dense = dense_->finish_reduction();
  double experts = experts_->finish_reduction();
  if (ep_ && ep_->size() > 1) {
    Tensor buf = backend_->alloc({1}, DType::F32, MemCategory::Workspace);
    float partial = static_cast<float>(experts);
    backend_->copy_from_host(buf, &partial);
    ep_->all_reduce(buf, ReduceOp::Sum)->wait();
    float total = 0;
    backend_->copy_to_host(&total, buf);
    experts = total;
  }
  return dense + experts;
}

void ExpertDataParallel::step(double lr, double grad_scale, int64_t step) {
  dense_->step(lr, grad_scale, step);
  experts_->step(lr, grad_scale, step);
}

int64_t ExpertDataParallel::optimizer_state_bytes() const {
  return dense_->optimizer_state_bytes() + experts_->optimizer_state_bytes();
}

void ExpertDataParallel::read_state(const Param& param, int slot, float* out) { part(param).read_state(param, slot, out); }

void ExpertDataParallel::read_master(const Param& param, float* out) { part(param).read_master(param, out); }

void ExpertDataParallel::write_master(const Param& param, const float* in) { part(param).write_master(param, in); }

void ExpertDataParallel::write_state(const Param& param, int slot, const float* in) {
  part(param).write_state(param, slot, in);
}

}  // namespace weft
