// PipelineSchedule (family pipeline_schedule: gpipe, 1f1b, interleaved): the
// order in which a stage runs the forward and backward of each microbatch of
// a step. The executor, the stage cut and the timeline are shared
// (weft/pipeline.hpp); a schedule only orders ops.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "weft/layers.hpp"
#include "weft/model.hpp"
#include "weft/options.hpp"
#include "weft/pipeline.hpp"
#include "weft/plugin.hpp"

namespace weft {

struct ScheduleStep {
  Model* model = nullptr;
  Backend* backend = nullptr;
  const ParallelEnv* parallel = nullptr;  // pp: the pipeline group (rank = stage)
  const PipelinePlan* plan = nullptr;     // null: one stage
  int microbatches = 1;
  Shape activation_shape;  // [micro, T, C] (sp: [micro, T/tp, C]) sent between stages
  // Fills ids[B,T] and targets[B,T] (int32, device tensors) of microbatch mb;
  // fresh tensors each call (a stage may keep several microbatches in flight).
  std::function<void(int mb, Tensor& ids, Tensor& targets)> load;
  // When set: fills microbatch mb's other batch fields of its Context
  // (first_sample, training, doc_start, positions) after load.
  std::function<void(int mb, Context& ctx)> prepare;
  float dloss_scale = 1.f;  // 1 / tokens in the global batch: the loss is a mean
  std::function<void(Param&)> on_grad_ready;
  std::map<std::string, double>* stats = nullptr;  // when set: every microbatch's Context::stats, summed
};

class PipelineSchedule {
 public:
  virtual ~PipelineSchedule() = default;
  // Model chunks per stage (interleaved schedules: more than 1).
  virtual int virtual_stages() const { return 1; }
  // Blocks per stage from the options; empty = an even split.
  virtual std::vector<int64_t> layers_per_stage() const { return {}; }
  // Stage `stage`'s ops, in order, over `microbatches`; every (microbatch,
  // chunk) once forward and once backward, a microbatch's forward before its
  // backward. Throws PlanError naming the option and the rule when the
  // schedule cannot run that many microbatches.
  virtual std::vector<PipelineOp> ops(int stage, int stages, int microbatches) const = 0;
  // How many microbatches of activations a stage keeps alive at most (for estimates).
  virtual int in_flight(int stage, int stages, int microbatches) const = 0;
};

template <>
struct FamilyTraits<PipelineSchedule> {
  static constexpr const char* kName = "pipeline_schedule";
  using Factory = std::function<std::unique_ptr<PipelineSchedule>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
