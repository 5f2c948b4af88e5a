#include "weft/grad_sync.hpp"

#include <algorithm>

namespace weft {

size_t param_index(const FlatParams& flat, const Param& param) {
  for (size_t i = 0; i < flat.params.size(); ++i)
    if (flat.params[i] == &param) return i;
  throw InternalError("parameter " + param.name + " is not in the flat buffer");
}

std::vector<GradBucket> plan_grad_buckets(const FlatParams& flat, int64_t bucket_bytes,
                                          std::vector<int>& bucket_of_param) {
  std::vector<GradBucket> buckets;
  const int n = static_cast<int>(flat.params.size());
  const int64_t elem = flat.grad.defined() ? static_cast<int64_t>(dtype_size(flat.grad.dtype())) : 4;
  bucket_of_param.assign(n, 0);
  for (int i = n - 1; i >= 0; --i) {
    int64_t begin = flat.offsets[i], end = begin + flat.params[i]->data.numel();
    if (buckets.empty() || (buckets.back().end - buckets.back().begin) * elem >= bucket_bytes)
      buckets.push_back(GradBucket{begin, end, 0});
    GradBucket& b = buckets.back();
    b.begin = std::min(b.begin, begin);
    b.end = std::max(b.end, end);
    ++b.params;
    bucket_of_param[i] = static_cast<int>(buckets.size()) - 1;
  }
  return buckets;
}

void with_fp32_grads(Backend& backend, const Tensor& grads,
                     const std::function<void(int64_t offset, const float* g, int64_t n)>& use) {
  const int64_t n = grads.numel();
  if (n == 0) return;
  if (grads.dtype() == DType::F32) return use(0, grads.data<float>(), n);
  constexpr int64_t kChunk = int64_t{1} << 20;  // a multiple of every vector width: no extra tails
  Tensor wide = backend.alloc_uninitialized({std::min(kChunk, n)}, DType::F32, MemCategory::Workspace);
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t len = std::min(kChunk, n - begin);
    backend.cast(wide.view(0, {len}), grads.view(begin, {len}));
    use(begin, wide.data<float>(), len);
  }
}

std::vector<DecayRun> decay_runs(const FlatParams& flat, int64_t begin, int64_t end) {
  std::vector<DecayRun> runs;
  for (size_t i = 0; i < flat.params.size(); ++i) {
    const int64_t b = std::max(begin, flat.offsets[i]);
    const int64_t e = std::min(end, flat.offsets[i] + flat.params[i]->data.numel());
    if (b >= e) continue;
    const bool decay = flat.params[i]->weight_decay;
    if (!runs.empty() && runs.back().end == b && runs.back().decay == decay)
      runs.back().end = e;
    else
      runs.push_back(DecayRun{b, e, decay});
  }
  return runs;
}

std::vector<ElementRange> norm_ranges(const FlatParams& flat, int64_t begin, int64_t end) {
  std::vector<ElementRange> ranges;
  for (size_t i = 0; i < flat.params.size(); ++i) {
    if (flat.params[i]->tied_copy || (flat.params[i]->tp_replicated && !flat.count_replicated)) continue;
    const int64_t b = std::max(begin, flat.offsets[i]);
    const int64_t e = std::min(end, flat.offsets[i] + flat.params[i]->data.numel());
    if (b >= e) continue;
    if (!ranges.empty() && ranges.back().end == b)
      ranges.back().end = e;
    else
      ranges.push_back(ElementRange{b, e});
  }
  return ranges;
}

}  // namespace weft
