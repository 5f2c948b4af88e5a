// Learning-rate schedules "constant", "linear", "cosine", "inverse_square_root"
// and "wsd", all with linear warm-up, written as Megatron-LM describes them.
// With t the schedule position (see step_of_lr), W = warmup_steps,
// D = decay_steps, lr0 = warmup_init_lr, max = the optimizer's lr, min = min_lr:
//   t <= W (W > 0):  lr0 + (max - lr0) * t / W
//   constant:        max
//   t > D:           min                          (every other shape)
//   linear:          min + (max - min) * (1 - r)
//   cosine:          min + (max - min) * 0.5 * (1 + cos(pi * r))
//   inverse_square_root: max(min, max * sqrt(max(W,1)) / sqrt(max(t,1)))
//   wsd:             max until D - wsd_decay_steps, then min + (max - min) * c(a)
//                    with a = (t - (D - wsd_decay_steps)) / wsd_decay_steps and
//                    c = 1 - a (linear), 0.5 (1 + cos(pi a)) (cosine),
//                    2 * 0.5^a - 1 (exponential), 1 - sqrt(a) (minus_sqrt)
// with r = (t - W) / (D - W). Step k (from 1) reads t = k ("current") or
// t = k - 1 ("previous", Megatron's: its scheduler advances after the update).
// An optional weight-decay schedule runs over the run's steps S from
// weight_decay_start to weight_decay_end: linear start + (end - start) * t / S,
// cosine start + (end - start) * 0.5 * (1 - cos(pi * t / S)), end after S.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "weft/optimizer.hpp"

namespace weft {

enum class LrShape { Constant, Linear, Cosine, InverseSquareRoot, Wsd };
enum class WsdDecay { Linear, Cosine, Exponential, MinusSqrt };
enum class WdStyle { Constant, Linear, Cosine };

struct LrScheduleConfig {
  LrShape shape = LrShape::Constant;
  double base_lr = 0;
  double min_lr = 0;
  double warmup_init_lr = 0;
  int64_t warmup_steps = 0;   // resolved (warmup_fraction * decay_steps when that was given)
  int64_t decay_steps = 0;    // the step at which decay ends (already resolved, not 0)
  bool previous = false;      // step_of_lr = "previous": step k reads position k - 1
  int64_t wsd_decay_steps = 0;
  WsdDecay wsd_decay = WsdDecay::Exponential;
  WdStyle wd_style = WdStyle::Constant;  // Constant: the optimizer's own weight_decay
  double wd_start = 0, wd_end = 0;
  int64_t total_steps = 0;    // the span of the weight-decay schedule
};

class WarmupDecaySchedule final : public LrSchedule {
 public:
  static OptionSchema schema(LrShape shape);
  // Reads the schema's keys (decay_steps 0 = env.total_steps) and refuses
  // inconsistent ones naming the key and the numbers.
  WarmupDecaySchedule(LrShape shape, const Options& options, const LrEnv& env);
  explicit WarmupDecaySchedule(const LrScheduleConfig& config) : config_(config) {}

  double lr(int64_t step) const override;
  std::optional<double> weight_decay(int64_t step) const override;
  double lr_between(double before, double after) const override { return lr_at(config_.previous ? before : after); }
  std::optional<double> weight_decay_between(double before, double after) const override {
    return weight_decay_at(config_.previous ? before : after);
  }
  std::map<std::string, std::string> settings() const override;
  const LrScheduleConfig& config() const { return config_; }
  // The lr and weight decay at schedule position t (0 = before any update;
  // fractional during a batch-size ramp-up), without the step_of_lr shift.
  double lr_at(double t) const;
  std::optional<double> weight_decay_at(double t) const;

 private:
  LrScheduleConfig config_;
};

}  // namespace weft
