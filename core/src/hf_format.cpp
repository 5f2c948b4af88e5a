#include "hf_format.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint.hpp"
#include "safetensors.hpp"
#include "weft/file.hpp"
#include "weft/params.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace weft {

namespace {

constexpr uint64_t kMaxConfigBytes = 16u << 20;

// The Hugging Face shape of a tensor whose weft (logical) shape is `logical`:
// the first t.rows rows, then transposed for a Conv1D matrix.
Shape hf_shape(const HfTensor& t, Shape logical) {
  if (t.rows > 0) {
    WEFT_ASSERT(!logical.empty() && logical[0] >= t.rows, t.param + ": fewer rows than the layout keeps");
    logical[0] = t.rows;
  }
  if (t.transpose) {
    WEFT_ASSERT(logical.size() == 2, t.param + ": only a matrix can be transposed");
    std::swap(logical[0], logical[1]);
  }
  return logical;
}

// values [rows, cols] row-major -> [cols, rows].
std::vector<float> transposed(const std::vector<float>& values, int64_t rows, int64_t cols) {
  std::vector<float> out(values.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = values[r * cols + c];
  return out;
}

// The same JSON value; numbers compare to float precision (rel 1e-6), so a
// config.json's 1e-06 equals a recipe's float 1e-6.
bool same_value(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_number_integer() && b.is_number_integer()) return a.get<int64_t>() == b.get<int64_t>();
    const double x = a.get<double>(), y = b.get<double>();
    return std::abs(x - y) <= 1e-6 * std::max(std::abs(x), std::abs(y));
  }
  return a == b;
}

json parse_entry(const std::string& text, const std::string& key) {
  try {
    return json::parse(text);
  } catch (const json::exception&) {
    WEFT_ASSERT(false, "config.json '" + key + "': the model gave no JSON value: " + text);
  }
  return {};
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

void write_hf_folder(const std::string& out_dir, const HfLayout& layout, const std::string& weft_model_file) {
  SafetensorsReader ck(weft_model_file);
  std::set<std::string> named;
  std::vector<std::pair<std::string, Shape>> out_layout;
  for (const HfTensor& t : layout.tensors) {
    if (!ck.has(t.param)) throw Error(weft_model_file + ": missing tensor '" + t.param + "'");
    named.insert(t.param);
    out_layout.push_back({t.hf, hf_shape(t, ck.shape(t.param))});
  }
  for (const std::string& name : ck.names())
    if (!named.count(name))
      throw Error(weft_model_file + ": tensor '" + name + "' has no Hugging Face name in the " +
                  layout.architecture + " layout");

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(out_dir + ": cannot create the folder: " + ec.message());
  std::string config = "{\n  \"architectures\": [" + json(layout.architecture).dump() + "]";
  for (const HfConfigEntry& e : layout.config)
    config += ",\n  " + json(e.key).dump() + ": " + parse_entry(e.json, e.key).dump();
  write_file_atomic((fs::path(out_dir) / "config.json").string(), config + "\n}\n");

  SafetensorsWriter out((fs::path(out_dir) / "model.safetensors").string(), out_layout, {{"format", "pt"}});
  for (const HfTensor& t : layout.tensors) {
    Shape shape = ck.shape(t.param);
    std::vector<float> values = ck.read(t.param);
    if (t.rows > 0) {
      values.resize(static_cast<size_t>(shape_numel(shape) / shape[0] * t.rows));
      shape[0] = t.rows;
    }
    if (t.transpose) values = transposed(values, shape[0], shape[1]);
    out.write(t.hf, values);
  }
  out.finish();
}

void check_hf_folder(const std::string& dir, const HfLayout& layout, const std::vector<Param*>& params,
                     const std::string& model_plugin) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir + ": not a folder (init_from takes a Hugging Face folder)");
  json cfg;
  try {
    cfg = json::parse(read_input_file(config_path, kMaxConfigBytes));
  } catch (const json::exception& e) {
    throw Error(config_path + ": malformed: " + e.what());
  }
  if (!cfg.is_object()) throw Error(config_path + ": not a JSON object");
  auto arch = cfg.find("architectures");
  if (arch == cfg.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    throw Error(config_path + ": key 'architectures': expected a list naming the architecture");
  const std::string name = (*arch)[0].get<std::string>();
  if (std::find(layout.readable.begin(), layout.readable.end(), name) == layout.readable.end())
    throw Error(config_path + ": unsupported architecture '" + name + "' (the " + model_plugin + " model reads " +
                join(layout.readable) + ")");
  if (name != layout.architecture)
    throw Error(config_path + ": architecture '" + name + "', the recipe's " + model_plugin + " model is " +
                layout.architecture);
  for (const HfConfigEntry& e : layout.config) {
    if (!e.must_match) continue;
    const json want = parse_entry(e.json, e.key);
    const std::string option = e.option.empty() ? "" : " (model." + e.option + ")";
    json got;
    if (auto it = cfg.find(e.key); it != cfg.end()) {
      got = *it;
    } else if (!e.absent.empty()) {
      got = parse_entry(e.absent, e.key);
    } else {
      throw Error(config_path + ": key '" + e.key + "' is missing; the recipe's model has " + want.dump() + option);
    }
    if (!same_value(got, want))
      throw Error(config_path + ": " + e.key + " " + got.dump() + ", the recipe's model has " + want.dump() + option);
  }

  const std::string model_path = (fs::path(dir) / "model.safetensors").string();
  SafetensorsReader file(model_path);
  std::map<std::string, const Param*> by_name;
  for (const Param* p : params) by_name[p->name] = p;
  for (const HfTensor& t : layout.tensors) {
    auto it = by_name.find(t.param);
    WEFT_ASSERT(it != by_name.end(), "the Hugging Face layout names " + t.param + ", which the model lacks");
    if (!file.has(t.hf)) throw Error(model_path + ": missing tensor '" + t.hf + "' (weft's " + t.param + ")");
    const Shape want = hf_shape(t, it->second->full_shape);
    if (file.shape(t.hf) != want)
      throw Error(model_path + ": '" + t.hf + "' has shape " + shape_str(file.shape(t.hf)) + ", the model expects " +
                  shape_str(want));
    const std::string& dtype = file.dtype(t.hf);
    if (dtype != "F32" && dtype != "BF16" && dtype != "F16")
      throw Error(model_path + ": '" + t.hf + "' is " + dtype + ", expected F32, BF16 or F16");
  }
}

void read_hf_folder(const std::string& dir, const HfLayout& layout, FlatParams& flat, DataParallel* dp,
                    Backend& backend) {
  const std::string model_path = (fs::path(dir) / "model.safetensors").string();
  SafetensorsReader file(model_path);
  std::map<std::string, const HfTensor*> by_param;
  for (const HfTensor& t : layout.tensors) by_param[t.param] = &t;
  for (Param* p : flat.params) {
    auto it = by_param.find(p->name);
    WEFT_ASSERT(it != by_param.end(), p->name + ": no Hugging Face name in the model's layout");
    const HfTensor& t = *it->second;
    Shape saved = file.shape(t.hf);  // Hugging Face's orientation
    std::vector<float> values = file.read_widened(t.hf);
    if (t.transpose) {
      WEFT_ASSERT(saved.size() == 2, t.hf + ": a transposed tensor must be a matrix");
      values = transposed(values, saved[0], saved[1]);
      std::swap(saved[0], saved[1]);
    }
    std::vector<float> local = logical_to_shard(*p, saved, std::move(values), model_path + ": '" + t.hf + "'");
    if (dp)
      dp->write_master(*p, local.data());  // masters and the compute copy
    else
      copy_from_host_as(backend, p->data, local.data());
  }
}

bool check_init_from(const Recipe& recipe, Model& model, HfLayout& layout, std::string& dir) {
  const Options& options = recipe.options("model");
  if (!options.has("init_from") || options.get_string("init_from").empty()) return false;
  dir = options.get_string("init_from");
  try {
    layout = model.hugging_face();
    check_hf_folder(dir, layout, model.params(), recipe.plugin("model"));
  } catch (const Error& e) {
    options.fail("init_from", e.what());
  }
  return true;
}

std::string load_init_from(const Recipe& recipe, Model& model, FlatParams& flat, DataParallel* dp, Backend& backend) {
  HfLayout layout;
  std::string dir;
  if (!check_init_from(recipe, model, layout, dir)) return "";
  read_hf_folder(dir, layout, flat, dp, backend);
  return dir;
}

}  // namespace weft
