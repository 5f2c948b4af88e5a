#include "fp16_precision.hpp"

static void register_fp16(weft::Registry& r) {
  r.add<weft::Precision>(
      "fp16",
      {weft::opt_bool("accumulate_grads_in_fp32", true,
                      "reduce gradients over dp in fp32 (false: gradient buckets cast to f16 for the reduction, "
                      "summed in fp32 by the communicator)"),
       weft::opt_float("initial_scale", 65536.0, "loss scale at the start", 1.0, 1e30),
       weft::opt_float("growth_factor", 2.0, "scale multiplier after growth_interval steps without overflow", 1.0,
                       1e6),
       weft::opt_int("growth_interval", 1000, "steps without overflow before the scale grows", 1, 1e12),
       weft::opt_float("backoff_factor", 0.5, "scale multiplier after hysteresis overflowed steps", 1e-6, 1.0),
       weft::opt_int("hysteresis", 2, "overflowed steps tolerated before the scale backs off", 1, 1e9),
       weft::opt_float("min_scale", 1.0, "the scale never backs off below this", 1e-30, 1e30)},
      "f16 compute copy of fp32 master weights with dynamic loss scaling; fp32 gradients and optimizer state",
      [](const weft::Options& o) -> std::unique_ptr<weft::Precision> {
        weft::LossScalerConfig c;
        c.initial_scale = o.get_float("initial_scale");
        c.growth_factor = o.get_float("growth_factor");
        c.growth_interval = o.get_int("growth_interval");
        c.backoff_factor = o.get_float("backoff_factor");
        c.hysteresis = o.get_int("hysteresis");
        c.min_scale = o.get_float("min_scale");
        if (c.min_scale > c.initial_scale)
          o.fail("min_scale", "must not exceed initial_scale (" + std::to_string(c.initial_scale) + ")");
        return std::make_unique<weft::Fp16Precision>(c, o.get_bool("accumulate_grads_in_fp32"));
      });
}

WEFT_PLUGIN("precision", "fp16", "0.1.0", register_fp16)
