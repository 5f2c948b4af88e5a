// `weft import megatron` and `weft import deepspeed`: a recipe from a
// Megatron-LM launch line and/or a DeepSpeed config (docs/recipes.md#import).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "recipe_draft.hpp"

namespace weft::cli {

struct ImportArgs {
  std::vector<std::string> flags;  // Megatron flags, optionally after a launcher prefix (torchrun ... x.py)
  std::string ds_config;           // a DeepSpeed JSON config ("" = none besides --deepspeed_config)
  std::string output;              // -o FILE ("" = stdout)
  int world = 0;                   // --world (0 = from the launcher prefix, else "auto")
  bool strict = false;             // refuse flags weft does not take
};

// What the DeepSpeed config says about the batch, checked against the layout
// once the flags gave tensor and pipeline: train_batch = micro x accumulation x data.
struct DeepSpeedBatch {
  std::string file;
  std::optional<int64_t> train_batch, micro, accumulation;
};

// Maps a ds_config.json into `draft` (weft::Error with file and entry on bad input).
void import_deepspeed_config(const std::string& path, RecipeDraft& draft, DeepSpeedBatch& batch);

int cmd_import(const ImportArgs& args);

}  // namespace weft::cli
