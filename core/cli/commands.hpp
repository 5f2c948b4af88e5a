// The `weft` subcommands. Each returns the process exit code; weft::Error
// escaping them is printed as one line by main() and exits 2.
#pragma once

#include <string>
#include <vector>

#include "weft/loader.hpp"
#include "weft/recipe.hpp"

namespace weft::cli {

// Registry with every plugin the default search path finds; refusals are kept in `scan`.
struct Plugins {
  Registry registry;
  PluginScan scan;
};
void load_default_plugins(Plugins& plugins);

struct RecipeArgs {
  std::string recipe;
  std::vector<std::string> overrides;  // --set section.key=value
  std::vector<std::string> unsets;     // --unset section.key
  bool log_level_given = false;        // --log-level beats the recipe's log.level
};

// `train --resume R.toml` hands the recipe to --resume (its value is
// optional); a file there is the recipe, a folder the checkpoint to resume.
// Throws weft::Error when no recipe is left.
void resolve_resume_form(std::string& recipe, std::string& resume_dir);

int cmd_plugins(const std::string& name);
// --json: one JSON object (params, world, grad_accum, ranks with their mem_* estimates) instead of the text.
int cmd_check(const RecipeArgs& args, bool json = false);
// Builds what `weft check` builds for rank 0 (no parameters, no step): throws
// weft::Error where check would refuse the recipe.
void check_recipe_builds(const Recipe& recipe, const Registry& registry);
// weft plan: the layouts of the recipe's model on `world` ranks that fit
// `memory_gb` GiB each, best first, and why the others do not (plan.cpp).
int cmd_plan(const RecipeArgs& args, int world, double memory_gb, const std::string& precision, bool json);
int cmd_train(const RecipeArgs& args, bool resume, const std::string& resume_dir, bool overwrite,
              bool override_schedule = false);
int cmd_eval(const std::vector<std::string>& checkpoints, const std::string& text_file);
// weft export: a checkpoint as a Hugging Face folder (export.cpp); format "hf".
int cmd_export(const std::string& checkpoint, const std::string& format, const std::string& out_dir);
// Writes an SVG of the runs' metrics.jsonl curves to `out`.
int cmd_plot(const std::vector<std::string>& run_dirs, const std::string& out);
// weft preprocess: JSON lines to a Megatron indexed dataset (preprocess.cpp).
struct PreprocessArgs {
  std::string input, output_prefix, json_key = "text";
  bool append_eod = false;
  int workers = 0;  // 0: every core
};
int cmd_preprocess(const RecipeArgs& args, const PreprocessArgs& pre);
// weft data: the recipe's data counts and samples (data_cmd.cpp).
int cmd_data(const RecipeArgs& args, const std::vector<long long>& samples, bool json);
int cmd_generate(const std::string& checkpoint, const std::string& prompt, int tokens, double temperature,
                 int top_k, long long seed);

}  // namespace weft::cli
