// Pipeline parallelism, the parts every schedule shares: how a model's layer
// list is cut into stages (and, for interleaved schedules, into several model
// chunks per stage), the forward/backward ops a schedule orders, a timeline
// simulation that checks an order cannot deadlock and measures its bubble,
// and the executor that runs one rank's ops, sending activations [micro, T, C]
// (or a sequence-parallel [micro, T/tp, C] slice) forward and their gradients
// backward over the pp group.
//
// Virtual stage j = chunk * stages + stage: with one chunk per stage, stage s
// holds the s-th contiguous piece of the layers; with v chunks, stage s holds
// pieces s, s + stages, ... (Megatron's interleaved assignment).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace weft {

struct ScheduleStep;
class Model;
class StepTimers;
struct Param;

struct PipelineChunk {
  int stage = 0, chunk = 0;
  int64_t first = 0, end = 0;  // layers [first, end) of Model::layers()
};

struct PipelinePlan {
  int stages = 1, virtual_stages = 1;
  std::vector<PipelineChunk> chunks;  // by virtual stage j = chunk * stages + stage
  const PipelineChunk& at(int stage, int chunk) const { return chunks.at(chunk * stages + stage); }
  int virtual_count() const { return stages * virtual_stages; }
};

// A refused layout: which option of the recipe is at fault and why (numbers included).
struct PlanError {
  std::string key;  // "pipeline" (section parallel) or an option of parallel.pipeline_schedule
  std::string message;
};

// Cuts `layers` (embedding, blocks, head: blocks = layers - 2) into stages x
// virtual_stages chunks. blocks_per_stage empty: blocks split evenly (the
// first stages take one more when it does not divide); else one count per
// stage, summing to the blocks, each divisible by virtual_stages. The
// embedding joins the first chunk, the head the last. Throws PlanError.
PipelinePlan make_pipeline_plan(int64_t layers, int stages, int virtual_stages,
                                const std::vector<int64_t>& blocks_per_stage);

// The parameters stage `stage` materialises: those of its chunks' layers, in
// layer order, then the shared ones its layers read but another stage owns
// (also listed in *shared when given; the caller marks them Param::tied_copy).
std::vector<Param*> stage_params(Model& model, const PipelinePlan& plan, int stage,
                                 std::vector<Param*>* shared = nullptr);
// The stage that owns each parameter of model.params() (in that order).
std::vector<int> param_owner_stages(Model& model, const PipelinePlan& plan);

enum class OpKind { Forward, Backward };
struct PipelineOp {
  OpKind kind = OpKind::Forward;
  int microbatch = 0;
  int chunk = 0;  // this stage's model chunk
};

// The simulated run of every stage's op list (forward 1 time unit, backward
// 2; an op waits for its input from the neighbouring virtual stage).
struct PipelineTimeline {
  int64_t makespan = 0;            // time units of the whole step
  double bubble = 0;               // idle fraction of stage-time
  std::vector<std::string> rows;   // one per stage: a character per time unit, "." idle
};
// Throws PlanError (key "plugin") when the lists deadlock or miss an op.
PipelineTimeline simulate_pipeline(const PipelinePlan& plan, const std::vector<std::vector<PipelineOp>>& ops,
                                   int microbatches);

// Runs this rank's ops for one step; returns the sum of per-token losses it
// computed (on the rank of the last virtual stage; 0 elsewhere).
double run_pipeline_ops(ScheduleStep& step, const std::vector<PipelineOp>& ops);
// The same, charging forward, backward and waits on a neighbouring stage
// (the bubble) to `timers` (the trainer's; core only).
double run_pipeline_ops(ScheduleStep& step, const std::vector<PipelineOp>& ops, StepTimers* timers);

}  // namespace weft
