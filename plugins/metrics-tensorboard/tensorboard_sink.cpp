#include "tensorboard_sink.hpp"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <algorithm>
#include <vector>

#include "tb_events.hpp"
#include "weft/error.hpp"

namespace fs = std::filesystem;

namespace weft {

namespace {

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TensorboardSink::TensorboardSink(const MetricsEnv& env) {
  if (env.rank != 0) return;
  dir_ = ((env.out_dir.empty() ? fs::path(".") : fs::path(env.out_dir)) / "tensorboard").string();
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error("metrics tensorboard: cannot create '" + dir_ + "': " + ec.message());
  const auto seconds = static_cast<long long>(wall_time());
  path_ = (fs::path(dir_) / ("events.out.tfevents." + std::to_string(seconds) + "." + host_name() + "." +
                             std::to_string(::getpid())))
              .string();
  file_ = std::fopen(path_.c_str(), "ab");
  if (!file_) throw Error("metrics tensorboard: cannot open '" + path_ + "' for writing: " + std::strerror(errno));
  append(tb::file_version_event(wall_time()));
  carry_over_earlier_files(env.first_step);
}

TensorboardSink::~TensorboardSink() {
  if (file_) std::fclose(file_);
}

void TensorboardSink::append(const std::string& event) {
  const std::string rec = tb::record(event);
  if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size())
    throw Error("metrics tensorboard: cannot write '" + path_ + "': " + std::strerror(errno));
}

// TensorBoard shows every event of every file in the folder: a step written
// by the run before a resume and again after it would appear twice. The
// earlier files' events before `first_step` move into this file, the rest go.
void TensorboardSink::carry_over_earlier_files(int64_t first_step) {
  std::vector<fs::path> earlier;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec))
    if (entry.path().filename().string().rfind("events.out.tfevents.", 0) == 0 && entry.path() != fs::path(path_))
      earlier.push_back(entry.path());
  std::sort(earlier.begin(), earlier.end());  // names start with the creation second: oldest first
  for (const fs::path& file : earlier)
    for (const std::string& event : tb::read_records(read_all(file))) {
      const tb::EventInfo info = tb::parse_event(event);
      if (info.has_summary && info.step < first_step) append(event);
    }
  flush();  // this file holds them before the old ones go
  for (const fs::path& file : earlier) {
    fs::remove(file, ec);
    if (ec) throw Error("metrics tensorboard: cannot remove '" + file.string() + "': " + ec.message());
  }
}

void TensorboardSink::write(const MetricsRecord& record) {
  if (!file_) return;
  append(tb::scalars_event(wall_time(), record.step, record.values));
}

void TensorboardSink::flush() {
  if (file_ && std::fflush(file_) != 0)
    throw Error("metrics tensorboard: cannot write '" + path_ + "': " + std::strerror(errno));
}

}  // namespace weft
