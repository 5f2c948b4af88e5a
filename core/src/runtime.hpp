// Building runtime objects from a resolved recipe through the registry: the
// shared steps of `weft check`, `train`, `eval` and `generate`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "loader.hpp"
#include "weft/model.hpp"
#include "weft/recipe.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

// load_recipe with the recipe's [plugins] paths loaded into `registry`, the
// launcher's world from the environment, and refused plugin files named when
// a plugin the recipe needs is missing.
Recipe load_recipe_for_run(const std::string& path, const std::vector<std::string>& overrides, Registry& registry,
                           PluginScan& scan);

// World size a launcher (mpirun, srun, torchrun) gave this process; 0 when none.
int launcher_world_from_env();

std::unique_ptr<Tokenizer> make_tokenizer(const Recipe& recipe, const Registry& registry);

struct ModelEstimate {
  ModelSummary summary;
  int64_t local_params = 0;  // elements rank 0 holds
  double param_bytes = 0, grad_bytes = 0, optim_bytes = 0, act_bytes = 0;
};
// Builds rank 0's model without allocating its parameters.
ModelEstimate estimate_model(const Recipe& recipe, const Registry& registry);

}  // namespace weft
