// Dynamic loss scaling for fp16 (as Megatron-LM's DynamicGradScaler): the
// loss is multiplied by `scale` before backward so small gradients survive
// f16's range. A step whose gradients overflowed (inf/NaN) is skipped; after
// `hysteresis` such steps (counted since the last growth) the scale is
// multiplied by backoff_factor (never below min_scale). After growth_interval
// steps in a row without overflow it is multiplied by growth_factor and the
// hysteresis count starts over.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace weft {

struct LossScalerConfig {
  double initial_scale = 65536.0;
  double growth_factor = 2.0;
  int64_t growth_interval = 1000;
  double backoff_factor = 0.5;
  int64_t hysteresis = 2;
  double min_scale = 1.0;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScalerConfig& config);
  double scale() const { return scale_; }
  int64_t skipped() const { return skipped_; }
  // Returns whether the step is skipped (found_inf).
  bool update(bool found_inf);
  std::map<std::string, double> state() const;
  // Throws weft::Error naming a missing or bad key.
  void load_state(const std::map<std::string, double>& state);

 private:
  LossScalerConfig config_;
  double scale_;
  int64_t growth_tracker_ = 0;  // steps without overflow since the last growth or overflow
  int64_t hysteresis_left_;     // overflows still tolerated before a backoff
  int64_t skipped_ = 0;         // steps skipped so far in the run
};

}  // namespace weft
