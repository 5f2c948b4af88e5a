// `weft eval --checkpoint DIR... --text FILE`: one JSON line per checkpoint
// with the mean loss (and perplexity) over the file's samples, cut by the
// checkpoint's data plugin so documents split as in training.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "checkpoint.hpp"
#include "commands.hpp"
#include "runtime.hpp"
#include "weft/dataset.hpp"

namespace weft::cli {

namespace {

// The recipe's data options with `files` = the text file (and no byte limit).
// A data plugin without `files` (synthetic) gives way to "text" with its defaults.
Options eval_data_options(const Recipe& recipe, const Registry& registry, const std::string& text_file,
                          std::string& plugin) {
  const RecipeSection& data = recipe.section("data");
  auto has_files = [](const FactoryRecord* r) {
    for (const OptionSpec& spec : r->schema)
      if (spec.key == "files" && spec.type == OptType::StringList) return true;
    return false;
  };
  const FactoryRecord* record = registry.find("dataset", data.plugin);
  std::map<std::string, Options::Entry> entries;
  if (record && has_files(record)) {
    plugin = data.plugin;
    entries = data.options.entries();
  } else {
    plugin = "text";
    record = registry.find("dataset", plugin);
    if (!record || !has_files(record))
      throw Error("--text " + text_file + ": the checkpoint's data plugin '" + data.plugin +
                  "' reads no files and the 'text' plugin is not installed");
    for (const OptionSpec& spec : record->schema) entries[spec.key] = Options::Entry{spec.default_value, {}};
  }
  SourcePos at{"--text " + text_file, 0, 0};
  entries["files"] = Options::Entry{std::vector<std::string>{text_file}, at};
  if (entries.count("max_bytes")) entries["max_bytes"] = Options::Entry{int64_t{0}, at};
  return Options("data", std::move(entries), at);
}

// Mean loss over every sample of the dataset's first epoch (non-overlapping
// windows: the order does not change the mean).
double mean_loss(ModelStack& stack, const Dataset& dataset, int64_t batch) {
  Backend& backend = *stack.backend;
  const int64_t T = stack.model->summary().seq_length, n = dataset.size();
  std::vector<Module*> layers = stack.model->layers();
  std::vector<int32_t> sample(T + 1);
  double loss_sum = 0;
  for (int64_t i0 = 0; i0 < n; i0 += batch) {
    const int64_t B = std::min(batch, n - i0);
    std::vector<int32_t> ids(B * T), targets(B * T);
    for (int64_t b = 0; b < B; ++b) {
      dataset.sample(i0 + b, sample.data());
      std::copy(sample.begin(), sample.begin() + T, ids.begin() + b * T);
      std::copy(sample.begin() + 1, sample.end(), targets.begin() + b * T);
    }
    Context ctx(backend, 0);
    Tensor x = backend.alloc({B, T}, DType::I32, MemCategory::Workspace);
    ctx.targets = backend.alloc({B, T}, DType::I32, MemCategory::Workspace);
    backend.copy_from_host(x, ids.data());
    backend.copy_from_host(ctx.targets, targets.data());
    for (Module* layer : layers) x = layer->forward(ctx, x);
    loss_sum += backend.sum(x.data<float>(), x.numel());
  }
  return loss_sum / static_cast<double>(n * T);
}

// %.17g reads back bit-exactly; JSON has no NaN or infinity.
std::string json_float(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// One checkpoint's JSON line.
std::string eval_one(const std::string& checkpoint, const std::string& text_file, Plugins& plugins) {
  ModelStack stack;
  Recipe recipe;
  CheckpointMeta meta = build_stack_from_checkpoint(stack, checkpoint, plugins.registry, plugins.scan, recipe);
  std::string plugin;
  Options options = eval_data_options(recipe, plugins.registry, text_file, plugin);
  DatasetEnv denv;
  denv.tokenizer = stack.tokenizer.get();
  denv.seq_length = stack.model->summary().seq_length;
  denv.vocab_size = stack.model->summary().vocab;
  denv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  auto dataset = plugins.registry.factory<Dataset>(plugin)(options, denv);

  const int64_t batch = std::max<int64_t>(1, recipe.options("batch").get_int("micro"));
  const double loss = mean_loss(stack, *dataset, batch);
  const int64_t T = denv.seq_length, windows = dataset->size();
  return "{\"checkpoint\": " + nlohmann::json(resolve_checkpoint_dir(checkpoint)).dump() +
         ", \"step\": " + std::to_string(meta.step) + ", \"loss\": " + json_float(loss) +
         ", \"perplexity\": " + json_float(std::exp(loss)) + ", \"tokens\": " + std::to_string(windows * T) +
         ", \"windows\": " + std::to_string(windows) + ", \"seq_length\": " + std::to_string(T) + "}";
}

}  // namespace

int cmd_eval(const std::vector<std::string>& checkpoints, const std::string& text_file) {
  Plugins plugins;
  load_default_plugins(plugins);
  for (const std::string& checkpoint : checkpoints) {
    std::string line = eval_one(checkpoint, text_file, plugins);
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace weft::cli
