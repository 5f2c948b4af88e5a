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

std::string printf1(const char* fmt, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, value);
  return buf;
}

void append(std::string& line, const char* fmt, double value) {
  line += " | ";
  line += printf1(fmt, value);
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
  if (h >= 24)  // a long run: days and hours are what a person reads
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(h / 24), static_cast<long long>(h % 24));
  else if (h > 0)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(h), static_cast<long long>(m),
                  static_cast<long long>(s));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(m), static_cast<long long>(s));
  return buf;
}

ConsoleSink::ConsoleSink(const MetricsEnv& env, double spike_factor)
    : enabled_(env.rank == 0), spike_factor_(spike_factor) {}

std::string ConsoleSink::warning(const MetricsRecord& record) {
  const double* loss = find_value(record, "loss");
  if (!loss) return "";
  const std::string at = "step " + std::to_string(record.step) + ": ";
  if (!std::isfinite(*loss)) return at + "loss is " + (std::isnan(*loss) ? "NaN" : "infinite");
  constexpr size_t kSpikeWindow = 20;  // logged steps the running mean covers
  std::string out;
  if (spike_factor_ > 0 && recent_loss_.size() >= 3) {  // a mean of one or two records is noise
    double mean = 0;
    for (double v : recent_loss_) mean += v / static_cast<double>(recent_loss_.size());
    if (mean > 0 && *loss > spike_factor_ * mean) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "loss spike: %.4f is %.1fx the mean %.4f of the last %zu records", *loss,
                    *loss / mean, mean, recent_loss_.size());
      out = at + buf;
    }
  }
  recent_loss_.push_back(*loss);
  if (recent_loss_.size() > kSpikeWindow) recent_loss_.pop_front();
  return out;
}

constexpr size_t kMaxColumns = 120;

std::string ConsoleSink::format(const MetricsRecord& record) {
  std::string line = "step " + std::to_string(record.step);
  if (record.total_steps > 0) line += "/" + std::to_string(record.total_steps);
  if (const double* v = find_value(record, "loss")) append(line, "loss %.4f", *v);
  if (const double* v = find_value(record, "lr")) append(line, "lr %.1e", *v);
  // Large values switch to shorter forms so the line stays within 120 columns.
  if (const double* v = find_value(record, "grad_norm")) append(line, std::fabs(*v) < 1e3 ? "gnorm %.3f" : "gnorm %.3g", *v);
  // Mixture of experts: the load-balancing loss and the busiest expert's load over the mean.
  if (const double* v = find_value(record, "aux_loss")) append(line, "aux %.4f", *v);
  if (const double* v = find_value(record, "moe_max_load")) append(line, "max load %.2fx", *v);
  if (const double* v = find_value(record, "tokens_per_s"))
    line += " | " + (*v < 1e6 ? printf1("%.0f tok/s", *v) : printf1("%.2fM tok/s", *v / 1e6));
  if (const double* v = find_value(record, "mfu"); v && *v > 0) append(line, "mfu %.1f%%", *v * 100);
  if (const double mib = memory_bytes(record) / (1024.0 * 1024.0); mib > 0)
    line += " | " + (mib < 1024 ? printf1("mem %.1f MiB", mib) : printf1("mem %.1f GiB", mib / 1024));
  std::string step_time;
  if (const double* v = find_value(record, "step_ms")) {
    step_time = " | " + (*v < 1e4 ? printf1("%.1f ms", *v) : printf1("%.1f s", *v / 1e3));
    if (std::isfinite(*v)) {
      step_ms_sum_ += *v;
      ++step_ms_count_;
    }
  }
  std::string eta;
  if (record.total_steps > 0 && step_ms_count_ > 0) {
    const double mean_ms = step_ms_sum_ / static_cast<double>(step_ms_count_);
    const int64_t left = record.total_steps > record.step ? record.total_steps - record.step : 0;
    eta = " | ETA " + format_duration(mean_ms * static_cast<double>(left) / 1000.0);
  }
  // The step time is the one field the ETA and tok/s already imply: it goes first when space is short.
  if (line.size() + step_time.size() + eta.size() <= kMaxColumns) line += step_time;
  return line + eta;
}

void ConsoleSink::write(const MetricsRecord& record) {
  if (!enabled_) return;
  const std::string warn = warning(record);
  spdlog::info("{}", format(record));
  if (!warn.empty()) spdlog::warn("!!! {}", warn);
}

void ConsoleSink::flush() {
  if (enabled_) spdlog::default_logger()->flush();
}

}  // namespace weft
