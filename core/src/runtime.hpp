// Building runtime objects from a resolved recipe through the registry: the
// shared steps of `weft check`, `train`, `eval` and `generate`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "weft/loader.hpp"
#include "weft/model.hpp"
#include "weft/pipeline.hpp"
#include "weft/recipe.hpp"
#include "weft/schedule.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

// load_recipe with the recipe's [plugins] paths loaded into `registry`, the
// launcher's world from the environment, and refused plugin files named when
// a plugin the recipe needs is missing. `unsets`: --unset section.key.
Recipe load_recipe_for_run(const std::string& path, const std::vector<std::string>& overrides, Registry& registry,
                           PluginScan& scan, const std::vector<std::string>& unsets = {});

// World size a launcher (mpirun, srun, torchrun) gave this process; 0 when none.
int launcher_world_from_env();

std::unique_ptr<Tokenizer> make_tokenizer(const Recipe& recipe, const Registry& registry);

struct LocalParam {
  std::string name;
  Shape shape, full_shape;  // this rank's and the logical one
  ShardSpec shard;
};
struct ModelEstimate {
  bool has_experts = false;  // some parameter is sharded over ep
  ModelSummary summary;
  int64_t local_params = 0;  // elements the rank holds
  double param_bytes = 0, grad_bytes = 0, optim_bytes = 0, act_bytes = 0;  // under the recipe's precision
  // What those bytes are computed from (memory_estimate.hpp), so that other
  // precisions and data-parallel strategies can be estimated for the same rank.
  int optimizer_slots = 0;        // state tensors per parameter (AdamW 2)
  double optim_share = 1;         // the rank's share of the optimizer state (zero1: 1/data)
  double act_fp32_bytes = 0;      // saved activations in flight, fp32 compute dtype
  double act16_bytes = 0;         // the same with a 16-bit compute dtype (bf16, fp16)
  int64_t stage_blocks = 0;       // transformer blocks of the rank's stage (all its chunks)
  DType compute = DType::F32;  // the precision's compute dtype (params' bytes)
  std::vector<LocalParam> params;  // the rank's, declaration order
  PipelinePlan plan;
  PipelineTimeline timeline;       // the schedule simulated over the step's microbatches
  int in_flight = 1;               // microbatches of activations the rank's stage keeps at most
};
// Builds the model of global rank `rank` without allocating its parameters.
ModelEstimate estimate_model(const Recipe& recipe, const Registry& registry, int rank = 0);

}  // namespace weft

#include "checkpoint.hpp"
#include "weft/backend.hpp"
#include "weft/expert.hpp"
#include "weft/grad_sync.hpp"
#include "weft/precision.hpp"

namespace weft {

// The schedule's stage cut of `model` and its op lists for the recipe's
// microbatches, checked by simulation; refusals name the recipe key.
PipelinePlan plan_pipeline(const Recipe& recipe, Model& model, const PipelineSchedule& schedule,
                           PipelineTimeline* timeline = nullptr);

// What one rank needs to run its model: backend, tokenizer, layer provider,
// model, the pipeline schedule and stage cut, and this stage's materialised
// parameters.
struct ModelStack {
  Topology topology;
  ParallelEnv parallel;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<LayerProvider> layers;
  std::unique_ptr<Dispatcher> dispatcher;  // MoE rows over the ep group
  std::unique_ptr<Model> model;
  std::unique_ptr<PipelineSchedule> schedule;
  PipelinePlan plan;
  std::vector<Param*> tied;  // this stage's copies of parameters another stage owns (tied embedding)
  std::unique_ptr<Precision> precision;
  FlatParams flat;  // data in the precision's compute dtype
};

// The params rank `topo` holds of a model cut into `plan`: its stage's, less
// the experts other ep ranks hold; with expert parallelism the experts come
// last (their gradients reduce over another group). `tied` as stage_params.
std::vector<Param*> rank_params(Model& model, const PipelinePlan& plan, const Topology& topo,
                                std::vector<Param*>* tied = nullptr);
// The recipe's precision plugin, refused (weft::Error naming [precision]
// plugin and the backend) when `backend` cannot compute in its dtype.
std::unique_ptr<Precision> make_precision(const Recipe& recipe, const Registry& registry, const Backend& backend);

// `parallel` carries this rank's topology and group communicators (null for one rank).
void build_model_stack(ModelStack& stack, const Recipe& recipe, const Registry& registry, const BackendEnv& env);

// The recipe saved with a checkpoint, resolved for one rank (the sizes and
// the options that only make sense on several set to one rank's).
Recipe load_checkpoint_recipe(const std::string& step_dir, Registry& registry, PluginScan& scan);

// The recipe's model as one rank builds it (serial layers, one expert rank),
// its parameters not materialised: what `weft export` asks for its layout.
std::unique_ptr<Model> build_serial_model(const Recipe& recipe, const Registry& registry);

// A single-rank stack for eval/generate from a checkpoint folder (any layout
// it was saved under); returns the checkpoint's step and data position.
CheckpointMeta build_stack_from_checkpoint(ModelStack& stack, const std::string& step_dir, Registry& registry,
                                 PluginScan& scan, Recipe& recipe_out);

}  // namespace weft
