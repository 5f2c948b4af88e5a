#include "run_dir.hpp"

#include <charconv>
#include <filesystem>

#include "checkpoint.hpp"
#include "safetensors.hpp"
#include "text_util.hpp"
#include "weft/error.hpp"
#include "weft/file.hpp"

namespace fs = std::filesystem;

namespace weft {

namespace {

constexpr uint64_t kMaxMetricsBytes = uint64_t(4) << 30;

std::string step_name(int64_t step) { return "step_" + std::to_string(step); }

bool same_folder(const std::string& a, const std::string& b) {
  std::error_code ec1, ec2;
  fs::path ca = fs::weakly_canonical(fs::absolute(a), ec1), cb = fs::weakly_canonical(fs::absolute(b), ec2);
  return !ec1 && !ec2 && ca == cb;
}

bool has_checkpoints(const fs::path& root) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(root / "latest", ec)) || !list_step_dirs(root.string()).empty();
}

void require_folder_or_absent(const std::string& out_dir) {
  std::error_code ec;
  fs::file_status st = fs::status(out_dir, ec);
  if (fs::exists(st) && !fs::is_directory(st))
    throw Error("run.out_dir '" + out_dir + "': is a file, not a folder");
}

// metrics.jsonl split at `step`: records up to it are kept, later ones returned.
struct MetricsSplit {
  std::string kept, dropped;
  int64_t dropped_records = 0;
};

// Every line is a record {"step": N, ...} as the jsonl sink writes it.
int64_t record_step(const std::string& line, const std::string& path, int64_t line_no) {
  const std::string key = "{\"step\": ";
  int64_t step = -1;
  if (line.compare(0, key.size(), key) == 0) {
    const char* begin = line.data() + key.size();
    auto [end, err] = std::from_chars(begin, line.data() + line.size(), step);
    if (err != std::errc() || end == begin || (*end != ',' && *end != '}')) step = -1;
  }
  if (step < 0)
    throw Error(path + ":" + std::to_string(line_no) + ": not a metrics record (expected {\"step\": N, ...}): '" +
                line.substr(0, 60) + "'");
  return step;
}

MetricsSplit split_metrics(const std::string& path, int64_t step) {
  MetricsSplit out;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return out;
  std::string text = read_input_file(path, kMaxMetricsBytes);
  int64_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string::npos ? text.size() : nl;
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    if (record_step(line, path, line_no) > step) {
      out.dropped += line + "\n";
      ++out.dropped_records;
    } else {
      out.kept += line + "\n";
    }
  }
  return out;
}

// checkpoints/abandoned_after_step_<step>, or with _2, _3, ... when taken.
fs::path free_abandoned_folder(const fs::path& root, int64_t step) {
  std::string base = "abandoned_after_step_" + std::to_string(step);
  std::error_code ec;
  fs::path dir = root / base;
  for (int k = 2; fs::exists(fs::symlink_status(dir, ec)); ++k) dir = root / (base + "_" + std::to_string(k));
  return dir;
}

void point_latest_at_newest(const fs::path& root) {
  std::vector<int64_t> steps = list_step_dirs(root.string());
  std::error_code ec;
  if (steps.empty()) {
    fs::remove(root / "latest", ec);
    return;
  }
  write_file_atomic((root / "latest").string(), step_name(steps.back()) + "\n");
}

}  // namespace

std::string find_resume_checkpoint(const std::string& out_dir, const std::string& from, ResumeMode mode) {
  if (mode == ResumeMode::Off) return "";
  if (!from.empty() && !same_folder(from, out_dir)) return resolve_checkpoint_dir(from);
  fs::path root = fs::path(out_dir) / "checkpoints";
  std::error_code ec;
  if (fs::exists(fs::symlink_status(root / "latest", ec))) return resolve_checkpoint_dir(out_dir);
  // A crash between a step folder's rename and `latest` leaves a complete folder without a pointer.
  std::vector<int64_t> steps = list_step_dirs(root.string());
  if (!steps.empty()) return resolve_checkpoint_dir((root / step_name(steps.back())).string());
  if (mode == ResumeMode::Require) throw Error(out_dir + ": checkpoint not found (--resume=require)");
  return "";
}

void refuse_used_out_dir(const std::string& out_dir) {
  require_folder_or_absent(out_dir);
  std::vector<std::string> holds;
  if (has_checkpoints(fs::path(out_dir) / "checkpoints")) holds.push_back("checkpoints/");
  // An empty metrics.jsonl is what a run that never finished a step leaves.
  std::error_code ec;
  fs::path metrics = fs::path(out_dir) / "metrics.jsonl";
  bool empty = fs::is_regular_file(metrics, ec) && fs::file_size(metrics, ec) == 0;
  if (fs::exists(fs::symlink_status(metrics, ec)) && !empty) holds.push_back("metrics.jsonl");
  if (holds.empty()) return;
  throw Error("run.out_dir '" + out_dir + "': holds an earlier run (" + join(holds, ", ") +
              "); continue it with --resume, start over with --overwrite, or choose another run.out_dir");
}

void prepare_out_dir(const std::string& out_dir, bool overwrite) {
  require_folder_or_absent(out_dir);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error("run.out_dir '" + out_dir + "': cannot create the folder: " + ec.message());
  if (!overwrite) return;
  fs::remove_all(fs::path(out_dir) / "checkpoints", ec);
  if (!ec) fs::remove(fs::path(out_dir) / "metrics.jsonl", ec);
  if (ec) throw Error("run.out_dir '" + out_dir + "': cannot remove the earlier run (--overwrite): " + ec.message());
}

std::string start_branch(const std::string& out_dir, int64_t step) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const std::string metrics = (fs::path(out_dir) / "metrics.jsonl").string();
  MetricsSplit split = split_metrics(metrics, step);
  std::vector<std::string> later;
  for (int64_t s : list_step_dirs(root.string()))
    if (s > step) later.push_back(step_name(s));

  std::string kept_at;
  if (!later.empty()) {
    fs::path dest = free_abandoned_folder(root, step);
    std::error_code ec;
    fs::create_directories(dest, ec);
    if (ec) throw Error(dest.string() + ": cannot create: " + ec.message());
    for (const std::string& name : later) {
      fs::rename(root / name, dest / name, ec);
      if (ec) throw Error((root / name).string() + ": cannot move aside: " + ec.message());
    }
    if (!split.dropped.empty()) write_file_atomic((dest / "metrics.jsonl").string(), split.dropped);
    point_latest_at_newest(root);
    kept_at = "checkpoints/" + dest.filename().string() + "/";
  }
  if (split.dropped_records > 0) write_file_atomic(metrics, split.kept);

  std::string line;
  if (!later.empty())
    line = std::string("moved the later ") + (later.size() == 1 ? "checkpoint " : "checkpoints ") +
           join(later, ", ") + " of the abandoned run to " + kept_at;
  if (split.dropped_records > 0) {
    line += (line.empty() ? "" : "; ") + std::string("dropped ") + std::to_string(split.dropped_records) +
            (split.dropped_records == 1 ? " metrics.jsonl record" : " metrics.jsonl records") + " after step " +
            std::to_string(step);
    if (!later.empty()) line += " (copied to " + kept_at + "metrics.jsonl)";
  }
  return line;
}

std::string finished_message(const std::string& checkpoint, int64_t step, int64_t steps) {
  return checkpoint + ": the run is finished (step " + std::to_string(step) + ", run.steps = " +
         std::to_string(steps) + "); nothing to do. To train further, raise run.steps (e.g. --set run.steps=" +
         std::to_string(2 * std::max<int64_t>(step, 1)) +
         " --resume --override-schedule): the lr schedule then changes where its decay follows run.steps "
         "(lr_schedule.decay_steps = 0), which a resume refuses without --override-schedule (the lr goes back up to the longer schedule's "
         "value at step " +
         std::to_string(step) + "); or set lr_schedule.decay_steps = " + std::to_string(steps) +
         " to keep the finished decay and go on at min_lr";
}

}  // namespace weft
