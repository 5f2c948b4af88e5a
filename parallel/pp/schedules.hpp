// The pipeline schedules: the order of one stage's forward (F) and backward
// (B) ops over the M microbatches of a step, for S stages (stage s).
//   gpipe        all forwards, then all backwards: M microbatches in flight
//   1f1b         PipeDream-flush: S-s-1 warm-up forwards, then one forward and
//                one backward in turn, then the remaining backwards: at most
//                S-s microbatches in flight
//   interleaved  1F1B over v model chunks per stage (Megatron's interleaved
//                schedule): the bubble shrinks by v; M must be a multiple of S
// The executor, the stage cut and the timeline are in weft/pipeline.hpp.
#pragma once

#include <vector>

#include "weft/options.hpp"
#include "weft/schedule.hpp"

namespace weft::pp {

// Options every schedule has.
OptionSpec layers_per_stage_option();

class ScheduleBase : public PipelineSchedule {
 public:
  explicit ScheduleBase(std::vector<int64_t> layers_per_stage) : layers_per_stage_(std::move(layers_per_stage)) {}
  std::vector<int64_t> layers_per_stage() const override { return layers_per_stage_; }

 private:
  std::vector<int64_t> layers_per_stage_;
};

class GPipe : public ScheduleBase {
 public:
  using ScheduleBase::ScheduleBase;
  std::vector<PipelineOp> ops(int stage, int stages, int microbatches) const override;
  int in_flight(int stage, int stages, int microbatches) const override;
};

class OneFOneB : public ScheduleBase {
 public:
  using ScheduleBase::ScheduleBase;
  std::vector<PipelineOp> ops(int stage, int stages, int microbatches) const override;
  int in_flight(int stage, int stages, int microbatches) const override;
};

class Interleaved : public ScheduleBase {
 public:
  Interleaved(std::vector<int64_t> layers_per_stage, int virtual_stages)
      : ScheduleBase(std::move(layers_per_stage)), virtual_stages_(virtual_stages) {}
  int virtual_stages() const override { return virtual_stages_; }
  std::vector<PipelineOp> ops(int stage, int stages, int microbatches) const override;
  int in_flight(int stage, int stages, int microbatches) const override;

 private:
  int virtual_stages_;
};

}  // namespace weft::pp
