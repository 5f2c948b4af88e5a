#include "weft/plugin.hpp"
#include "zero1.hpp"

namespace {

void register_zero1(weft::Registry& registry) {
  registry.add<weft::DataParallel>(
      "zero1", {weft::opt_float("bucket_mb", 25.0, "gradient bucket size in MiB", 0.001, 1e6)},
      "ZeRO-1 distributed optimizer: reduce-scattered gradients, optimizer state sharded over dp, parameters all-gathered",
      [](const weft::Options& o) { return std::make_unique<weft::Zero1>(o.get_float("bucket_mb")); });
}

}  // namespace

WEFT_PLUGIN("data_parallel", "zero1", "0.1.0", register_zero1)
