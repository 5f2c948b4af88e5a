// Per-rank memory and communication estimates from a layout: what `weft check`
// prints and `weft plan` ranks layouts by. The formulas are those of
// docs/distributed.md ("Memory per rank"); tests/cli/test_frontdoor.py checks
// them against an independent computation.
#pragma once

#include <cstdint>
#include <string>

#include "weft/options.hpp"

namespace weft {

// Bytes each parameter costs under a precision mode (docs/distributed.md):
//   fp32:        weights 4, gradients 4, optimizer 4 per state slot
//   bf16, fp16:  weights 2, gradients 4 (fp32; 2 with accumulate_grads_in_fp32 = false),
//                optimizer 4 (fp32 master) + 4 per slot
// Activations: the model's own figures for an fp32 or a 16-bit compute dtype
// (ModelSummary), picked by `compute16`.
struct PrecisionBytes {
  std::string name;
  double weight = 4, grad = 4, master = 0, per_slot = 4;
  bool compute16 = false;  // bf16, fp16
};
// The table above for "fp32", "bf16" and "fp16"; any other name gets the fp32
// figures (precision_known says whether the name is in the table).
PrecisionBytes precision_bytes(const std::string& precision, bool fp32_grads = true);
bool precision_known(const std::string& precision);
// Whether a recipe's [precision] options keep gradients in fp32 (the default)
// rather than in the compute dtype (accumulate_grads_in_fp32 = false).
bool grads_in_fp32(const Options& precision_options);

struct RankMemory {
  double param = 0, grad = 0, optim = 0, act = 0;  // bytes
  double total() const { return param + grad + optim + act; }
};

// One rank's memory: `local_params` elements held, `slots` optimizer state
// tensors per element (AdamW: 2), `optim_share` the fraction of the optimizer
// state the data-parallel strategy keeps on one rank (ddp 1, zero1 1/data),
// `act_fp32_bytes` and `act16_bytes` the saved activations of the schedule's
// microbatches in flight with an fp32 and a 16-bit compute dtype.
RankMemory rank_memory(int64_t local_params, int slots, double optim_share, double act_fp32_bytes,
                       double act16_bytes, const PrecisionBytes& precision);

// ring_p(x) = 2 (p-1)/p x: what one rank sends in a ring all-reduce of x bytes.
double ring_bytes(int p, double bytes);

// Bytes one rank sends per optimizer step (docs/distributed.md), for a
// layout of tensor tp, pipeline pp, data dp; the rank's stage holds
// `stage_blocks` transformer blocks and `local_params` elements; `microbatches`
// per step of `micro` sequences of T tokens and width C; gradients reduced in
// `grad_bytes` per element, activations sent in `act_bytes` per element.
struct CommInput {
  int tp = 1, pp = 1, dp = 1;
  int64_t stage_blocks = 0, local_params = 0, microbatches = 1, micro = 1, seq_length = 1, hidden = 1;
  bool sequence_parallel = false;
  double grad_bytes = 4, act_bytes = 4;
};
struct CommBytes {
  double tp = 0, pp = 0, dp = 0;
  double total() const { return tp + pp + dp; }
};
CommBytes step_comm_bytes(const CommInput& in);

}  // namespace weft
