#include "local_dispatcher.hpp"
#include "weft/plugin.hpp"

namespace {

void register_dispatchers(weft::Registry& registry) {
  registry.add<weft::Dispatcher>(
      "alltoall", {}, "token dispatch to expert ranks by all-to-all (expert = 1 in this build)",
      [](const weft::Options& o, const weft::ParallelEnv& env) -> std::unique_ptr<weft::Dispatcher> {
        int ep = env.topology ? env.topology->sizes.ep : 1;
        if (ep != 1)
          o.fail("plugin", "expert parallelism across " + std::to_string(ep) +
                               " ranks is not available in this build (expert = 1 only)");
        if (!env.backend) throw weft::InternalError("alltoall dispatcher needs a backend");
        return std::make_unique<weft::LocalDispatcher>(env.backend);
      });
}

}  // namespace

WEFT_PLUGIN("expert_parallel", "alltoall", "0.1.0", register_dispatchers)
