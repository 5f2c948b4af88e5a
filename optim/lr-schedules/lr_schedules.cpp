#include "lr_schedules.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace weft {

OptionSchema WarmupDecaySchedule::schema() {
  return {
      opt_int("warmup_steps", 0, "steps of linear warmup from 0 to the optimizer's lr", 0),
      opt_float("min_lr", 0.0, "learning rate at the end of the decay (linear, cosine)", 0.0),
      opt_int("decay_steps", 0, "step at which the decay reaches min_lr (0 = the run's total steps)", 0),
  };
}

WarmupDecaySchedule::WarmupDecaySchedule(LrShape shape, const Options& options, const LrEnv& env) {
  config_.shape = shape;
  config_.base_lr = env.base_lr;
  config_.warmup_steps = options.get_int("warmup_steps");
  config_.min_lr = options.get_float("min_lr");
  const int64_t decay_steps = options.get_int("decay_steps");
  config_.decay_steps = decay_steps > 0 ? decay_steps : env.total_steps;
  if (config_.warmup_steps < 0) options.fail("warmup_steps", "must be >= 0");
  if (!(config_.min_lr >= 0)) options.fail("min_lr", "must be >= 0");
  if (decay_steps < 0) options.fail("decay_steps", "must be >= 0 (0 = the run's total steps)");
  if (shape == LrShape::Constant) return;  // min_lr and decay_steps play no part
  if (config_.min_lr > config_.base_lr)
    options.fail("min_lr", std::to_string(config_.min_lr) + " is above the optimizer's lr " +
                               std::to_string(config_.base_lr));
  // A run shorter than its warmup is fine (a short trial of a long recipe);
  // an explicit decay_steps inside the warmup contradicts it.
  if (decay_steps > 0 && config_.warmup_steps > decay_steps)
    options.fail("warmup_steps", std::to_string(config_.warmup_steps) + " exceeds decay_steps " +
                                     std::to_string(decay_steps));
}

double WarmupDecaySchedule::lr(int64_t step) const {
  const LrScheduleConfig& c = config_;
  if (c.warmup_steps > 0 && step <= c.warmup_steps)
    return c.base_lr * static_cast<double>(step) / static_cast<double>(c.warmup_steps);
  if (c.shape == LrShape::Constant) return c.base_lr;
  const int64_t span = c.decay_steps - c.warmup_steps;
  double progress = span > 0 ? static_cast<double>(step - c.warmup_steps) / static_cast<double>(span) : 1.0;
  progress = std::clamp(progress, 0.0, 1.0);
  if (c.shape == LrShape::Linear) return c.base_lr + (c.min_lr - c.base_lr) * progress;
  const double pi = 3.14159265358979323846;
  return c.min_lr + 0.5 * (c.base_lr - c.min_lr) * (1.0 + std::cos(pi * progress));
}

}  // namespace weft
