#include "nccl_comm.hpp"
#include "weft/plugin.hpp"

namespace {

void register_nccl(weft::Registry& registry) {
  registry.add<weft::CommLauncher>(
      "nccl",
      {weft::opt_float("timeout_s", 300.0,
                       "seconds an operation waits before it fails naming the missing ranks (the communicator is "
                       "then aborted)",
                       0.001, 1e7)},
      "NCCL on CUDA device tensors, one GPU per local rank, bootstrapped through MPI (mpirun, srun)",
      [](const weft::Options& o) { return std::make_unique<weft::nccl::NcclLauncher>(o.get_float("timeout_s")); });
}

}  // namespace

WEFT_PLUGIN("communicator", "nccl", "0.1.0", register_nccl)
