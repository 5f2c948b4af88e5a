#include "jsonl_sink.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "weft/error.hpp"

namespace weft {

namespace {

void append_json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

}  // namespace

std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  char buf[40];
  if (value == 0 && std::signbit(value)) return "-0.0";
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(value));
  } else {
    std::snprintf(buf, sizeof buf, "%.17g", value);
  }
  return buf;
}

std::string jsonl_line(const MetricsRecord& record) {
  std::string line = "{\"step\": " + std::to_string(record.step);
  for (const auto& [name, value] : record.values) {
    line += ", ";
    append_json_string(line, name);
    line += ": ";
    line += json_number(value);
  }
  line += "}\n";
  return line;
}

JsonlSink::JsonlSink(const MetricsEnv& env) {
  if (env.rank != 0) return;
  std::filesystem::path dir = env.out_dir.empty() ? std::filesystem::path(".") : std::filesystem::path(env.out_dir);
  path_ = (dir / "metrics.jsonl").string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);  // failure shows up in fopen below
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw Error("metrics jsonl: cannot open '" + path_ + "' for appending: " + std::strerror(errno));
}

JsonlSink::~JsonlSink() {
  if (file_) std::fclose(file_);
}

void JsonlSink::write(const MetricsRecord& record) {
  if (!file_) return;
  const std::string line = jsonl_line(record);
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size())
    throw Error("metrics jsonl: cannot write '" + path_ + "': " + std::strerror(errno));
}

void JsonlSink::flush() {
  if (file_ && std::fflush(file_) != 0)
    throw Error("metrics jsonl: cannot write '" + path_ + "': " + std::strerror(errno));
}

}  // namespace weft
