// MetricsSink (family metrics_sink: console, jsonl, ...): receives one record
// per logged step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

struct MetricsRecord {
  int64_t step = 0;
  int64_t total_steps = 0;
  // Ordered (name, value) pairs: loss, lr, grad_norm, tokens_per_s, step_ms,
  // mem_*_bytes, comm_bytes, ... Floats are written so they read back bit-exactly.
  std::vector<std::pair<std::string, double>> values;
  double get(const std::string& name) const;  // NaN when absent
};

class MetricsSink {
 public:
  virtual ~MetricsSink() = default;
  virtual void write(const MetricsRecord& record) = 0;
  virtual void flush() = 0;
};

struct MetricsEnv {
  std::string out_dir;  // run.out_dir
  int rank = 0;
  int world = 1;
  int64_t first_step = 1;  // the first step this run trains: a resumed run's checkpoint step + 1
};

template <>
struct FamilyTraits<MetricsSink> {
  static constexpr const char* kName = "metrics_sink";
  using Factory = std::function<std::unique_ptr<MetricsSink>(const Options&, const MetricsEnv&)>;
};

}  // namespace weft
