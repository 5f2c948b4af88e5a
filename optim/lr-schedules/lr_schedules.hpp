// Learning-rate schedules "constant", "linear", "cosine", all with linear
// warmup: lr(step) = base_lr * step / warmup_steps for step <= warmup_steps
// (steps count from 1), then
//   constant: base_lr
//   linear:   base_lr -> min_lr at decay_steps, held at min_lr after
//   cosine:   min_lr + 0.5*(base_lr - min_lr)*(1 + cos(pi*progress))
// with progress = (step - warmup_steps) / (decay_steps - warmup_steps) in [0, 1].
#pragma once

#include <cstdint>

#include "weft/optimizer.hpp"

namespace weft {

enum class LrShape { Constant, Linear, Cosine };

struct LrScheduleConfig {
  LrShape shape = LrShape::Constant;
  double base_lr = 0;
  double min_lr = 0;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;  // the step at which decay ends (already resolved, not 0)
};

class WarmupDecaySchedule final : public LrSchedule {
 public:
  static OptionSchema schema();
  // Reads warmup_steps, min_lr, decay_steps (0 = env.total_steps) and checks them.
  WarmupDecaySchedule(LrShape shape, const Options& options, const LrEnv& env);
  explicit WarmupDecaySchedule(const LrScheduleConfig& config) : config_(config) {}

  double lr(int64_t step) const override;
  const LrScheduleConfig& config() const { return config_; }

 private:
  LrScheduleConfig config_;
};

}  // namespace weft
