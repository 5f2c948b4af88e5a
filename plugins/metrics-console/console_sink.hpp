// Metrics sink "console": one progress line per record through spdlog, e.g.
//   step 12/50 | loss 4.1234 | lr 6.0e-04 | gnorm 1.234 | 12345 tok/s | mfu 41.3% | mem 9.9 MiB | 123.4 ms | ETA 0:42
// (under 120 columns). Only rank 0 prints. The ETA uses the mean step time of
// the records so far. A NaN/inf loss or a loss over spike_factor x the mean
// of the last logged losses is printed as a warning line of its own.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "weft/metrics.hpp"

namespace weft {

class ConsoleSink final : public MetricsSink {
 public:
  explicit ConsoleSink(const MetricsEnv& env, double spike_factor = 3.0);
  void write(const MetricsRecord& record) override;
  void flush() override;

  // The line write() prints for `record` (updates the running mean step time).
  std::string format(const MetricsRecord& record);
  // The warning for `record`'s loss ("" when none); updates the running mean.
  std::string warning(const MetricsRecord& record);

 private:
  bool enabled_ = true;
  double step_ms_sum_ = 0;
  int64_t step_ms_count_ = 0;
  double spike_factor_ = 3.0;      // 0 = no spike warnings
  std::deque<double> recent_loss_;  // the last kSpikeWindow finite losses
};

// "M:SS" or "H:MM:SS" of a duration in seconds (rounded to whole seconds).
std::string format_duration(double seconds);

}  // namespace weft
