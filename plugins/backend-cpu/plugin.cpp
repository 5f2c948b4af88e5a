// Registration of the CPU backend: family "backend", name "cpu".
#include <algorithm>
#include <memory>

#include "cpu_backend.hpp"
#include "weft/backend.hpp"
#include "weft/plugin.hpp"

namespace {

void register_cpu(weft::Registry& r) {
  r.add<weft::Backend>(
      "cpu",
      {weft::opt_int("threads", 0, "kernel and BLAS threads; 0 = this rank's share of the cores", 0, 1024),
       weft::opt_string("kernels", "auto",
                        "auto: AVX2 + FMA kernels where the CPU has them; generic: baseline x86-64 loops only "
                        "(slower, for checking)",
                        {"auto", "generic"}),
       weft::opt_float("peak_tflops", 0.0,
                       "peak TFLOP/s of one rank that mfu is measured against; 0 = the measured fp32 GEMM rate", 0.0)},
      "CPU backend: OpenBLAS GEMM and multithreaded kernels",
      [](const weft::Options& o, const weft::BackendEnv& env) -> std::unique_ptr<weft::Backend> {
        int threads = static_cast<int>(o.get_int("threads"));
        if (threads == 0) threads = std::max(1, env.cores);
        return std::make_unique<weft::CpuBackend>(threads, o.get_string("kernels") == "auto");
      });
}

}  // namespace

WEFT_PLUGIN("backend", "cpu", "0.1.0", register_cpu)
