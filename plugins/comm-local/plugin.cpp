#include "local_comm.hpp"
#include "weft/plugin.hpp"

namespace {

void register_local(weft::Registry& registry) {
  registry.add<weft::CommLauncher>(
      "local", {weft::opt_float("timeout_s", 300.0, "seconds a collective waits for missing ranks", 0.001, 1e7)},
      "ranks as threads of one process (tests, single-node CPU)",
      [](const weft::Options& o) { return std::make_unique<weft::LocalLauncher>(o.get_float("timeout_s")); });
}

}  // namespace

WEFT_PLUGIN("communicator", "local", "0.1.0", register_local)
