// Metrics sink "console": one progress line per record through spdlog, e.g.
//   step 12/50 | loss 4.1234 | lr 6.0e-04 | grad_norm 1.234 | 12345 tok/s | 123.4 ms | ETA 0:42
// Only rank 0 prints. The ETA uses the mean step time of the records so far.
#pragma once

#include <cstdint>
#include <string>

#include "weft/metrics.hpp"

namespace weft {

class ConsoleSink final : public MetricsSink {
 public:
  explicit ConsoleSink(const MetricsEnv& env);
  void write(const MetricsRecord& record) override;
  void flush() override;

  // The line write() prints for `record` (updates the running mean step time).
  std::string format(const MetricsRecord& record);

 private:
  bool enabled_ = true;
  double step_ms_sum_ = 0;
  int64_t step_ms_count_ = 0;
};

// "M:SS" or "H:MM:SS" of a duration in seconds (rounded to whole seconds).
std::string format_duration(double seconds);

}  // namespace weft
