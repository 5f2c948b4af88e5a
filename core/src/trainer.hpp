// The training loop (docs/design.md): every rank builds its objects from the
// recipe, then for each step runs the pipeline schedule over its microbatches,
// lets the data-parallel strategy reduce and update, logs and checkpoints.
#pragma once

#include <string>

#include "weft/loader.hpp"
#include "weft/recipe.hpp"

namespace weft {

class StopSignals;

struct TrainArgs {
  bool resume = false;
  bool require_checkpoint = false;  // --resume=require: no checkpoint is an error, not a fresh start
  bool overwrite = false;           // --overwrite: a fresh run may replace an earlier one in out_dir
  bool override_schedule = false;   // --override-schedule: resume although the lr schedule changed
  std::string resume_from;            // step folder, checkpoints folder or out_dir; "" = this run's latest
  const StopSignals* stop = nullptr;  // set: a signal makes every rank checkpoint and return after its step
};

// Runs the recipe on every rank this process hosts. Throws weft::Error on refused input.
void train(const Recipe& recipe, const Registry& registry, const TrainArgs& args);

// run.out_dir, or runs/<run.name> when empty.
std::string run_out_dir(const Recipe& recipe);

}  // namespace weft
