// Optimizer (family optimizer) and learning-rate schedule (family lr_schedule).
// Optimizers update flat ranges elementwise, so a data-parallel strategy
// (ddp, zero1) can hand them any contiguous slice of the parameters.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "weft/backend.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // fp32 state tensors per parameter element (AdamW: m and v = 2).
  virtual int state_slots() const = 0;
  virtual double base_lr() const = 0;
  virtual double clip_grad_norm() const = 0;  // 0: no clipping
  // p[n] -= update(grad_scale * g[n], state[slot][n]); grad_scale is the clip
  // factor (1 = unclipped), applied as one fp32 multiply per element before
  // anything else; `decay` is false for biases and norm weights.
  virtual void update(Backend& backend, float* p, const float* g, float* const* state, int64_t n,
                      double lr, double grad_scale, bool decay, int64_t step) = 0;
  // The weight decay of the next updates, set each step by a weight-decay
  // schedule (lr_schedule.weight_decay_style); false: this optimizer has none to set.
  virtual bool set_weight_decay(double /*wd*/) { return false; }
};

class LrSchedule {
 public:
  virtual ~LrSchedule() = default;
  virtual double lr(int64_t step) const = 0;  // the lr step `step` applies; steps count from 1
  // The weight decay step `step` applies; nullopt: the optimizer's own.
  virtual std::optional<double> weight_decay(int64_t /*step*/) const { return std::nullopt; }
  // During a batch-size ramp-up (Megatron counts its schedules in samples):
  // the lr and weight decay of a step that moves the schedule position from
  // `before` to `after`, positions being samples consumed / batch.global
  // (whole step numbers k - 1 and k when the batch is constant). Default:
  // the step-based values at round(after).
  virtual double lr_between(double /*before*/, double after) const { return lr(std::llround(after)); }
  virtual std::optional<double> weight_decay_between(double /*before*/, double after) const {
    return weight_decay(std::llround(after));
  }
  // The resolved settings a checkpoint records; a resume refuses a schedule
  // whose settings differ (unless --override-schedule). Empty: nothing checked.
  virtual std::map<std::string, std::string> settings() const { return {}; }
};

struct LrEnv {
  double base_lr = 0;
  int64_t total_steps = 0;
};

template <>
struct FamilyTraits<Optimizer> {
  static constexpr const char* kName = "optimizer";
  using Factory = std::function<std::unique_ptr<Optimizer>(const Options&)>;
};

template <>
struct FamilyTraits<LrSchedule> {
  static constexpr const char* kName = "lr_schedule";
  using Factory = std::function<std::unique_ptr<LrSchedule>(const Options&, const LrEnv&)>;
};

}  // namespace weft
