#include "runtime.hpp"

#include <cstdlib>

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
                           PluginScan& scan) {
  RecipeEnv env;
  env.launcher_world = launcher_world_from_env();
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

ModelEstimate estimate_model(const Recipe& recipe, const Registry& registry) {
  auto tokenizer = make_tokenizer(recipe, registry);
  Topology topo = make_topology(recipe.world, 0, recipe.sizes);
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

  ModelEstimate est;
  est.summary = model->summary();
  for (const Param* p : model->params()) est.local_params += shape_numel(p->shape);
  est.param_bytes = 4.0 * est.local_params;
  est.grad_bytes = 4.0 * est.local_params;
  est.optim_bytes = 4.0 * est.local_params * optimizer->state_slots() * dp->optimizer_state_share(recipe.sizes.dp);
  // Under 1F1B a stage holds up to pp microbatches in flight, each with 1/pp of
  // the layers: about one microbatch of the whole model's activations.
  est.act_bytes = static_cast<double>(est.summary.act_bytes_per_sample) * recipe.options("batch").get_int("micro");
  return est;
}

}  // namespace weft

#include <thread>

#include "checkpoint.hpp"
#include "weft/params.hpp"

namespace weft {

void build_model_stack(ModelStack& stack, const Recipe& recipe, const Registry& registry, const BackendEnv& env) {
  stack.parallel.topology = &stack.topology;
  stack.backend = registry.factory<Backend>(recipe.plugin("backend"))(recipe.options("backend"), env);
  stack.parallel.backend = stack.backend.get();
  stack.tokenizer = make_tokenizer(recipe, registry);
  stack.layers = registry.factory<LayerProvider>(recipe.plugin("parallel.tensor_parallel"))(
      recipe.options("parallel.tensor_parallel"), stack.parallel);
  ModelEnv menv;
  menv.vocab_size = stack.tokenizer->vocab_size();
  menv.seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));
  menv.layers = stack.layers.get();
  menv.parallel = &stack.parallel;
  stack.model = registry.factory<Model>(recipe.plugin("model"))(recipe.options("model"), menv);
  stack.flat = materialize_params(stack.model->params(), *stack.backend, menv.seed);
}

void build_stack_from_checkpoint(ModelStack& stack, const std::string& path, Registry& registry, PluginScan& scan,
                                 Recipe& recipe_out) {
  std::string step_dir = resolve_checkpoint_dir(path);
  recipe_out = load_recipe_for_run(step_dir + "/recipe.toml",
                                   {"parallel.tensor=1", "parallel.pipeline=1", "parallel.data=1",
                                    "parallel.expert=1", "parallel.world=1", "batch.global=auto"},
                                   registry, scan);
  stack.topology = make_topology(1, 0, recipe_out.sizes);
  BackendEnv env;
  env.cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  build_model_stack(stack, recipe_out, registry, env);
  read_checkpoint(step_dir, stack.flat, nullptr, 0, *stack.backend);
}

}  // namespace weft
