// `weft export --checkpoint DIR --format hf OUT`: a checkpoint's fp32 weights
// as a Hugging Face transformers folder (config.json + model.safetensors) in
// the layout the model plugin gives (Model::hugging_face; docs/checkpoints.md).
#include <cstdio>
#include <filesystem>

#include "checkpoint.hpp"
#include "commands.hpp"
#include "hf_format.hpp"
#include "runtime.hpp"

namespace weft::cli {

int cmd_export(const std::string& checkpoint, const std::string& format, const std::string& out_dir) {
  if (format != "hf") throw Error("export --format " + format + ": unknown format (hf)");
  const std::string step_dir = resolve_checkpoint_dir(checkpoint);
  const CheckpointMeta meta = read_checkpoint_meta(step_dir);
  Plugins plugins;
  load_default_plugins(plugins);
  const Recipe recipe = load_checkpoint_recipe(step_dir, plugins.registry, plugins.scan);
  const std::unique_ptr<Model> model = build_serial_model(recipe, plugins.registry);
  HfLayout layout;
  try {
    layout = model->hugging_face();
  } catch (const Error& e) {
    throw Error(step_dir + ": cannot export the " + recipe.plugin("model") + " model to Hugging Face: " + e.what());
  }
  write_hf_folder(out_dir, layout, (std::filesystem::path(step_dir) / "model.safetensors").string());
  std::printf("exported %s (step %lld) as %s to %s\n", step_dir.c_str(), static_cast<long long>(meta.step),
              layout.architecture.c_str(), out_dir.c_str());
  return 0;
}

}  // namespace weft::cli
