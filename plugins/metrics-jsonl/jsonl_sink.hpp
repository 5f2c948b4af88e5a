// Metrics sink "jsonl": rank 0 appends one JSON object per record to
// <out_dir>/metrics.jsonl: {"step": N, "<name>": value, ...} in record order.
// Integral values (|v| < 2^53) are written as integers, other values with
// %.17g so they read back bit-exactly, nan/inf as null.
#pragma once

#include <cstdio>
#include <string>

#include "weft/metrics.hpp"

namespace weft {

class JsonlSink final : public MetricsSink {
 public:
  explicit JsonlSink(const MetricsEnv& env);
  ~JsonlSink() override;
  JsonlSink(const JsonlSink&) = delete;
  JsonlSink& operator=(const JsonlSink&) = delete;

  void write(const MetricsRecord& record) override;
  void flush() override;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;  // null on ranks other than 0
};

// One record as a JSON line (with the trailing newline).
std::string jsonl_line(const MetricsRecord& record);
// A JSON number for `value`: integer form, %.17g, or null.
std::string json_number(double value);

}  // namespace weft
