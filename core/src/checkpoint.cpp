#include "checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "safetensors.hpp"
#include "weft/params.hpp"
#include "weft/file.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace weft {

namespace {

std::string step_name(int64_t step) { return "step_" + std::to_string(step); }

// Bounds on what meta.json may say: a step at most 10^12 (run.steps' maximum), a
// data position below 2^62, so the arithmetic on them cannot overflow.
constexpr int64_t kMaxStep = 1000000000000;
constexpr int64_t kMaxSamples = int64_t(1) << 62;
constexpr uint64_t kMaxMetaBytes = 64u << 20;
constexpr uint64_t kMaxLatestBytes = 4096;

int64_t meta_int(const json& m, const std::string& key, int64_t max, const std::string& path) {
  auto it = m.find(key);
  if (it == m.end()) throw Error(path + ": key '" + key + "' is missing");
  if (!it->is_number_integer())
    throw Error(path + ": key '" + key + "': expected an integer, got " + std::string(it->type_name()) + " " +
                it->dump());
  if (it->is_number_unsigned() ? it->get<uint64_t>() > static_cast<uint64_t>(max)
                               : it->get<int64_t>() < 0 || it->get<int64_t>() > max)
    throw Error(path + ": key '" + key + "': " + it->dump() + " is out of range (0 to " + std::to_string(max) + ")");
  return it->get<int64_t>();
}

void copy_to_host_f32(Backend& backend, const Tensor& t, float* out) {
  WEFT_ASSERT(t.dtype() == DType::F32, std::string("checkpoint: reading a ") + dtype_name(t.dtype()) + " tensor as f32");
  backend.copy_to_host(out, t);
}

std::vector<float> to_host(Backend& backend, const Tensor& t) {
  std::vector<float> out(t.numel());
  copy_to_host_f32(backend, t, out.data());
  return out;
}

bool tp_sharded(const Param& p) { return p.shard.dim >= 0 && p.shard.count > 1 && !p.tp_replicated; }

// This rank's shard values -> the logical tensor, gathered over tp (collective).
std::vector<float> gather_logical(Backend& backend, Communicator* tp, const Param& p, std::vector<float> local) {
  if (!tp_sharded(p)) return local;
  WEFT_ASSERT(tp && tp->size() == p.shard.count, p.name + ": no tp group to gather the shards over");
  const int64_t n = static_cast<int64_t>(local.size());
  Tensor mine = backend.alloc_uninitialized({n}, DType::F32, MemCategory::Workspace);
  Tensor all = backend.alloc_uninitialized({n * p.shard.count}, DType::F32, MemCategory::Workspace);
  backend.copy_from_host(mine, local.data());
  tp->all_gather(mine, all)->wait();
  std::vector<float> shards = to_host(backend, all), full(shape_numel(p.full_shape));
  gather_shards_host(p, shards.data(), full.data());
  return full;
}

// The logical tensor `name` of `file` as this rank's shard of `p`.
std::vector<float> read_shard(const SafetensorsReader& file, const std::string& path, const std::string& name,
                              const Param& p) {
  if (!file.has(name)) throw Error(path + ": missing tensor '" + name + "'");
  return logical_to_shard(p, file.shape(name), file.read(name), path + ": '" + name + "'");
}

// Moves a stage's logical tensor to the writer's stage (0) over pp; returns it on the writer.
std::vector<float> to_writer_stage(Backend& backend, const CheckpointGroups& g, int owner, int tag,
                                   std::vector<float> values, int64_t numel) {
  if (owner == 0 || !g.collects) return values;
  Tensor buf = backend.alloc_uninitialized({numel}, DType::F32, MemCategory::Workspace);
  if (g.stage == owner) {
    backend.copy_from_host(buf, values.data());
    g.pp->send(buf, 0, tag)->wait();
    return {};
  }
  if (g.stage != 0) return {};
  g.pp->recv(buf, owner, tag)->wait();
  return to_host(backend, buf);
}

// Moves an expert's logical tensor from its ep rank to ep rank 0 of the same
// stage over ep; returns it there (other tensors pass through).
std::vector<float> to_ep_root(Backend& backend, const CheckpointGroups& g, const Param& p, bool stage_holds, int tag,
                              std::vector<float> values, int64_t numel) {
  if (!p.expert || p.ep_owner == 0 || !g.ep_collects || !stage_holds) return values;
  Tensor buf = backend.alloc_uninitialized({numel}, DType::F32, MemCategory::Workspace);
  if (g.ep_rank == p.ep_owner) {
    backend.copy_from_host(buf, values.data());
    g.ep->send(buf, 0, tag)->wait();
    return {};
  }
  if (g.ep_rank != 0) return {};
  g.ep->recv(buf, p.ep_owner, tag)->wait();
  return to_host(backend, buf);
}

}  // namespace

std::vector<float> logical_to_shard(const Param& p, const Shape& saved, std::vector<float> full,
                                    const std::string& what) {
  if (saved != p.full_shape) {
    const bool other_padding = p.vocab_rows > 0 && saved.size() == p.full_shape.size() && !saved.empty() &&
                               saved[0] >= p.vocab_rows &&
                               std::equal(saved.begin() + 1, saved.end(), p.full_shape.begin() + 1);
    if (!other_padding)
      throw Error(what + " has shape " + shape_str(saved) + ", the model expects " + shape_str(p.full_shape));
    const int64_t row = shape_numel(saved) / saved[0];
    std::vector<float> resized(shape_numel(p.full_shape), 0.f);
    const int64_t rows = std::min(saved[0], p.full_shape[0]);
    std::copy(full.begin(), full.begin() + rows * row, resized.begin());
    full = std::move(resized);
  }
  if (!tp_sharded(p)) return full;
  std::vector<float> local(shape_numel(p.shape));
  slice_shard_host(p, full.data(), local.data());
  return local;
}

std::string write_checkpoint(const std::string& out_dir, const CheckpointMeta& meta, const Recipe& recipe,
                             FlatParams& flat, DataParallel* dp, int state_slots, Backend& backend, bool writer,
                             const CheckpointGroups& g, std::shared_ptr<AlignedBytesPool> buffers) {
  auto commit = collect_checkpoint(out_dir, meta, recipe, flat, dp, state_slots, backend, writer, g, false, buffers);
  return writer ? commit() : (fs::path(out_dir) / "checkpoints" / step_name(meta.step)).string();
}

std::function<std::string()> collect_checkpoint(const std::string& out_dir, const CheckpointMeta& meta,
                                                const Recipe& recipe, FlatParams& flat, DataParallel* dp,
                                                int state_slots, Backend& backend, bool writer,
                                                const CheckpointGroups& g, bool buffered,
                                                std::shared_ptr<AlignedBytesPool> buffers) {
  // Optimizer state may be sharded over dp (zero1), tensors over tp, layers
  // over pipeline stages: collecting them is collective, so every rank walks
  // every parameter of the model in the same order.
  const std::vector<Param*>& all = g.all_params.empty() ? flat.params : g.all_params;
  fs::path root = fs::path(out_dir) / "checkpoints";
  fs::path final_dir = root / step_name(meta.step);
  fs::path tmp_dir = root / (step_name(meta.step) + ".tmp." + std::to_string(::getpid()));

  // The writer streams each tensor to its file as soon as it is collected:
  // besides the model, the host holds one tensor (and its shards) at a time.
  // A save that fails (a full disk) leaves no half-written folder behind;
  // `latest` still names the previous checkpoint.
  struct RemoveUnlessDone {
    fs::path dir;
    ~RemoveUnlessDone() {
      std::error_code ec;
      if (!dir.empty()) fs::remove_all(dir, ec);
    }
  };
  auto unfinished = std::make_shared<RemoveUnlessDone>(RemoveUnlessDone{writer ? tmp_dir : fs::path()});
  std::shared_ptr<SafetensorsWriter> model_file, state_file;
  if (writer) {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    fs::create_directories(tmp_dir, ec);
    if (ec) throw Error(tmp_dir.string() + ": cannot create checkpoint folder: " + ec.message());
    std::vector<std::pair<std::string, Shape>> params_layout, state_layout;
    for (Param* p : all) {
      params_layout.push_back({p->name, p->full_shape});
      for (int s = 0; dp && s < state_slots; ++s) state_layout.push_back({p->name + ".slot" + std::to_string(s), p->full_shape});
    }
    const std::map<std::string, std::string> format{{"format", "weft"}};
    if (!buffers) buffers = std::make_shared<AlignedBytesPool>();  // one pool for both files
    model_file = std::make_shared<SafetensorsWriter>((tmp_dir / "model.safetensors").string(), params_layout, format,
                                                     buffered, buffers);
    if (dp)
      state_file = std::make_shared<SafetensorsWriter>((tmp_dir / "optimizer.safetensors").string(), state_layout,
                                                       format, buffered, buffers);
  }
  int tag = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    Param* p = all[i];
    const int owner = g.owner_stage.empty() ? 0 : g.owner_stage[i];
    const bool stage_holds = owner == g.stage;
    const bool mine = stage_holds && (!p->expert || p->ep_owner == g.ep_rank);
    const int64_t numel = shape_numel(p->full_shape);
    // The writer's own whole tensors (no shards to gather, nothing to receive)
    // go from the backend straight into the file's buffer: no further copy
    // on their way to the disk.
    const bool direct = writer && mine && !tp_sharded(*p) && owner == 0 && (!p->expert || p->ep_owner == 0);
    if (direct) {
      AlignedBytes buffer = model_file->next_buffer();
      float* out = reinterpret_cast<float*>(buffer.data());
      if (dp)
        dp->read_master(*p, out);  // fp32 masters under mixed precision
      else
        copy_to_host_f32(backend, p->data, out);
      model_file->write(p->name, std::move(buffer));
      tag += 2;
    } else {
      std::vector<float> values;
      if (mine) {
        std::vector<float> local(p->data.numel());
        if (dp)
          dp->read_master(*p, local.data());
        else
          local = to_host(backend, p->data);
        values = gather_logical(backend, g.tp, *p, std::move(local));
      }
      values = to_ep_root(backend, g, *p, stage_holds, tag++ % 32749, std::move(values), numel);
      values = to_writer_stage(backend, g, owner, tag++ % 32749, std::move(values), numel);
      if (writer) model_file->write(p->name, values);
    }
    for (int s = 0; dp && s < state_slots; ++s) {
      const std::string name = p->name + ".slot" + std::to_string(s);
      if (direct) {
        AlignedBytes buffer = state_file->next_buffer();
        dp->read_state(*p, s, reinterpret_cast<float*>(buffer.data()));
        state_file->write(name, std::move(buffer));
        tag += 2;
        continue;
      }
      std::vector<float> slot;
      if (mine) {
        std::vector<float> local(p->data.numel());
        dp->read_state(*p, s, local.data());
        slot = gather_logical(backend, g.tp, *p, std::move(local));
      }
      slot = to_ep_root(backend, g, *p, stage_holds, tag++ % 32749, std::move(slot), numel);
      slot = to_writer_stage(backend, g, owner, tag++ % 32749, std::move(slot), numel);
      if (writer) state_file->write(name, slot);
    }
  }
  if (!writer) return {};
  json shapes = json::object();
  for (Param* p : all) shapes[p->name] = p->full_shape;
  const ParallelSizes& s = recipe.sizes;
  json m = {{"format", "weft-checkpoint"},
            {"version", 1},
            {"step", meta.step},
            {"samples_consumed", meta.samples_consumed},
            {"seed", meta.seed},
            {"layout", {{"tensor", s.tp}, {"pipeline", s.pp}, {"data", s.dp}, {"expert", s.ep}, {"world", recipe.world}}},
            {"model", recipe.plugin("model")},
            {"optimizer", recipe.plugin("optimizer")},
            {"optimizer_state_slots", dp ? state_slots : 0},
            {"params", shapes}};
  if (meta.global_batch > 0) m["global_batch"] = meta.global_batch;
  if (!meta.schedule.empty()) m["lr_schedule"] = meta.schedule;
  if (!meta.precision_state.empty()) {
    m["precision"] = recipe.plugin("precision");
    m["precision_state"] = meta.precision_state;
  }
  return [model_file, state_file, unfinished, tmp_dir, final_dir, meta_text = m.dump(2) + "\n",
          recipe_text = recipe.to_toml()] {
    model_file->finish();
    if (state_file) state_file->finish();
    write_file_atomic((tmp_dir / "meta.json").string(), meta_text);
    write_file_atomic((tmp_dir / "recipe.toml").string(), recipe_text);
    std::error_code ec;
    fs::remove_all(final_dir, ec);
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) throw Error(final_dir.string() + ": cannot move checkpoint into place: " + ec.message());
    unfinished->dir.clear();
    return final_dir.string();
  };
}

void publish_latest(const std::string& out_dir, int64_t step, int64_t keep) {
  fs::path root = fs::path(out_dir) / "checkpoints";
  write_file_atomic((root / "latest").string(), step_name(step) + "\n");
  if (keep <= 0) return;
  std::vector<int64_t> steps = list_step_dirs(root.string());
  std::error_code ec;
  for (size_t i = 0; i + keep < steps.size(); ++i)
    if (steps[i] != step) fs::remove_all(root / step_name(steps[i]), ec);
}

std::optional<int64_t> parse_step_name(const std::string& name) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const char* begin = name.data() + prefix.size();
  const char* end = name.data() + name.size();
  if (*begin == '0' && end - begin > 1) return std::nullopt;
  int64_t n = 0;
  auto [stop, err] = std::from_chars(begin, end, n);
  if (err != std::errc() || stop != end || *begin < '0' || *begin > '9') return std::nullopt;
  return n;
}

std::vector<int64_t> list_step_dirs(const std::string& root) {
  std::vector<int64_t> steps;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    std::optional<int64_t> n = parse_step_name(it->path().filename().string());
    if (n && it->is_directory(type_ec) && !it->is_symlink(type_ec)) steps.push_back(*n);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string resolve_checkpoint_dir(const std::string& path) {
  fs::path p = path;
  std::error_code ec;
  if (!fs::exists(p, ec)) throw Error(path + ": checkpoint not found");
  if (fs::exists(p / "meta.json", ec)) return p.string();
  for (fs::path root : {p, p / "checkpoints"}) {
    fs::path latest = root / "latest";
    if (fs::exists(fs::symlink_status(latest, ec))) {
      std::string name = read_input_file(latest.string(), kMaxLatestBytes);
      while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
      fs::path dir = root / name;
      if (!parse_step_name(name) || !fs::exists(dir / "meta.json", ec))
        throw Error(latest.string() + ": points at '" + name.substr(0, 80) + "', which is not a checkpoint");
      return dir.string();
    }
  }
  throw Error(path + ": not a checkpoint (no meta.json, no checkpoints/latest)");
}

CheckpointMeta read_checkpoint_meta(const std::string& step_dir) {
  const std::string path = (fs::path(step_dir) / "meta.json").string();
  json m;
  try {
    m = json::parse(read_input_file(path, kMaxMetaBytes));
  } catch (const json::exception& e) {
    throw Error(path + ": malformed: " + e.what());
  }
  if (!m.is_object()) throw Error(path + ": not a JSON object");
  CheckpointMeta meta;
  meta.step = meta_int(m, "step", kMaxStep, path);
  meta.samples_consumed = meta_int(m, "samples_consumed", kMaxSamples, path);
  auto seed = m.find("seed");
  if (seed == m.end() || !seed->is_number_unsigned())
    throw Error(path + ": key 'seed': expected an integer >= 0");
  meta.seed = seed->get<uint64_t>();
  if (m.contains("global_batch")) meta.global_batch = meta_int(m, "global_batch", kMaxSamples, path);
  // The schedule's settings: strings by key, compared on resume.
  if (auto sch = m.find("lr_schedule"); sch != m.end()) {
    if (!sch->is_object()) throw Error(path + ": key 'lr_schedule': expected an object of strings");
    for (auto it = sch->begin(); it != sch->end(); ++it) {
      if (!it.value().is_string())
        throw Error(path + ": key 'lr_schedule." + it.key() + "': expected a string");
      meta.schedule[it.key()] = it.value().get<std::string>();
    }
  }
  auto ps = m.find("precision_state");
  if (ps != m.end()) {
    if (!ps->is_object()) throw Error(path + ": key 'precision_state': expected an object");
    for (auto it = ps->begin(); it != ps->end(); ++it) {
      if (!it->is_number()) throw Error(path + ": key 'precision_state." + it.key() + "': expected a number");
      meta.precision_state[it.key()] = it->get<double>();
    }
  }
  return meta;
}

CheckpointMeta read_checkpoint(const std::string& step_dir, FlatParams& flat, DataParallel* dp, int state_slots,
                               Backend& backend) {
  fs::path dir = step_dir;
  CheckpointMeta meta = read_checkpoint_meta(step_dir);
  const std::string model_path = (dir / "model.safetensors").string();
  SafetensorsReader model(model_path);
  for (Param* p : flat.params) {
    std::vector<float> values = read_shard(model, model_path, p->name, *p);
    if (dp)
      dp->write_master(*p, values.data());  // masters and the compute copy
    else
      copy_from_host_as(backend, p->data, values.data());
  }
  if (dp && state_slots > 0) {
    const std::string opt_path = (dir / "optimizer.safetensors").string();
    SafetensorsReader opt(opt_path);
    for (Param* p : flat.params) {
      for (int s = 0; s < state_slots; ++s) {
        std::vector<float> values = read_shard(opt, opt_path, p->name + ".slot" + std::to_string(s), *p);
        dp->write_state(*p, s, values.data());
      }
    }
  }
  return meta;
}

}  // namespace weft
