// Registration of the CUDA backend: family "backend", name "cuda".
#include <memory>

#include "cuda_backend.hpp"
#include "weft/backend.hpp"
#include "weft/plugin.hpp"

namespace {

void register_cuda(weft::Registry& r) {
  r.add<weft::Backend>(
      "cuda",
      {weft::opt_int("device", -1,
                     "CUDA device index; -1 = the rank's local GPU (local rank % visible devices)", -1, 1023),
       weft::opt_bool("tf32", false, "fp32 GEMMs on TF32 tensor cores (faster, about 10 mantissa bits); off: exact fp32"),
       weft::opt_bool("debug", false,
                      "synchronise and check after every kernel, NaN-fill uninitialised blocks (slow; for "
                      "finding a failing kernel); also WEFT_CUDA_DEBUG=1"),
       weft::opt_float("peak_tflops", 0.0,
                       "peak TFLOP/s of one rank that mfu is measured against; 0 = the measured fp32 GEMM rate", 0.0)},
      "CUDA backend: cuBLAS GEMMs (bf16/f16 on tensor cores, fp32 accumulation) and fused kernels",
      [](const weft::Options& o, const weft::BackendEnv& env) -> std::unique_ptr<weft::Backend> {
        weft::CudaOptions opts;
        opts.device = static_cast<int>(o.get_int("device"));
        opts.tf32 = o.get_bool("tf32");
        opts.debug = o.get_bool("debug");
        return std::make_unique<weft::CudaBackend>(opts, env);
      });
}

}  // namespace

WEFT_PLUGIN("backend", "cuda", "0.1.0", register_cuda)
