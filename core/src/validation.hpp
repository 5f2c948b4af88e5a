// Validation loss ([eval] interval, iters): the data plugin's validation
// part, read as the training data is read, scored every `interval` steps.
#pragma once

#include <cstdint>
#include <memory>

#include "weft/dataset.hpp"
#include "weft/recipe.hpp"

namespace weft {

struct EvalPlan {
  int64_t interval = 0;  // steps between evaluations; 0 = none
  int64_t iters = 0;     // global batches per evaluation
  std::unique_ptr<Dataset> dataset;
  bool due(int64_t step, int64_t last_step) const {
    return interval > 0 && (step % interval == 0 || step == last_step);
  }
};

// The validation dataset: the recipe's [data] section with part = "valid".
// Throws weft::Error naming eval.interval when the data plugin has no such
// part (its schema has no `part` option) or the part is empty.
EvalPlan make_eval_plan(const Recipe& recipe, const Registry& registry, const DatasetEnv& env);

}  // namespace weft
