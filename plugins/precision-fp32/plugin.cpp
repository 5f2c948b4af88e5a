#include "fp32_precision.hpp"

static void register_fp32(weft::Registry& r) {
  r.add<weft::Precision>("fp32", {}, "fp32 compute and master weights, no loss scaling",
                         [](const weft::Options&) -> std::unique_ptr<weft::Precision> {
                           return std::make_unique<weft::Fp32Precision>();
                         });
}

WEFT_PLUGIN("precision", "fp32", "0.1.0", register_fp32)
