#include "runtime.hpp"

#include <algorithm>
#include <cstdlib>

#include "memory_estimate.hpp"
#include "run_parts.hpp"
#include "weft/grad_sync.hpp"
#include "weft/layers.hpp"
#include "weft/optimizer.hpp"

namespace weft {

int launcher_world_from_env() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* v = std::getenv(var)) {
      int n = std::atoi(v);
      if (n > 0) return n;
    }
  }
  // srun sets this in every task of a job step (not in batch scripts); a step
  // of one task (`srun -n 1`) still runs its ranks as threads.
  if (const char* v = std::getenv("SLURM_STEP_NUM_TASKS")) {
    int n = std::atoi(v);
    if (n > 1) return n;
  }
  if (const char* v = std::getenv("WORLD_SIZE")) {
    int n = std::atoi(v);
    if (n > 0) return n;
  }
  return 0;
}

Recipe load_recipe_for_run(const std::string& path, const std::vector<std::string>& overrides, Registry& registry,
                           PluginScan& scan, const std::vector<std::string>& unsets) {
  RecipeEnv env;
  env.launcher_world = launcher_world_from_env();
  env.unsets = unsets;
  auto load_dirs = [&](const std::vector<std::string>& dirs) { load_plugin_dirs(registry, dirs, scan); };
  try {
    return load_recipe(path, overrides, registry, load_dirs, env);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (scan.refused.empty() || msg.find("plugin named") == std::string::npos) throw;
    msg += "; refused plugin files:";
    for (const auto& r : scan.refused) msg += " " + r.str() + ";";
    msg.pop_back();
    throw Error(msg);
  }
}

std::unique_ptr<Tokenizer> make_tokenizer(const Recipe& recipe, const Registry& registry) {
  auto tokenizer = registry.factory<Tokenizer>(recipe.plugin("tokenizer"))(recipe.options("tokenizer"));
  // Documents are joined with eot(): an id outside the vocabulary would index past the embedding.
  const int64_t vocab = tokenizer->vocab_size();
  const int32_t eot = tokenizer->eot();
  if (vocab <= 0 || eot < 0 || eot >= vocab)
    throw Error(Registry::describe(registry.get("tokenizer", recipe.plugin("tokenizer"))) + ": end-of-text id " +
                std::to_string(eot) + " is outside its vocabulary of " + std::to_string(vocab));
  return tokenizer;
}

PipelinePlan plan_pipeline(const Recipe& recipe, Model& model, const PipelineSchedule& schedule,
                           PipelineTimeline* timeline) {
  const int stages = recipe.sizes.pp;
  const int microbatches = static_cast<int>(recipe.grad_accum);
  try {
    PipelinePlan plan = make_pipeline_plan(static_cast<int64_t>(model.layers().size()), stages,
                                           schedule.virtual_stages(), schedule.layers_per_stage());
    std::vector<std::vector<PipelineOp>> ops;
    for (int s = 0; s < stages; ++s) ops.push_back(schedule.ops(s, stages, microbatches));
    PipelineTimeline t = simulate_pipeline(plan, ops, microbatches);
    if (timeline) *timeline = t;
    return plan;
  } catch (const PlanError& e) {
    if (e.key == "pipeline") recipe.options("parallel").fail("pipeline", e.message);
    recipe.options("parallel.pipeline_schedule").fail(e.key, e.message);
  }
  throw InternalError("plan_pipeline: unreachable");
}

ModelEstimate estimate_model(const Recipe& recipe, const Registry& registry, int rank) {
  auto tokenizer = make_tokenizer(recipe, registry);
  Topology topo = make_topology(recipe.world, rank, recipe.sizes);
  ParallelEnv penv;
  penv.topology = &topo;
  auto layers = registry.factory<LayerProvider>(recipe.plugin("parallel.tensor_parallel"))(
      recipe.options("parallel.tensor_parallel"), penv);
  ModelEnv menv;
  menv.vocab_size = tokenizer->vocab_size();
  menv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  menv.layers = layers.get();
  menv.parallel = &penv;
  auto model = registry.factory<Model>(recipe.plugin("model"))(recipe.options("model"), menv);
  auto optimizer = registry.factory<Optimizer>(recipe.plugin("optimizer"))(recipe.options("optimizer"));
  auto dp = registry.factory<DataParallel>(recipe.plugin("parallel.data_parallel"))(
      recipe.options("parallel.data_parallel"));
  auto schedule = registry.factory<PipelineSchedule>(recipe.plugin("parallel.pipeline_schedule"))(
      recipe.options("parallel.pipeline_schedule"), penv);

  ModelEstimate est;
  est.summary = model->summary();
  est.plan = plan_pipeline(recipe, *model, *schedule, &est.timeline);
  const int stage = topo.coords.pp;
  int64_t expert_params = 0;  // of local_params: reduced (and zero1-sharded) over dp / ep ranks only
  for (const Param* p : rank_params(*model, est.plan, topo)) {
    est.local_params += shape_numel(p->shape);
    if (p->expert && recipe.sizes.ep > 1) expert_params += shape_numel(p->shape);
    est.params.push_back({p->name, p->shape, p->full_shape, p->shard});
  }
  est.has_experts = has_expert_params(model->params());
  est.optimizer_slots = optimizer->state_slots();
  // Expert params keep their optimizer state over the dp / ep ranks holding
  // the same experts: the rank's share is the mean over its params.
  const int edp = recipe.sizes.dp / recipe.sizes.ep;
  est.optim_share = est.local_params == 0 ? 1.0
                    : (static_cast<double>(est.local_params - expert_params) * dp->optimizer_state_share(recipe.sizes.dp) +
                       static_cast<double>(expert_params) * dp->optimizer_state_share(edp)) /
                          static_cast<double>(est.local_params);
  est.compute = registry.factory<Precision>(recipe.plugin("precision"))(recipe.options("precision"))->compute_dtype();
  // The stage's share of the blocks' activations, times the microbatches its
  // schedule keeps in flight.
  const int64_t model_layers = static_cast<int64_t>(model->layers().size());
  int64_t blocks = 0;
  for (int c = 0; c < est.plan.virtual_stages; ++c) {
    const PipelineChunk& chunk = est.plan.at(stage, c);
    blocks += chunk.end - chunk.first;
    // Layer 0 is the embedding and the last the head; the rest are blocks.
    est.stage_blocks += std::min(chunk.end, model_layers - 1) - std::max<int64_t>(chunk.first, 1);
  }
  const double share = std::min(1.0, static_cast<double>(blocks) / static_cast<double>(model_layers));
  est.in_flight = schedule->in_flight(stage, recipe.sizes.pp, static_cast<int>(recipe.grad_accum));
  const double samples_in_flight = static_cast<double>(recipe.options("batch").get_int("micro")) * share * est.in_flight;
  const int64_t act16 = est.summary.act16_bytes_per_sample > 0 ? est.summary.act16_bytes_per_sample
                                                                : est.summary.act_bytes_per_sample;
  est.act_fp32_bytes = static_cast<double>(est.summary.act_bytes_per_sample) * samples_in_flight;
  est.act16_bytes = static_cast<double>(act16) * samples_in_flight;
  const RankMemory mem = rank_memory(est.local_params, est.optimizer_slots, est.optim_share, est.act_fp32_bytes,
                                     est.act16_bytes,
                                     precision_bytes(recipe.plugin("precision"),
                                                     grads_in_fp32(recipe.options("precision"))));
  est.param_bytes = mem.param;
  est.grad_bytes = mem.grad;
  est.optim_bytes = mem.optim;
  est.act_bytes = mem.act;
  return est;
}

}  // namespace weft

#include <thread>
#include <toml++/toml.h>

#include "checkpoint.hpp"
#include "weft/params.hpp"

namespace weft {

namespace {

// What a saved recipe must change besides the sizes to run on one rank, for
// the options of the built-in plugins that only make sense on several:
// sequence parallelism off, one stage's worth of layers_per_stage, one model
// chunk. (Unreadable files are reported by load_recipe_for_run, which reads
// the same file next.)
std::vector<std::string> one_rank_options(const std::string& recipe_path) {
  std::vector<std::string> out;
  try {
    toml::table saved = toml::parse_file(recipe_path);
    if (saved["parallel"]["tensor_parallel"]["sequence_parallel"].value_or(false))
      out.push_back("parallel.tensor_parallel.sequence_parallel=false");
    auto schedule = saved["parallel"]["pipeline_schedule"];
    if (auto* per_stage = schedule["layers_per_stage"].as_array(); per_stage && !per_stage->empty())
      out.push_back("parallel.pipeline_schedule.layers_per_stage=[]");
    if (schedule["virtual_stages"].value_or(int64_t{1}) != 1) out.push_back("parallel.pipeline_schedule.virtual_stages=1");
  } catch (const toml::parse_error&) {
  }
  return out;
}

}  // namespace

std::vector<Param*> rank_params(Model& model, const PipelinePlan& plan, const Topology& topo,
                                std::vector<Param*>* tied) {
  std::vector<Param*> params = stage_params(model, plan, topo.coords.pp, tied);
  if (topo.sizes.ep == 1) return params;
  std::erase_if(params, [&](const Param* p) { return p->expert && p->ep_owner != topo.coords.ep; });
  std::stable_partition(params.begin(), params.end(), [](const Param* p) { return !p->expert; });
  return params;
}

std::unique_ptr<Precision> make_precision(const Recipe& recipe, const Registry& registry, const Backend& backend) {
  const std::string name = recipe.plugin("precision");
  auto precision = registry.factory<Precision>(name)(recipe.options("precision"));
  const DType compute = precision->compute_dtype();
  if (!backend.supports_compute_dtype(compute)) {
    const SourcePos& at = recipe.options("precision").section_pos();
    const std::string where = at.known() ? at.str() + ": " : "";
    throw Error(where + "precision.plugin = \"" + name + "\": the " + backend.name() + " backend cannot compute in " +
                dtype_name(compute));
  }
  return precision;
}

void build_model_stack(ModelStack& stack, const Recipe& recipe, const Registry& registry, const BackendEnv& env) {
  stack.parallel.topology = &stack.topology;
  stack.backend = make_backend(recipe, registry, env);
  // comm-local and comm-mpi move host memory: a GPU backend's tensors need a device communicator.
  const std::string comm = recipe.plugin("comm");
  if (stack.backend->device() != Device::Host && recipe.world > 1 && (comm == "local" || comm == "mpi"))
    throw Error("backend '" + stack.backend->name() + "' keeps its tensors on the GPU, but comm '" + comm +
                "' moves host memory only: with " + std::to_string(recipe.world) +
                " ranks use comm.plugin = \"nccl\" (one process per GPU under mpirun)");
  stack.precision = make_precision(recipe, registry, *stack.backend);
  stack.parallel.backend = stack.backend.get();
  stack.tokenizer = make_tokenizer(recipe, registry);
  stack.layers = registry.factory<LayerProvider>(recipe.plugin("parallel.tensor_parallel"))(
      recipe.options("parallel.tensor_parallel"), stack.parallel);
  stack.dispatcher = registry.factory<Dispatcher>(recipe.plugin("parallel.expert_parallel"))(
      recipe.options("parallel.expert_parallel"), stack.parallel);
  stack.parallel.dispatcher = stack.dispatcher.get();
  ModelEnv menv;
  menv.vocab_size = stack.tokenizer->vocab_size();
  menv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  menv.layers = stack.layers.get();
  menv.parallel = &stack.parallel;
  stack.model = registry.factory<Model>(recipe.plugin("model"))(recipe.options("model"), menv);
  stack.schedule = registry.factory<PipelineSchedule>(recipe.plugin("parallel.pipeline_schedule"))(
      recipe.options("parallel.pipeline_schedule"), stack.parallel);
  stack.plan = plan_pipeline(recipe, *stack.model, *stack.schedule);
  stack.tied.clear();
  std::vector<Param*> params = rank_params(*stack.model, stack.plan, stack.topology, &stack.tied);
  for (Param* p : stack.tied) p->tied_copy = true;
  const DType compute = stack.precision->compute_dtype();
  stack.flat = materialize_params(params, *stack.backend, menv.seed, compute,
                                  stack.precision->accumulate_grads_in_fp32() ? DType::F32 : compute);
  stack.flat.count_replicated = stack.topology.coords.tp == 0;
}

Recipe load_checkpoint_recipe(const std::string& step_dir, Registry& registry, PluginScan& scan) {
  std::vector<std::string> one_rank = {"parallel.tensor=1", "parallel.pipeline=1", "parallel.data=1",
                                       "parallel.expert=1", "parallel.world=1", "batch.global=auto"};
  for (std::string& o : one_rank_options(step_dir + "/recipe.toml")) one_rank.push_back(std::move(o));
  return load_recipe_for_run(step_dir + "/recipe.toml", one_rank, registry, scan);
}

std::unique_ptr<Model> build_serial_model(const Recipe& recipe, const Registry& registry) {
  ModelEnv menv;  // no layer provider: the model's own serial Linears; no parallel env: one expert rank
  menv.vocab_size = make_tokenizer(recipe, registry)->vocab_size();
  menv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  return registry.factory<Model>(recipe.plugin("model"))(recipe.options("model"), menv);
}

CheckpointMeta build_stack_from_checkpoint(ModelStack& stack, const std::string& path, Registry& registry,
                                           PluginScan& scan, Recipe& recipe_out) {
  std::string step_dir = resolve_checkpoint_dir(path);
  recipe_out = load_checkpoint_recipe(step_dir, registry, scan);
  stack.topology = make_topology(1, 0, recipe_out.sizes);
  BackendEnv env;
  env.cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  build_model_stack(stack, recipe_out, registry, env);
  return read_checkpoint(step_dir, stack.flat, nullptr, 0, *stack.backend);
}

}  // namespace weft
