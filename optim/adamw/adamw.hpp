// Optimizer "adamw": Adam with decoupled weight decay (Loshchilov & Hutter),
// run by the backend's fused kernel on flat ranges. State: m and v (2 slots).
#pragma once

#include "weft/optimizer.hpp"

namespace weft {

struct AdamWConfig {
  double lr = 6e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip_grad_norm = 1.0;  // 0: off
};

class AdamW final : public Optimizer {
 public:
  static OptionSchema schema();
  explicit AdamW(const Options& options);
  explicit AdamW(const AdamWConfig& config) : config_(config) {}

  int state_slots() const override { return 2; }
  double base_lr() const override { return config_.lr; }
  double clip_grad_norm() const override { return config_.clip_grad_norm; }
  // state[0] = m, state[1] = v; weight decay only where `decay`.
  void update(Backend& backend, float* p, const float* g, float* const* state, int64_t n, double lr,
              double grad_scale, bool decay, int64_t step) override;
  bool set_weight_decay(double wd) override {
    config_.weight_decay = wd;
    return true;
  }
  const AdamWConfig& config() const { return config_; }

 private:
  AdamWConfig config_;
};

}  // namespace weft
