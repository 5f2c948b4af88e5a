#include "adamw.hpp"

namespace weft {

OptionSchema AdamW::schema() {
  return {
      opt_float("lr", 6e-4, "peak learning rate (> 0); the lr_schedule scales it", 0.0),
      opt_float("beta1", 0.9, "decay of the first-moment average, in [0, 1)", 0.0, 1.0),
      opt_float("beta2", 0.95, "decay of the second-moment average, in [0, 1)", 0.0, 1.0),
      opt_float("eps", 1e-8, "added to sqrt(v_hat) in the denominator (> 0)", 0.0),
      opt_float("weight_decay", 0.1, "decoupled weight decay (not applied to biases and norm weights)", 0.0),
      opt_float("clip_grad_norm", 1.0, "clip gradients to this global L2 norm (0 = off)", 0.0),
  };
}

AdamW::AdamW(const Options& options) {
  config_.lr = options.get_float("lr");
  config_.beta1 = options.get_float("beta1");
  config_.beta2 = options.get_float("beta2");
  config_.eps = options.get_float("eps");
  config_.weight_decay = options.get_float("weight_decay");
  config_.clip_grad_norm = options.get_float("clip_grad_norm");
  if (!(config_.lr > 0)) options.fail("lr", "must be > 0");
  if (!(config_.beta1 >= 0 && config_.beta1 < 1)) options.fail("beta1", "must be in [0, 1)");
  if (!(config_.beta2 >= 0 && config_.beta2 < 1)) options.fail("beta2", "must be in [0, 1)");
  if (!(config_.eps > 0)) options.fail("eps", "must be > 0");
  if (!(config_.weight_decay >= 0)) options.fail("weight_decay", "must be >= 0");
  if (!(config_.clip_grad_norm >= 0)) options.fail("clip_grad_norm", "must be >= 0 (0 = off)");
}

void AdamW::update(Backend& backend, float* p, const float* g, float* const* state, int64_t n, double lr,
                   double grad_scale, bool decay, int64_t step) {
  if (n <= 0) return;
  backend.adamw(p, g, state[0], state[1], n, static_cast<float>(lr), static_cast<float>(config_.beta1),
                static_cast<float>(config_.beta2), static_cast<float>(config_.eps),
                decay ? static_cast<float>(config_.weight_decay) : 0.0f, step, static_cast<float>(grad_scale));
}

}  // namespace weft
