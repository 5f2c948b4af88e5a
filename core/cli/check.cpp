// `weft check RECIPE`: the resolved recipe, the parallel layout, the parameter
// count and a per-rank memory estimate, without training.
#include <algorithm>
#include <cstdio>
#include <string>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "runtime.hpp"

// Check builds what train builds short of a step (run_parts.hpp), then
// reports the data's size and where the run writes.
#include <algorithm>
#include <filesystem>
#include <thread>

#include "run_parts.hpp"
#include "trainer.hpp"

namespace weft::cli {

namespace {

// Builds rank 0's objects as `weft train` does, short of materialising the
// parameters and running a step: what train refuses, this refuses.
struct CheckedRun {
  Topology topology;     // rank 0's
  ParallelEnv parallel;  // no communicators: nothing is sent
  ModelEstimate estimate;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Tokenizer> tokenizer;
  RunParts parts;
};

void build_checked_run(CheckedRun& run, const Recipe& recipe, const Registry& registry) {
  make_launcher(recipe, registry);
  run.topology = make_topology(recipe.world, 0, recipe.sizes);
  BackendEnv env;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int local_ranks = launcher_world_from_env() > 0 ? 1 : recipe.world;  // threads share the cores
  env.cores = std::max(1, cores / local_ranks);
  run.backend = make_backend(recipe, registry, env);
  make_precision(recipe, registry, *run.backend);  // refuses a dtype the backend cannot compute in
  run.estimate = estimate_model(recipe, registry);
  run.tokenizer = make_tokenizer(recipe, registry);
  run.parallel.topology = &run.topology;
  run.parallel.backend = run.backend.get();
  ModelFacts facts{run.tokenizer.get(), run.estimate.summary, run.estimate.has_experts};
  build_run_parts(run.parts, recipe, registry, facts, run.parallel);
}

// The data line: what one epoch holds (the counts the dataset knows) and how
// much of it the run covers.
void print_data(const Recipe& recipe, const Dataset& dataset, int64_t seq_length) {
  DatasetStats stats = dataset.stats();
  std::string epoch;
  if (stats.documents >= 0) epoch += std::to_string(stats.documents) + " documents, ";
  if (stats.tokens >= 0) epoch += std::to_string(stats.tokens) + " tokens, ";
  const int64_t steps = recipe.options("run").get_int("steps");
  const int64_t global = recipe.options("batch").get_int("global");
  const double epochs = static_cast<double>(steps) * static_cast<double>(global) / static_cast<double>(dataset.size());
  std::printf("# data: %s; per epoch %s%lld samples of %lld tokens; %lld steps x %lld samples cover %.3g epochs\n",
              recipe.plugin("data").c_str(), epoch.c_str(), static_cast<long long>(dataset.size()),
              static_cast<long long>(seq_length + 1), static_cast<long long>(steps), static_cast<long long>(global),
              epochs);
}

std::string mib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

// One line per tensor-parallel rank (global ranks 0 .. tp-1 hold every tp
// coordinate): the local shape of each parameter of the first block, and the
// logical slice a sharded one holds.
void print_first_block_shards(const Recipe& recipe, const Registry& registry) {
  const int tp = recipe.sizes.tp, shown = std::min(tp, 8);
  for (int r = 0; r < shown; ++r) {
    std::string line;
    for (const LocalParam& p : estimate_model(recipe, registry, r).params) {
      if (p.name.rfind("blocks.0.", 0) != 0) continue;
      line += "\n#     " + p.name + " " + shape_str(p.shape);
      if (p.shard.dim >= 0 && p.shard.count > 1) {
        const int64_t part = p.shape[p.shard.dim] / p.shard.blocks, block = p.full_shape[p.shard.dim] / p.shard.blocks;
        line += " = dim " + std::to_string(p.shard.dim) + " [";
        for (int b = 0; b < p.shard.blocks; ++b) {
          const int64_t lo = b * block + r * part;
          line += (b ? ", " : "") + std::to_string(lo) + ":" + std::to_string(lo + part);
        }
        line += "] of " + shape_str(p.full_shape);
      } else {
        line += " (whole)";
      }
    }
    std::printf("# tensor-parallel rank %d of %d, first block:%s\n", r, tp, line.c_str());
  }
  if (shown < tp) std::printf("# ... %d more tensor-parallel ranks, shards of the same shapes\n", tp - shown);
}

// Which layers each stage holds, and the schedule as a timeline (simulated:
// a forward takes one time unit, a backward two) with its bubble fraction.
void print_pipeline(const Recipe& recipe, const ModelEstimate& est) {
  const PipelinePlan& plan = est.plan;
  const int64_t last = plan.chunks.back().end - 1;  // the output layer
  auto describe = [&](const PipelineChunk& c) {
    std::string what;
    auto add = [&](const std::string& part) { what += (what.empty() ? "" : ", ") + part; };
    if (c.first == 0) add("embedding");
    const int64_t b0 = std::max<int64_t>(c.first, 1), b1 = std::min<int64_t>(c.end, last);  // blocks [b0, b1)
    if (b1 > b0) add(b1 - b0 == 1 ? "block " + std::to_string(b0 - 1)
                                    : "blocks " + std::to_string(b0 - 1) + "-" + std::to_string(b1 - 2));
    if (c.end == last + 1) add("head");
    return "layers " + std::to_string(c.first) + "-" + std::to_string(c.end - 1) + " (" + what + ")";
  };
  std::printf("# pipeline: %d stage%s x %d model chunk%s, schedule %s, %lld microbatches per step\n", plan.stages,
              plan.stages == 1 ? "" : "s", plan.virtual_stages, plan.virtual_stages == 1 ? "" : "s",
              recipe.plugin("parallel.pipeline_schedule").c_str(), static_cast<long long>(recipe.grad_accum));
  for (int s = 0; s < plan.stages; ++s) {
    std::string chunks;
    for (int c = 0; c < plan.virtual_stages; ++c) chunks += (c ? "; " : "") + describe(plan.at(s, c));
    std::printf("#   stage %d: %s\n", s, chunks.c_str());
  }
  std::printf("# schedule (F/B = forward/backward of microbatch n%s; a forward takes one column, a backward two):\n",
              plan.virtual_stages > 1 ? ", .c = model chunk c" : "");
  for (int s = 0; s < plan.stages; ++s) std::printf("#   stage %d | %s\n", s, est.timeline.rows[s].c_str());
  std::printf("# pipeline bubble: %.1f%% of stage time idle (%lld time units per step)\n",
              100.0 * est.timeline.bubble, static_cast<long long>(est.timeline.makespan));
}

}  // namespace

int cmd_check(const RecipeArgs& args) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  CheckedRun run;
  build_checked_run(run, recipe, plugins.registry);
  for (const std::string& note : recipe.notes) std::printf("# note: %s\n", note.c_str());
  std::printf("%s\n", recipe.to_toml().c_str());

  const ParallelSizes& s = recipe.sizes;
  std::printf("# layout: world %d = tensor %d x pipeline %d x data %d (expert %d); micro %lld, global %lld, "
              "gradient accumulation %lld\n",
              recipe.world, s.tp, s.pp, s.dp, s.ep, static_cast<long long>(recipe.options("batch").get_int("micro")),
              static_cast<long long>(recipe.options("batch").get_int("global")),
              static_cast<long long>(recipe.grad_accum));
  // The origin page's form: WorldSize = TP x PP x DP x EP holds with DP read as
  // the expert-data-parallel size dp / ep (experts split over ep ranks inside dp).
  std::printf("# WorldSize = TP x PP x DP x EP: %d = %d x %d x %d x %d, DP = data / expert = %d / %d "
              "(expert-data-parallel size); GradAccum = GlobalBatch / (MicroBatch x data) = %lld / (%lld x %d) = %lld\n",
              recipe.world, s.tp, s.pp, s.dp / s.ep, s.ep, s.dp, s.ep,
              static_cast<long long>(recipe.options("batch").get_int("global")),
              static_cast<long long>(recipe.options("batch").get_int("micro")), s.dp,
              static_cast<long long>(recipe.grad_accum));
  const int shown = std::min(recipe.world, 64);
  for (int r = 0; r < shown; ++r) std::printf("#   %s\n", make_topology(recipe.world, r, s).describe().c_str());
  if (shown < recipe.world) std::printf("#   ... %d more ranks\n", recipe.world - shown);

  ModelEstimate est = estimate_model(recipe, plugins.registry);
  print_first_block_shards(recipe, plugins.registry);
  print_pipeline(recipe, est);
  std::printf("# parameters: %lld (%.3fM); this rank holds %lld\n", static_cast<long long>(est.summary.params),
              est.summary.params / 1e6, static_cast<long long>(est.local_params));
  std::printf("# precision: %s (compute dtype %s; master weights, gradients and optimizer state f32)\n",
              recipe.plugin("precision").c_str(), dtype_name(est.compute));
  std::printf("# memory per rank (estimate, rank 0; activations of %d microbatch%s in flight): params %s, grads %s, "
              "optimizer state %s, activations %s, total %s\n",
              est.in_flight, est.in_flight == 1 ? "" : "es",
              mib(est.param_bytes).c_str(), mib(est.grad_bytes).c_str(), mib(est.optim_bytes).c_str(),
              mib(est.act_bytes).c_str(), mib(est.param_bytes + est.grad_bytes + est.optim_bytes + est.act_bytes).c_str());
  std::printf("# out_dir: %s\n", std::filesystem::absolute(run_out_dir(recipe)).lexically_normal().c_str());
  print_data(recipe, *run.parts.dataset, est.summary.seq_length);
  return 0;
}

}  // namespace weft::cli
