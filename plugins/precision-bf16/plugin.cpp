#include "bf16_precision.hpp"

static void register_bf16(weft::Registry& r) {
  r.add<weft::Precision>(
      "bf16",
      {weft::opt_bool("accumulate_grads_in_fp32", true,
                      "reduce gradients over dp in fp32 (false: gradient buckets cast to bf16 for the reduction, "
                      "summed in fp32 by the communicator)")},
      "bf16 compute copy of fp32 master weights; fp32 gradients and optimizer state",
      [](const weft::Options& o) -> std::unique_ptr<weft::Precision> {
        return std::make_unique<weft::Bf16Precision>(o.get_bool("accumulate_grads_in_fp32"));
      });
}

WEFT_PLUGIN("precision", "bf16", "0.1.0", register_bf16)
