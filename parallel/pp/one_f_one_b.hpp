// 1f1b: one forward, one backward per microbatch, so at most `pp` microbatches
// of activations are alive on a stage. With one stage it runs each
// microbatch's forward and backward back to back (gradient accumulation).
#pragma once

#include "weft/schedule.hpp"

namespace weft {

class OneFOneB : public PipelineSchedule {
 public:
  double run(ScheduleStep& step) override;
};

}  // namespace weft
