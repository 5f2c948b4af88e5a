// PipelineSchedule (family pipeline_schedule: gpipe, 1f1b, interleaved):
// runs forward/backward of this rank's stage for every microbatch of the
// step, sending activations between stages.
#pragma once

#include <functional>
#include <memory>

#include "weft/layers.hpp"
#include "weft/model.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

struct ScheduleStep {
  Model* model = nullptr;
  Backend* backend = nullptr;
  const ParallelEnv* parallel = nullptr;
  int microbatches = 1;
  // Fills ids[B,T] and targets[B,T] (int32, device tensors) of microbatch mb.
  std::function<void(int mb, Tensor& ids, Tensor& targets)> load;
  float dloss_scale = 1.f;  // 1 / tokens in the global batch: the loss is a mean
  std::function<void(Param&)> on_grad_ready;
};

class PipelineSchedule {
 public:
  virtual ~PipelineSchedule() = default;
  // Returns the sum of per-token losses of this rank's microbatches (last stage; 0 elsewhere).
  virtual double run(ScheduleStep& step) = 0;
};

template <>
struct FamilyTraits<PipelineSchedule> {
  static constexpr const char* kName = "pipeline_schedule";
  using Factory = std::function<std::unique_ptr<PipelineSchedule>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
