#include "console_sink.hpp"

#include <spdlog/spdlog.h>

#include <cmath>
#include <cstdio>

namespace weft {

namespace {

const double* find_value(const MetricsRecord& record, const char* name) {
  for (const auto& [key, value] : record.values)
    if (key == name) return &value;
  return nullptr;
}

void append(std::string& line, const char* fmt, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, value);
  line += " | ";
  line += buf;
}

// The rank's peak bytes over every category (mem_*_bytes).
double memory_bytes(const MetricsRecord& record) {
  double total = 0;
  for (const auto& [key, value] : record.values)
    if (key.rfind("mem_", 0) == 0 && std::isfinite(value)) total += value;
  return total;
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t total = static_cast<int64_t>(std::llround(seconds));
  const int64_t h = total / 3600, m = (total / 60) % 60, s = total % 60;
  char buf[48];
  if (h > 0)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(h), static_cast<long long>(m),
                  static_cast<long long>(s));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(m), static_cast<long long>(s));
  return buf;
}

ConsoleSink::ConsoleSink(const MetricsEnv& env) : enabled_(env.rank == 0) {}

std::string ConsoleSink::format(const MetricsRecord& record) {
  std::string line = "step " + std::to_string(record.step);
  if (record.total_steps > 0) line += "/" + std::to_string(record.total_steps);
  if (const double* v = find_value(record, "loss")) append(line, "loss %.4f", *v);
  if (const double* v = find_value(record, "lr")) append(line, "lr %.1e", *v);
  if (const double* v = find_value(record, "grad_norm")) append(line, "grad_norm %.3f", *v);
  // Mixture of experts: the load-balancing loss and the busiest expert's load over the mean.
  if (const double* v = find_value(record, "aux_loss")) append(line, "aux %.4f", *v);
  if (const double* v = find_value(record, "moe_max_load")) append(line, "max load %.2fx", *v);
  if (const double* v = find_value(record, "tokens_per_s")) append(line, "%.0f tok/s", *v);
  if (const double mem = memory_bytes(record); mem > 0) append(line, "mem %.1f MiB", mem / (1024.0 * 1024.0));
  if (const double* v = find_value(record, "step_ms")) {
    append(line, "%.1f ms", *v);
    if (std::isfinite(*v)) {
      step_ms_sum_ += *v;
      ++step_ms_count_;
    }
  }
  if (record.total_steps > 0 && step_ms_count_ > 0) {
    const double mean_ms = step_ms_sum_ / static_cast<double>(step_ms_count_);
    const int64_t left = record.total_steps > record.step ? record.total_steps - record.step : 0;
    line += " | ETA " + format_duration(mean_ms * static_cast<double>(left) / 1000.0);
  }
  return line;
}

void ConsoleSink::write(const MetricsRecord& record) {
  if (!enabled_) return;
  spdlog::info("{}", format(record));
}

void ConsoleSink::flush() {
  if (enabled_) spdlog::default_logger()->flush();
}

}  // namespace weft
