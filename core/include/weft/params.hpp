// Materialising parameters: one flat param buffer and one flat grad buffer
// per rank, every Param::data/grad a view into them, values drawn from
// the counter-based RNG keyed by (seed, logical name, logical element index)
// so every parallel layout holds exactly the same numbers (docs/design.md).
#pragma once

#include <cstdint>
#include <vector>

#include "weft/backend.hpp"
#include "weft/grad_sync.hpp"
#include "weft/module.hpp"

namespace weft {

// Logical (full-tensor, row-major) index of local element `local` of `param`'s shard.
int64_t logical_index(const Param& param, int64_t local);

// Host copies between the logical tensor and shards (checkpoints):
// full[numel(full_shape)] from shards[count][numel(shape)], every shard index in order;
void gather_shards_host(const Param& param, const float* shards, float* full);
// local[numel(shape)] = this rank's shard of full[numel(full_shape)].
void slice_shard_host(const Param& param, const float* full, float* local);

// Fills `out[0 .. numel(param.shape))` with the initial values of this rank's
// shard: Normal -> normal01(seed, name_key(name), logical index) * init_std,
// Zeros -> 0, Ones -> 1.
void init_param_host(const Param& param, uint64_t seed, float* out);

// Allocates the flat buffers (MemCategory::Param / Grad, params in the given
// order, no padding), points every param's data/grad at its view, initialises
// the data (grads are zero). The Params must outlive the returned FlatParams.
// With a 16-bit `compute` dtype the data buffer holds the initial values
// rounded to it, and FlatParams::initial_master their fp32 values. `grad` is
// the gradient buffer's dtype: F32, or `compute` (16-bit gradients,
// precision.accumulate_grads_in_fp32 = false).
FlatParams materialize_params(const std::vector<Param*>& params, Backend& backend, uint64_t seed,
                              DType compute = DType::F32, DType grad = DType::F32);

// `values[n]` (fp32, host) into a compute-dtype tensor of n elements: copied,
// or rounded to bf16/f16 (round to nearest even) on the host.
void copy_from_host_as(Backend& backend, const Tensor& dst, const float* values);

// Sets every gradient to exactly 0 (also clears inf/nan).
void zero_grads(FlatParams& flat, Backend& backend);

}  // namespace weft
