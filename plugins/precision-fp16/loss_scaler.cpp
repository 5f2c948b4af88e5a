#include "loss_scaler.hpp"

#include <algorithm>
#include <cmath>

#include "weft/error.hpp"

namespace weft {

LossScaler::LossScaler(const LossScalerConfig& config)
    : config_(config), scale_(config.initial_scale), hysteresis_left_(config.hysteresis) {}

bool LossScaler::update(bool found_inf) {
  if (found_inf) {
    growth_tracker_ = 0;
    hysteresis_left_ = std::max<int64_t>(0, hysteresis_left_ - 1);
    if (hysteresis_left_ == 0) scale_ = std::max(scale_ * config_.backoff_factor, config_.min_scale);
    ++skipped_;
    return true;
  }
  if (++growth_tracker_ == config_.growth_interval) {
    growth_tracker_ = 0;
    hysteresis_left_ = config_.hysteresis;
    scale_ *= config_.growth_factor;
  }
  return false;
}

std::map<std::string, double> LossScaler::state() const {
  return {{"loss_scale", scale_},
          {"growth_tracker", static_cast<double>(growth_tracker_)},
          {"hysteresis_left", static_cast<double>(hysteresis_left_)},
          {"skipped", static_cast<double>(skipped_)}};
}

void LossScaler::load_state(const std::map<std::string, double>& state) {
  auto get = [&](const std::string& key) {
    auto it = state.find(key);
    if (it == state.end()) throw Error("fp16 loss scaler state: key '" + key + "' is missing");
    if (!std::isfinite(it->second) || it->second < 0)
      throw Error("fp16 loss scaler state: key '" + key + "' is " + std::to_string(it->second));
    return it->second;
  };
  const double scale = get("loss_scale");
  if (scale <= 0) throw Error("fp16 loss scaler state: loss_scale must be > 0");
  scale_ = scale;
  growth_tracker_ = static_cast<int64_t>(get("growth_tracker"));
  hysteresis_left_ = static_cast<int64_t>(get("hysteresis_left"));
  skipped_ = static_cast<int64_t>(get("skipped"));
}

}  // namespace weft
