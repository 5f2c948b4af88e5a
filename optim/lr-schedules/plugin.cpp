#include "lr_schedules.hpp"

namespace {

void add(weft::Registry& r, const char* name, weft::LrShape shape, const char* doc) {
  r.add<weft::LrSchedule>(name, weft::WarmupDecaySchedule::schema(shape), doc,
                          [shape](const weft::Options& options, const weft::LrEnv& env) -> std::unique_ptr<weft::LrSchedule> {
                            return std::make_unique<weft::WarmupDecaySchedule>(shape, options, env);
                          });
}

}  // namespace

static void register_schedules(weft::Registry& r) {
  add(r, "constant", weft::LrShape::Constant, "linear warm-up, then the optimizer's lr");
  add(r, "linear", weft::LrShape::Linear, "linear warm-up, then linear decay to min_lr at decay_steps");
  add(r, "cosine", weft::LrShape::Cosine, "linear warm-up, then cosine decay to min_lr at decay_steps");
  add(r, "inverse_square_root", weft::LrShape::InverseSquareRoot,
      "linear warm-up, then lr * sqrt(warmup_steps / step), not below min_lr");
  add(r, "wsd", weft::LrShape::Wsd,
      "warm-up, stable at the optimizer's lr, then a decay of wsd_decay_steps to min_lr at decay_steps");
}

WEFT_PLUGIN("lr_schedule", "lr-schedules", "0.2.0", register_schedules)
