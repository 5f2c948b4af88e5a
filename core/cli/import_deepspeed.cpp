// `weft import deepspeed ds_config.json [-- FLAGS...]` and Megatron's
// `--deepspeed_config`: a DeepSpeed JSON config's entries as recipe keys.
// Every entry weft takes is written here with its key; the batch sizes are
// checked against the layout by import_megatron.cpp (DeepSpeed's identity
// train_batch = micro x accumulation x data).
#include <cmath>
#include <nlohmann/json.hpp>
#include <cstdio>
#include <cstdlib>

#include "import.hpp"
#include "weft/error.hpp"
#include "weft/file.hpp"

namespace weft::cli {

namespace {

using nlohmann::json;

// The JSON value as the text the recipe key is typed from.
std::string text_of(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) {
    // The shortest text that reads back to the same double.
    char buf[40];
    for (int precision = 6; precision <= 17; ++precision) {
      std::snprintf(buf, sizeof buf, "%.*g", precision, v.get<double>());
      if (std::strtod(buf, nullptr) == v.get<double>()) break;
    }
    return buf;
  }
  return v.dump();
}

bool is_auto(const json& v) { return v.is_string() && v.get<std::string>() == "auto"; }

struct Reader {
  std::string file;
  RecipeDraft& d;

  std::string src(const std::string& entry, const json& v) const { return file + ": " + entry + " = " + v.dump(); }
  int64_t integer(const std::string& entry, const json& v) const {
    if (!v.is_number_integer() && !v.is_number_unsigned())
      throw Error(src(entry, v) + ": expected an integer");
    return v.get<int64_t>();
  }
  void set(const std::string& target, const std::string& entry, const json& v) const {
    if (is_auto(v)) {
      d.unmapped(src(entry, v), "\"auto\" is filled in by the Hugging Face trainer; give the flag instead", false);
      return;
    }
    d.set(target, text_of(v), src(entry, v));
  }
  void ignore(const std::string& entry, const json& v, const std::string& why) const {
    d.unmapped(src(entry, v), "ignored: " + why, false);
  }
  void not_taken(const std::string& entry, const json& v, const std::string& why) const {
    d.unmapped(src(entry, v), "not taken: " + why);
  }
};

void read_optimizer(const Reader& r, const json& opt) {
  const std::string type = opt.value("type", "");
  const json params = opt.value("params", json::object());
  const json type_v = opt.value("type", json());
  if (type == "Adam" || type == "AdamW" || type == "FusedAdam") {
    if (params.contains("adam_w_mode") && params.at("adam_w_mode") == false)
      r.not_taken("optimizer.params.adam_w_mode", params.at("adam_w_mode"), "weft's adamw decays weights decoupled");
    r.d.set("optimizer.plugin", "adamw", r.src("optimizer.type", type_v));
  } else if (type == "SGD") {
    r.d.set("optimizer.plugin", "sgd", r.src("optimizer.type", type_v));
  } else {
    r.not_taken("optimizer.type", type_v, "optimizers in this version: Adam/AdamW, SGD");
    return;
  }
  for (const auto& [key, v] : params.items()) {
    const std::string entry = "optimizer.params." + key;
    if (key == "lr") r.set("optimizer.lr", entry, v);
    else if (key == "eps") r.set("optimizer.eps", entry, v);
    else if (key == "weight_decay") r.set("optimizer.weight_decay", entry, v);
    else if (key == "momentum") r.set("optimizer.momentum", entry, v);
    else if (key == "betas" && v.is_array() && v.size() == 2) {
      r.set("optimizer.beta1", entry + "[0]", v[0]);
      r.set("optimizer.beta2", entry + "[1]", v[1]);
    } else if (key == "adam_w_mode" || key == "torch_adam") {
    } else r.not_taken(entry, v, "not an option of weft's optimizer");
  }
}

void read_scheduler(const Reader& r, const json& sched) {
  const std::string type = sched.value("type", "");
  const json params = sched.value("params", json::object());
  const json type_v = sched.value("type", json());
  if (type == "WarmupLR") r.d.set("lr_schedule.plugin", "constant", r.src("scheduler.type", type_v));
  else if (type == "WarmupDecayLR") r.d.set("lr_schedule.plugin", "linear", r.src("scheduler.type", type_v));
  else if (type == "WarmupCosineLR") r.d.set("lr_schedule.plugin", "cosine", r.src("scheduler.type", type_v));
  else {
    r.not_taken("scheduler.type", type_v, "schedules in this version: WarmupLR, WarmupDecayLR, WarmupCosineLR");
    return;
  }
  for (const auto& [key, v] : params.items()) {
    const std::string entry = "scheduler.params." + key;
    if (key == "warmup_num_steps") r.set("lr_schedule.warmup_steps", entry, v);
    else if (key == "total_num_steps") r.set("lr_schedule.decay_steps", entry, v);
    else if (key == "warmup_max_lr") r.set("optimizer.lr", entry, v);
    else if (key == "warmup_min_lr") r.set("lr_schedule.warmup_init_lr", entry, v);
    else if (key == "cos_min_ratio" && v.is_number()) {
      // min_lr = ratio x the optimizer's lr, which the optimizer section gives.
      const json* lr = nullptr;
      if (params.contains("warmup_max_lr")) lr = &params.at("warmup_max_lr");
      if (lr && lr->is_number())
        r.d.set("lr_schedule.min_lr", text_of(json(v.get<double>() * lr->get<double>())),
                r.src(entry, v) + " x warmup_max_lr");
      else
        r.d.unmapped(r.src(entry, v), "not taken: needs scheduler.params.warmup_max_lr to give min_lr");
    } else if (key == "warmup_type" && v == "linear") {
    } else r.not_taken(entry, v, "not an option of weft's lr schedules");
  }
}

void read_precision(const Reader& r, const std::string& name, const json& section) {
  if (!section.contains("enabled") || section.at("enabled") != true) return;
  r.d.set("precision.plugin", name, r.src(name + ".enabled", section.at("enabled")));
  for (const auto& [key, v] : section.items()) {
    const std::string entry = name + "." + key;
    if (key == "enabled" || key == "auto_cast") continue;
    if (key == "loss_scale" && v.is_number()) {
      if (v.get<double>() != 0) {  // 0 = dynamic
        r.set("precision.initial_scale", entry, v);
        r.d.set("precision.growth_factor", "1.0", r.src(entry, v) + " (static)");
        r.d.set("precision.backoff_factor", "1.0", r.src(entry, v) + " (static)");
      }
    } else if (key == "initial_scale_power" && v.is_number()) {
      r.d.set("precision.initial_scale", text_of(json(std::ldexp(1.0, v.get<int>()))), r.src(entry, v) + " (2^power)");
    } else if (key == "loss_scale_window") r.set("precision.growth_interval", entry, v);
    else if (key == "hysteresis") r.set("precision.hysteresis", entry, v);
    else if (key == "min_loss_scale") r.set("precision.min_scale", entry, v);
    else r.not_taken(entry, v, "not an option of weft's precision plugins");
  }
}

void read_zero(const Reader& r, const json& zero) {
  for (const auto& [key, v] : zero.items()) {
    const std::string entry = "zero_optimization." + key;
    if (key == "stage") {
      const int64_t stage = r.integer(entry, v);
      if (stage == 0 || stage == 1) {
        r.d.set("parallel.data_parallel.plugin", stage == 0 ? "ddp" : "zero1", r.src(entry, v));
      } else {
        throw Error(r.src(entry, v) + ": ZeRO stage " + std::to_string(stage) + " (" +
                    (stage == 2 ? "sharded gradients" : stage == 3 ? "sharded parameters" : "unknown") +
                    ") is not available in this version: stage 1 is parallel.data_parallel.plugin = \"zero1\", "
                    "stage 0 \"ddp\"");
      }
    } else if (key == "reduce_bucket_size" && v.is_number()) {
      // DeepSpeed counts elements; weft's bucket_mb counts MiB of fp32 gradients.
      const double mb = v.get<double>() * 4.0 / (1 << 20);
      r.d.set("parallel.data_parallel.bucket_mb", text_of(json(mb)),
              r.src(entry, v) + " elements x 4 bytes");
    } else {
      r.ignore(entry, v, "a ZeRO communication setting; weft's zero1 reduce-scatters buckets as they finish");
    }
  }
}

void read_config(const Reader& r, const json& config, DeepSpeedBatch& batch);

}  // namespace

void import_deepspeed_config(const std::string& path, RecipeDraft& draft, DeepSpeedBatch& batch) {
  // Regular files only, at most 16 MiB: a FIFO or a device never hangs the import.
  const std::string text = read_input_file(path, 16u << 20);
  json config;
  try {
    config = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path + ": not JSON: " + e.what());
  }
  if (!config.is_object()) throw Error(path + ": a DeepSpeed config is a JSON object");
  const Reader r{path, draft};
  batch.file = path;
  try {
    read_config(r, config, batch);
  } catch (const json::exception& e) {  // a value of the wrong JSON type
    throw Error(path + ": " + e.what());
  }
}

namespace {

void read_config(const Reader& r, const json& config, DeepSpeedBatch& batch) {
  for (const auto& [key, v] : config.items()) {
    if (key == "train_batch_size") {
      if (!is_auto(v)) batch.train_batch = r.integer(key, v);
    } else if (key == "train_micro_batch_size_per_gpu") {
      if (!is_auto(v)) batch.micro = r.integer(key, v);
    } else if (key == "gradient_accumulation_steps") {
      if (!is_auto(v)) batch.accumulation = r.integer(key, v);
    } else if (key == "gradient_clipping") {
      r.set("optimizer.clip_grad_norm", key, v);
    } else if (key == "optimizer" && v.is_object()) {
      read_optimizer(r, v);
    } else if (key == "scheduler" && v.is_object()) {
      read_scheduler(r, v);
    } else if ((key == "bf16" || key == "fp16") && v.is_object()) {
      read_precision(r, key, v);
    } else if (key == "zero_optimization" && v.is_object()) {
      read_zero(r, v);
    } else if (key == "steps_per_print") {
      r.set("log.interval", key, v);
    } else if (key == "wall_clock_breakdown" || key == "zero_allow_untested_optimizer" ||
               key == "activation_checkpointing" || key == "flops_profiler" || key == "tensorboard" ||
               key == "wandb" || key == "comms_logger" || key == "dump_state") {
      r.ignore(key, v, "logging or a DeepSpeed implementation setting");
    } else {
      r.not_taken(key, v, "not a DeepSpeed entry weft import knows");
    }
  }
}

}  // namespace

}  // namespace weft::cli
