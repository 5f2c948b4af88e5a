// `weft train RECIPE [--set k=v]... [--resume[=DIR|=require]] [--overwrite]`.
#include <filesystem>

#include "stop_signals.hpp"

#include "commands.hpp"
#include "logging.hpp"
#include "runtime.hpp"
#include "trainer.hpp"

namespace weft::cli {

void resolve_resume_form(std::string& recipe, std::string& resume_dir) {
  std::error_code ec;
  auto resume_is_file = [&] { return !resume_dir.empty() && std::filesystem::is_regular_file(resume_dir, ec); };
  if (recipe.empty() && resume_is_file()) {
    recipe = resume_dir;
    resume_dir.clear();
  }
  if (recipe.empty()) throw Error("train: a recipe is required (weft train RECIPE [--resume [DIR]])");
  if (resume_is_file())
    throw Error("--resume " + resume_dir + ": a file; --resume takes a checkpoint folder (a step_N folder, a "
                "checkpoints folder or an out_dir), the recipe is " + recipe);
}

int cmd_train(const RecipeArgs& args, bool resume, const std::string& resume_dir, bool overwrite,
              bool override_schedule) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  if (!args.log_level_given) setup_logging(recipe.options("log").get_string("level"));
  for (const std::string& note : recipe.notes) spdlog::info("{}", note);
  TrainArgs targs;
  targs.resume = resume;
  // "require" is a mode, not a folder (a folder of that name: --resume=./require).
  targs.require_checkpoint = resume && resume_dir == "require";
  targs.resume_from = targs.require_checkpoint ? "" : resume_dir;
  targs.overwrite = overwrite;
  targs.override_schedule = override_schedule;
  StopSignals stop(recipe.options("run").get_strings("stop_signals"));
  targs.stop = &stop;
  train(recipe, plugins.registry, targs);
  return 0;
}

}  // namespace weft::cli
