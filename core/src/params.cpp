#include "weft/params.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <thread>

#include "weft/error.hpp"
#include "weft/half.hpp"
#include "weft/rng.hpp"

namespace weft {

namespace {

void check_layout(const Param& p) {
  WEFT_ASSERT(p.shard.dim < 0 || (p.shard.count >= 1 && p.shard.blocks >= 1),
              p.name + ": shard count and blocks must be >= 1");
  WEFT_ASSERT(p.shape.size() == p.full_shape.size(),
              p.name + ": shard shape " + shape_str(p.shape) + " vs full " + shape_str(p.full_shape));
  for (size_t d = 0; d < p.shape.size(); ++d) {
    const bool split = static_cast<int>(d) == p.shard.dim;
    const int64_t want = split ? p.full_shape[d] / p.shard.count : p.full_shape[d];
    WEFT_ASSERT(p.shape[d] == want && (!split || p.full_shape[d] % (int64_t{p.shard.count} * p.shard.blocks) == 0),
                p.name + ": shard shape " + shape_str(p.shape) + " does not match full " +
                    shape_str(p.full_shape) + " split " + std::to_string(p.shard.count) + " ways on dim " +
                    std::to_string(p.shard.dim) + " in " + std::to_string(p.shard.blocks) + " blocks");
  }
  WEFT_ASSERT(p.shard.dim < 0 || (p.shard.index >= 0 && p.shard.index < p.shard.count),
              p.name + ": shard index out of range");
}

// logical_index for the shard numbered `index` of p's split.
int64_t logical_index_of(const Param& p, int index, int64_t local) {
  if (p.shard.dim < 0 || p.shard.count == 1) return local;
  const size_t dim = static_cast<size_t>(p.shard.dim);
  int64_t inner = 1;  // elements per step along `dim` (same locally and logically)
  for (size_t d = dim + 1; d < p.shape.size(); ++d) inner *= p.shape[d];
  const int64_t local_dim = p.shape[dim], full_dim = p.full_shape[dim];
  const int64_t part = local_dim / p.shard.blocks;  // rows of one block this rank holds
  const int64_t outer = local / (local_dim * inner);
  const int64_t rest = local % (local_dim * inner);
  const int64_t i = rest / inner, j = rest % inner;
  const int64_t block = i / part, within = i % part;
  const int64_t logical_i = block * (full_dim / p.shard.blocks) + index * part + within;
  return (outer * full_dim + logical_i) * inner + j;
}

}  // namespace

int64_t logical_index(const Param& p, int64_t local) { return logical_index_of(p, p.shard.index, local); }

void gather_shards_host(const Param& p, const float* shards, float* full) {
  check_layout(p);
  const int64_t n = shape_numel(p.shape);
  const int count = p.shard.dim < 0 ? 1 : p.shard.count;
  for (int r = 0; r < count; ++r)
    for (int64_t e = 0; e < n; ++e) full[logical_index_of(p, r, e)] = shards[r * n + e];
}

void slice_shard_host(const Param& p, const float* full, float* local) {
  check_layout(p);
  const int64_t n = shape_numel(p.shape);
  for (int64_t e = 0; e < n; ++e) local[e] = full[logical_index(p, e)];
}

void init_param_host(const Param& p, uint64_t seed, float* out) {
  check_layout(p);
  const int64_t n = shape_numel(p.shape);
  if (p.init != InitKind::Normal) {
    std::fill(out, out + n, p.init == InitKind::Ones ? 1.f : 0.f);
    return;
  }
  const uint64_t key = name_key(p.name);
  const float scale = p.init_std;
  auto fill = [&](int64_t lo, int64_t hi) {
    for (int64_t e = lo; e < hi; ++e)
      out[e] = normal01(seed, key, static_cast<uint64_t>(logical_index(p, e))) * scale;
  };
  const int64_t kChunk = int64_t(1) << 16;
  const int64_t workers = std::min<int64_t>(std::max(1u, std::thread::hardware_concurrency()),
                                            (n + kChunk - 1) / kChunk);
  if (workers <= 1) {
    fill(0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + workers - 1) / workers;
  for (int64_t w = 0; w < workers; ++w)
    pool.emplace_back(fill, std::min(n, w * per), std::min(n, (w + 1) * per));
  for (auto& t : pool) t.join();
}

void copy_from_host_as(Backend& backend, const Tensor& dst, const float* values) {
  if (dst.numel() == 0) return;
  if (dst.dtype() == DType::F32) {
    backend.copy_from_host(dst, values);
    return;
  }
  WEFT_ASSERT(dst.dtype() == DType::BF16 || dst.dtype() == DType::F16,
              std::string("copy_from_host_as: a ") + dtype_name(dst.dtype()) + " tensor");
  std::vector<uint16_t> half(static_cast<size_t>(dst.numel()));
  const bool bf16 = dst.dtype() == DType::BF16;
  for (size_t i = 0; i < half.size(); ++i) half[i] = bf16 ? float_to_bf16(values[i]) : float_to_f16(values[i]);
  backend.copy_from_host(dst, half.data());
}

FlatParams materialize_params(const std::vector<Param*>& params, Backend& backend, uint64_t seed, DType compute,
                              DType grad) {
  FlatParams flat;
  std::set<const Param*> seen_ptr;
  std::set<std::string> seen_name;
  for (Param* p : params) {
    WEFT_ASSERT(p != nullptr, "materialize_params: null param");
    WEFT_ASSERT(seen_ptr.insert(p).second, p->name + ": listed twice");
    WEFT_ASSERT(seen_name.insert(p->name).second, p->name + ": two params with this name");
    check_layout(*p);
    flat.params.push_back(p);
    flat.offsets.push_back(flat.numel);
    flat.numel += shape_numel(p->shape);
  }
  flat.data = backend.alloc({flat.numel}, compute, MemCategory::Param);
  WEFT_ASSERT(grad == DType::F32 || grad == compute, std::string("materialize_params: ") + dtype_name(grad) +
                                                       " gradients beside " + dtype_name(compute) + " weights");
  flat.grad = backend.alloc({flat.numel}, grad, MemCategory::Grad);
  if (flat.mixed()) flat.initial_master.resize(static_cast<size_t>(flat.numel));
  std::vector<float> host;
  for (size_t i = 0; i < flat.params.size(); ++i) {
    Param& p = *flat.params[i];
    p.data = flat.data.view(flat.offsets[i], p.shape);
    p.grad = flat.grad.view(flat.offsets[i], p.shape);
    host.resize(static_cast<size_t>(p.data.numel()));
    init_param_host(p, seed, host.data());
    copy_from_host_as(backend, p.data, host.data());
    if (flat.mixed()) std::copy(host.begin(), host.end(), flat.initial_master.begin() + flat.offsets[i]);
  }
  return flat;
}

void zero_grads(FlatParams& flat, Backend& backend) {
  if (flat.numel == 0) return;
  backend.zero(flat.grad);  // unlike scale(0), this also clears inf/nan
}

}  // namespace weft
