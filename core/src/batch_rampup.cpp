#include "batch_rampup.hpp"

#include <string>

#include "weft/error.hpp"

namespace weft {

BatchRampup BatchRampup::from(const Recipe& recipe) {
  const Options& b = recipe.options("batch");
  BatchRampup r;
  r.global = b.get_int("global");
  if (b.has("rampup_start")) {
    r.start = b.get_int("rampup_start");
    r.increment = b.get_int("rampup_increment");
    r.samples = b.get_int("rampup_samples");
  }
  return r;
}

int64_t BatchRampup::global_at(int64_t consumed) const {
  if (!on() || consumed > samples) return global;
  const int64_t increases = (global - start) / increment;
  const double per_increase = static_cast<double>(samples) / static_cast<double>(increases);
  const int64_t done = static_cast<int64_t>(static_cast<double>(consumed) / per_increase);
  const int64_t size = start + done * increment;
  return size < global ? size : global;
}

std::vector<int64_t> BatchRampup::sizes() const {
  if (!on()) return {global};
  std::vector<int64_t> out;
  for (int64_t g = start; g < global; g += increment) out.push_back(g);
  out.push_back(global);
  return out;
}

int64_t BatchRampup::steps_for(int64_t total) const {
  if (!on()) return (total + global - 1) / global;
  // Counted step by step, as the run will take them; bounded so a huge run is refused, not waited for.
  const int64_t kMaxSteps = 100000000;
  int64_t steps = 0;
  for (int64_t consumed = 0; consumed < total; ++steps) {
    if (steps == kMaxSteps)
      throw Error("batch: a batch-size ramp-up run of more than " + std::to_string(kMaxSteps) +
                  " steps is not supported (run.steps x batch.global = " + std::to_string(total) + " samples)");
    consumed += global_at(consumed);
  }
  return steps;
}

}  // namespace weft
