// Optimizer "sgd": stochastic gradient descent with optional (Nesterov)
// momentum and L2 weight decay, PyTorch semantics (dampening 0):
//   g' = g + wd*p;  buf = g' at step 1, else momentum*buf + g';
//   d = nesterov ? g' + momentum*buf : buf;  p -= lr*d
// Runs on host pointers, so it needs a host backend.
#pragma once

#include "weft/optimizer.hpp"

namespace weft {

struct SgdConfig {
  double lr = 1e-3;
  double momentum = 0.9;
  double weight_decay = 0;
  bool nesterov = false;
  double clip_grad_norm = 0;  // 0: off
};

class Sgd final : public Optimizer {
 public:
  static OptionSchema schema();
  explicit Sgd(const Options& options);
  explicit Sgd(const SgdConfig& config) : config_(config) {}

  int state_slots() const override { return config_.momentum > 0 ? 1 : 0; }
  double base_lr() const override { return config_.lr; }
  double clip_grad_norm() const override { return config_.clip_grad_norm; }
  // state[0] = momentum buffer when momentum > 0.
  void update(Backend& backend, float* p, const float* g, float* const* state, int64_t n, double lr,
              double grad_scale, bool decay, int64_t step) override;
  bool set_weight_decay(double wd) override {
    config_.weight_decay = wd;
    return true;
  }
  const SgdConfig& config() const { return config_; }

 private:
  SgdConfig config_;
};

}  // namespace weft
