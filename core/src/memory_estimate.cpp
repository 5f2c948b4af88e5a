#include "memory_estimate.hpp"

namespace weft {

bool precision_known(const std::string& precision) {
  return precision == "fp32" || precision == "bf16" || precision == "fp16";
}

bool grads_in_fp32(const Options& precision_options) {
  return !precision_options.has("accumulate_grads_in_fp32") || precision_options.get_bool("accumulate_grads_in_fp32");
}

PrecisionBytes precision_bytes(const std::string& precision, bool fp32_grads) {
  PrecisionBytes b;
  b.name = precision;
  if (precision == "bf16" || precision == "fp16") {
    b.weight = 2;  // the model computes with 16-bit weights
    b.master = 4;  // the data-parallel strategy keeps fp32 masters with the optimizer state
    if (!fp32_grads) b.grad = 2;  // accumulated and reduced in the compute dtype
    b.compute16 = true;
  }
  return b;
}

RankMemory rank_memory(int64_t local_params, int slots, double optim_share, double act_fp32_bytes,
                       double act16_bytes, const PrecisionBytes& precision) {
  const double n = static_cast<double>(local_params);
  RankMemory m;
  m.param = precision.weight * n;
  m.grad = precision.grad * n;
  m.optim = (precision.master + precision.per_slot * slots) * n * optim_share;
  m.act = precision.compute16 ? act16_bytes : act_fp32_bytes;
  return m;
}

double ring_bytes(int p, double bytes) { return p <= 1 ? 0.0 : 2.0 * (p - 1) / p * bytes; }

CommBytes step_comm_bytes(const CommInput& in) {
  CommBytes c;
  const double tokens = static_cast<double>(in.micro) * static_cast<double>(in.seq_length);  // b T
  const double a = in.act_bytes * tokens * static_cast<double>(in.hidden);                 // one [b, T, C] tensor
  const double m = static_cast<double>(in.microbatches);
  // Tensor parallelism: per block and microbatch 2 all-reduces of [b,T,C] forward
  // and 2 backward (with sequence parallelism the same volume as gathers and
  // scatters), the embedding's and the output layer's, and the loss's max and sums.
  c.tp = m * ((4.0 * static_cast<double>(in.stage_blocks) + 2.0) * ring_bytes(in.tp, a) +
              ring_bytes(in.tp, 4.0 * tokens) + ring_bytes(in.tp, 8.0 * tokens));
  // Pipeline: per microbatch one [b, T/tp or T, C] activation forward and its
  // gradient backward at each boundary a middle stage touches.
  const double boundary = in.sequence_parallel ? a / in.tp : a;
  c.pp = in.pp > 1 ? m * 2.0 * boundary : 0.0;
  // Data parallelism: one all-reduce of the gradients (zero1 moves the same
  // bytes as a reduce-scatter plus an all-gather), plus the loss.
  c.dp = ring_bytes(in.dp, in.grad_bytes * static_cast<double>(in.local_params)) + ring_bytes(in.dp, 4.0);
  return c;
}

}  // namespace weft
