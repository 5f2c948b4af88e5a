#include "ddp.hpp"
#include "weft/plugin.hpp"

namespace {

void register_ddp(weft::Registry& registry) {
  registry.add<weft::DataParallel>(
      "ddp", {weft::opt_float("bucket_mb", 25.0, "gradient bucket size in MiB", 0.001, 1e6)},
      "data parallelism: full optimizer state per rank, gradients summed over dp in buckets as they become ready",
      [](const weft::Options& o) { return std::make_unique<weft::Ddp>(o.get_float("bucket_mb")); });
}

}  // namespace

WEFT_PLUGIN("data_parallel", "ddp", "0.1.0", register_ddp)
