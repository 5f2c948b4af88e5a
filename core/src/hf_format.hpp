// Hugging Face folders (docs/checkpoints.md#hugging-face-transformers):
// config.json + model.safetensors in the layout a model plugin describes
// (Model::hugging_face). `weft export --format hf` writes them from a
// checkpoint; `[model] init_from` loads them into a fresh run.
#pragma once

#include <string>
#include <vector>

#include "weft/grad_sync.hpp"
#include "weft/model.hpp"
#include "weft/recipe.hpp"

namespace weft {

// Writes out_dir/config.json and out_dir/model.safetensors (F32, metadata
// format "pt") from a weft model.safetensors: each layout tensor by its
// Hugging Face name, transposed or cut to its first rows as the layout says.
// Throws weft::Error when the checkpoint holds a tensor the layout does not name.
void write_hf_folder(const std::string& out_dir, const HfLayout& layout, const std::string& weft_model_file);

// Refuses (weft::Error, one line naming the file, the key or tensor and both
// values) a folder that does not hold `layout` for `params` (every logical
// parameter of the model): an unsupported or other architecture, a
// config.json value that differs, a missing tensor, a tensor of another shape.
// `model_plugin` names the recipe's model plugin in messages.
void check_hf_folder(const std::string& dir, const HfLayout& layout, const std::vector<Param*>& params,
                     const std::string& model_plugin);

// Loads this rank's parameters (flat.params, each its shard of the logical
// tensor) from the folder, through dp->write_master as a checkpoint loads
// (dp null: into the compute copy). Vocabulary rows the file lacks start at 0.
void read_hf_folder(const std::string& dir, const HfLayout& layout, FlatParams& flat, DataParallel* dp,
                    Backend& backend);

// `[model] init_from`: when the recipe sets it, checks the folder against
// `model` (check_hf_folder; refusals name model.init_from) and returns its
// Hugging Face layout with the folder in `dir`; false when the recipe has none.
bool check_init_from(const Recipe& recipe, Model& model, HfLayout& layout, std::string& dir);

// `[model] init_from`: when the recipe sets it, checks the folder against the
// model (check_hf_folder; refusals name model.init_from) and loads this
// rank's parameters from it (read_hf_folder). Returns the folder, or "" when
// the recipe has no init_from.
std::string load_init_from(const Recipe& recipe, Model& model, FlatParams& flat, DataParallel* dp, Backend& backend);

}  // namespace weft
