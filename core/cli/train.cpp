// `weft train RECIPE [--set k=v]... [--resume[=DIR|=require]] [--overwrite]`.
#include "commands.hpp"
#include "logging.hpp"
#include "runtime.hpp"
#include "trainer.hpp"

namespace weft::cli {

int cmd_train(const RecipeArgs& args, bool resume, const std::string& resume_dir, bool overwrite) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan);
  if (!args.log_level_given) setup_logging(recipe.options("log").get_string("level"));
  TrainArgs targs;
  targs.resume = resume;
  // "require" is a mode, not a folder (a folder of that name: --resume=./require).
  targs.require_checkpoint = resume && resume_dir == "require";
  targs.resume_from = targs.require_checkpoint ? "" : resume_dir;
  targs.overwrite = overwrite;
  train(recipe, plugins.registry, targs);
  return 0;
}

}  // namespace weft::cli
