// Batch-size ramp-up, Megatron's --rampup-batch-size START INCREMENT SAMPLES:
// the global batch starts at START and grows by INCREMENT in equal steps of
// consumed samples until SAMPLES have been consumed, then stays at batch.global.
// With n = (global - START) / INCREMENT increases, a step that starts after
// `consumed` samples has the global batch
//   START + INCREMENT * floor(consumed / (SAMPLES / n))   (consumed <= SAMPLES)
//   global                                                (consumed >  SAMPLES)
#pragma once

#include <cstdint>
#include <vector>

#include "weft/recipe.hpp"

namespace weft {

struct BatchRampup {
  int64_t start = 0;      // 0: no ramp-up
  int64_t increment = 0;
  int64_t samples = 0;
  int64_t global = 0;     // batch.global

  static BatchRampup from(const Recipe& recipe);  // [batch] rampup_* (checked by load_recipe)
  bool on() const { return start > 0; }
  int64_t global_at(int64_t consumed) const;
  std::vector<int64_t> sizes() const;  // every global batch of the run, ascending
  // Optimizer steps until `total` samples are consumed (the last step may pass it).
  int64_t steps_for(int64_t total) const;
};

}  // namespace weft
