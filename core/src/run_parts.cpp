#include "run_parts.hpp"

#include "weft/error.hpp"

namespace weft {

std::unique_ptr<CommLauncher> make_launcher(const Recipe& recipe, const Registry& registry) {
  auto launcher = registry.factory<CommLauncher>(recipe.plugin("comm"))(recipe.options("comm"));
  launcher->validate(recipe.world);
  return launcher;
}

std::unique_ptr<Backend> make_backend(const Recipe& recipe, const Registry& registry, const BackendEnv& env) {
  return registry.factory<Backend>(recipe.plugin("backend"))(recipe.options("backend"), env);
}

bool has_expert_params(const std::vector<Param*>& params) {
  for (const Param* p : params)
    if (p->expert) return true;
  return false;
}

namespace {

// Expert ranks split nothing in a dense model: the run would equal expert = 1.
void refuse_unused_expert_ranks(const Recipe& recipe, const ModelFacts& model) {
  if (recipe.sizes.ep > 1 && !model.has_experts)
    recipe.options("parallel").fail("expert", "expert " + std::to_string(recipe.sizes.ep) + " but model '" +
                                                  recipe.plugin("model") +
                                                  "' has no expert parameters; a dense model needs expert = 1");
}

}  // namespace

void build_run_parts(RunParts& parts, const Recipe& recipe, const Registry& registry, const ModelFacts& model) {
  refuse_unused_expert_ranks(recipe, model);
  DatasetEnv denv;
  denv.tokenizer = model.tokenizer;
  denv.vocab_size = model.summary.vocab;
  denv.seq_length = model.summary.seq_length;
  denv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  parts.dataset = registry.factory<Dataset>(recipe.plugin("data"))(recipe.options("data"), denv);
  parts.eval = make_eval_plan(recipe, registry, denv);

  parts.optimizer = registry.factory<Optimizer>(recipe.plugin("optimizer"))(recipe.options("optimizer"));
  LrEnv lenv{parts.optimizer->base_lr(), recipe.options("run").get_int("steps")};
  parts.lr_schedule =
      registry.factory<LrSchedule>(recipe.plugin("lr_schedule"))(recipe.options("lr_schedule"), lenv);
  if (auto wd = parts.lr_schedule->weight_decay(1); wd && !parts.optimizer->set_weight_decay(*wd))
    recipe.options("lr_schedule").fail("weight_decay_style", "optimizer '" + recipe.plugin("optimizer") +
                                                                 "' has no weight decay to schedule");
  parts.dp = registry.factory<DataParallel>(recipe.plugin("parallel.data_parallel"))(
      recipe.options("parallel.data_parallel"));
}

}  // namespace weft
