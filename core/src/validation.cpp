#include "validation.hpp"

#include "weft/error.hpp"

namespace weft {

EvalPlan make_eval_plan(const Recipe& recipe, const Registry& registry, const DatasetEnv& env) {
  EvalPlan plan;
  const Options& eval = recipe.options("eval");
  plan.interval = eval.get_int("interval");
  plan.iters = eval.get_int("iters");
  if (plan.interval == 0) return plan;
  const Options& data = recipe.options("data");
  if (!data.has("part"))
    eval.fail("interval", "data plugin '" + recipe.plugin("data") +
                              "' has no validation part (no `part` option); the megatron plugin has one "
                              "(data.split), or set eval.interval = 0");
  std::map<std::string, Options::Entry> entries = data.entries();
  entries["part"].value = std::string("valid");
  const Options valid(data.section(), std::move(entries), data.section_pos());
  try {
    plan.dataset = registry.factory<Dataset>(recipe.plugin("data"))(valid, env);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (the validation part, for eval.interval)");
  }
  return plan;
}

}  // namespace weft
