// `weft check RECIPE`: the resolved recipe, the parallel layout, the parameter
// count and a per-rank memory estimate, without training.
#include <cstdio>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "runtime.hpp"

namespace weft::cli {

namespace {

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

int cmd_check(const RecipeArgs& args) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  for (const std::string& note : recipe.notes) std::printf("# note: %s\n", note.c_str());
  std::printf("%s\n", recipe.to_toml().c_str());

  const ParallelSizes& s = recipe.sizes;
  std::printf("# layout: world %d = tensor %d x pipeline %d x data %d (expert %d); micro %lld, global %lld, "
              "gradient accumulation %lld\n",
              recipe.world, s.tp, s.pp, s.dp, s.ep, static_cast<long long>(recipe.options("batch").get_int("micro")),
              static_cast<long long>(recipe.options("batch").get_int("global")),
              static_cast<long long>(recipe.grad_accum));
  const int shown = std::min(recipe.world, 64);
  for (int r = 0; r < shown; ++r) std::printf("#   %s\n", make_topology(recipe.world, r, s).describe().c_str());
  if (shown < recipe.world) std::printf("#   ... %d more ranks\n", recipe.world - shown);

  ModelEstimate est = estimate_model(recipe, plugins.registry);
  std::printf("# parameters: %lld (%.3fM); this rank holds %lld\n", static_cast<long long>(est.summary.params),
              est.summary.params / 1e6, static_cast<long long>(est.local_params));
  std::printf("# memory per rank (estimate): params %s, grads %s, optimizer state %s, activations %s, total %s\n",
              mib(est.param_bytes).c_str(), mib(est.grad_bytes).c_str(), mib(est.optim_bytes).c_str(),
              mib(est.act_bytes).c_str(), mib(est.param_bytes + est.grad_bytes + est.optim_bytes + est.act_bytes).c_str());
  return 0;
}

}  // namespace weft::cli
