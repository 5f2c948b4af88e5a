#include "lr_schedules.hpp"

namespace {

weft::FamilyTraits<weft::LrSchedule>::Factory factory_for(weft::LrShape shape) {
  return [shape](const weft::Options& options, const weft::LrEnv& env) -> std::unique_ptr<weft::LrSchedule> {
    return std::make_unique<weft::WarmupDecaySchedule>(shape, options, env);
  };
}

}  // namespace

static void register_schedules(weft::Registry& r) {
  const weft::OptionSchema schema = weft::WarmupDecaySchedule::schema();
  r.add<weft::LrSchedule>("constant", schema, "linear warmup, then the optimizer's lr",
                          factory_for(weft::LrShape::Constant));
  r.add<weft::LrSchedule>("linear", schema, "linear warmup, then linear decay to min_lr at decay_steps",
                          factory_for(weft::LrShape::Linear));
  r.add<weft::LrSchedule>("cosine", schema, "linear warmup, then cosine decay to min_lr at decay_steps",
                          factory_for(weft::LrShape::Cosine));
}

WEFT_PLUGIN("lr_schedule", "lr-schedules", "0.1.0", register_schedules)
