// The parts of a run that `weft train` builds on every rank and `weft check`
// builds for rank 0 without running a step: one construction, so check
// refuses exactly what train refuses, with the same messages.
#pragma once

#include <memory>
#include <vector>

#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/dataset.hpp"
#include "weft/grad_sync.hpp"
#include "weft/model.hpp"
#include "weft/optimizer.hpp"
#include "weft/recipe.hpp"
#include "validation.hpp"

namespace weft {

// The communicator's launcher, after it refused what it cannot run here
// (comm-nccl without a GPU) before any rank starts.
std::unique_ptr<CommLauncher> make_launcher(const Recipe& recipe, const Registry& registry);

std::unique_ptr<Backend> make_backend(const Recipe& recipe, const Registry& registry, const BackendEnv& env);

struct RunParts {
  std::unique_ptr<Dataset> dataset;
  std::unique_ptr<Optimizer> optimizer;
  std::unique_ptr<LrSchedule> lr_schedule;
  std::unique_ptr<DataParallel> dp;
  EvalPlan eval;  // [eval]: the validation part, when eval.interval > 0
};

// What of the model the run's parts depend on.
struct ModelFacts {
  const Tokenizer* tokenizer = nullptr;
  ModelSummary summary;
  bool has_experts = false;  // some parameter is sharded over ep
};

bool has_expert_params(const std::vector<Param*>& params);

// Opens the dataset and builds the optimizer, lr schedule and data-parallel
// strategy (not yet set up); refuses layout sizes the model leaves unused
// (parallel.expert > 1 without experts). The pipeline schedule is built with
// the model (runtime.hpp), which it cuts into stages.
void build_run_parts(RunParts& parts, const Recipe& recipe, const Registry& registry, const ModelFacts& model);

}  // namespace weft
