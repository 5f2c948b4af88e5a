#include "sgd.hpp"

#include "weft/error.hpp"

namespace weft {

OptionSchema Sgd::schema() {
  return {
      opt_float("lr", 1e-3, "peak learning rate (> 0); the lr_schedule scales it", 0.0),
      opt_float("momentum", 0.9, "momentum factor in [0, 1) (0 = plain SGD, no state)", 0.0, 1.0),
      opt_float("weight_decay", 0.0, "L2 penalty added to the gradient (not for biases and norm weights)", 0.0),
      opt_bool("nesterov", false, "use Nesterov momentum (needs momentum > 0)"),
      opt_float("clip_grad_norm", 0.0, "clip gradients to this global L2 norm (0 = off)", 0.0),
  };
}

Sgd::Sgd(const Options& options) {
  config_.lr = options.get_float("lr");
  config_.momentum = options.get_float("momentum");
  config_.weight_decay = options.get_float("weight_decay");
  config_.nesterov = options.get_bool("nesterov");
  config_.clip_grad_norm = options.get_float("clip_grad_norm");
  if (!(config_.lr > 0)) options.fail("lr", "must be > 0");
  if (!(config_.momentum >= 0 && config_.momentum < 1)) options.fail("momentum", "must be in [0, 1)");
  if (!(config_.weight_decay >= 0)) options.fail("weight_decay", "must be >= 0");
  if (config_.nesterov && config_.momentum <= 0) options.fail("nesterov", "needs momentum > 0");
  if (!(config_.clip_grad_norm >= 0)) options.fail("clip_grad_norm", "must be >= 0 (0 = off)");
}

void Sgd::update(Backend& backend, float* p, const float* g, float* const* state, int64_t n, double lr,
                 double grad_scale, bool decay, int64_t step) {
  if (backend.device() != Device::Host)
    throw Error("sgd: the optimizer updates host memory and needs a host backend (backend '" + backend.name() +
                "' is not one); use adamw or a cpu backend");
  if (n <= 0) return;
  const float lr_f = static_cast<float>(lr);
  const float wd = decay ? static_cast<float>(config_.weight_decay) : 0.0f;
  const float mu = static_cast<float>(config_.momentum);
  const float gs = static_cast<float>(grad_scale);
  if (config_.momentum <= 0) {
    for (int64_t i = 0; i < n; ++i) p[i] -= lr_f * (gs * g[i] + wd * p[i]);
    return;
  }
  float* buf = state[0];
  const bool first = step <= 1;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = gs * g[i] + wd * p[i];
    const float b = first ? gi : mu * buf[i] + gi;
    buf[i] = b;
    const float d = config_.nesterov ? gi + mu * b : b;
    p[i] -= lr_f * d;
  }
}

}  // namespace weft
