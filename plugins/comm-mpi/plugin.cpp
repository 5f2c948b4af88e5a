#include "mpi_comm.hpp"
#include "weft/plugin.hpp"

namespace {

void register_mpi(weft::Registry& registry) {
  registry.add<weft::CommLauncher>(
      "mpi",
      {weft::opt_float("timeout_s", 300.0,
                       "seconds a collective or send/recv waits before it fails naming the missing ranks", 0.001,
                       1e7)},
      "one process per rank under mpirun or srun (OpenMPI); host tensors",
      [](const weft::Options& o) { return std::make_unique<weft::mpi::MpiLauncher>(o.get_float("timeout_s")); });
}

}  // namespace

WEFT_PLUGIN("communicator", "mpi", "0.1.0", register_mpi)
