#include "dispatchers.hpp"
#include "weft/plugin.hpp"

namespace {

std::unique_ptr<weft::Dispatcher> checked(std::unique_ptr<weft::Dispatcher> d, const weft::ParallelEnv& env,
                                          const char* name) {
  if (!env.backend) throw weft::InternalError(std::string(name) + " dispatcher needs a backend");
  const int ep = env.topology ? env.topology->sizes.ep : 1;
  if (ep > 1 && (!env.ep || env.ep->size() != ep))
    throw weft::InternalError(std::string(name) + " dispatcher needs the ep group's communicator");
  return d;
}

void register_dispatchers(weft::Registry& registry) {
  registry.add<weft::Dispatcher>(
      "alltoall", {}, "routed rows to their experts' ranks and back by all_to_all_v over the ep group",
      [](const weft::Options&, const weft::ParallelEnv& env) -> std::unique_ptr<weft::Dispatcher> {
        return checked(std::make_unique<weft::AllToAllDispatcher>(env.backend, env.ep), env, "alltoall");
      });
  registry.add<weft::Dispatcher>(
      "allgather", {}, "every ep rank gathers all routed rows; outputs come back by reduce-scatter",
      [](const weft::Options&, const weft::ParallelEnv& env) -> std::unique_ptr<weft::Dispatcher> {
        return checked(std::make_unique<weft::AllGatherDispatcher>(env.backend, env.ep), env, "allgather");
      });
}

}  // namespace

WEFT_PLUGIN("expert_parallel", "alltoall", "0.2.0", register_dispatchers)
