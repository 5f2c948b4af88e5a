// `weft check RECIPE`: the resolved recipe, the parallel layout, the parameter
// count and a per-rank memory estimate, without training.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>
#include <utility>

#include "commands.hpp"
#include "hf_format.hpp"
#include "memory_estimate.hpp"
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
  build_run_parts(run.parts, recipe, registry, facts);
  // [model] init_from: the folder's config.json and tensor shapes against the model (no data read).
  const Options& model = recipe.options("model");
  if (model.has("init_from") && !model.get_string("init_from").empty()) {
    HfLayout layout;
    std::string dir;
    check_init_from(recipe, *build_serial_model(recipe, registry), layout, dir);
  }
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

// Which experts each ep rank holds, on which ranks, and where their gradients reduce.
void print_experts(const Recipe& recipe, const ModelSummary& summary) {
  if (summary.moe_experts == 0) return;
  const ParallelSizes& s = recipe.sizes;
  const int64_t per_rank = summary.moe_experts / s.ep;
  std::string line;
  for (int e = 0; e < s.ep; ++e) {
    std::string ranks;
    for (int r = 0; r < recipe.world && r < 64; ++r)
      if (make_topology(recipe.world, r, s).coords.ep == e) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
    line += std::string(e ? "; " : "") + "ep rank " + std::to_string(e) + " holds experts " +
            std::to_string(e * per_rank) + "-" + std::to_string((e + 1) * per_rank - 1) + " on ranks [" + ranks + "]";
  }
  std::printf("# experts: %lld in each of %lld MoE blocks over expert %d: %s\n", static_cast<long long>(summary.moe_experts),
              static_cast<long long>(summary.moe_layers), s.ep, line.c_str());
  std::printf("#   expert gradients reduce over the %d ranks of an expert-data-parallel group (edp group), dense "
              "gradients over the %d of the data-parallel group\n",
              s.dp / s.ep, s.dp);
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

// Every rank's estimate. Ranks of the same tensor and pipeline coordinates
// hold the same shards (data and expert ranks differ only in their samples),
// so the model is built once per (tp, pp).
struct RankEstimate {
  Topology topology;
  const ModelEstimate* est = nullptr;
};
struct LayoutEstimates {
  std::map<std::pair<int, int>, ModelEstimate> by_coords;  // (tp, pp) -> that rank's estimate
  std::vector<RankEstimate> ranks;
};

void estimate_ranks(LayoutEstimates& out, const Recipe& recipe, const Registry& registry) {
  for (int r = 0; r < recipe.world; ++r) {
    Topology t = make_topology(recipe.world, r, recipe.sizes);
    const std::pair<int, int> key{t.coords.tp, t.coords.pp};
    if (!out.by_coords.count(key)) out.by_coords.emplace(key, estimate_model(recipe, registry, r));
    out.ranks.push_back({std::move(t), nullptr});
  }
  for (RankEstimate& r : out.ranks) r.est = &out.by_coords.at({r.topology.coords.tp, r.topology.coords.pp});
}

// The precision and data-parallel strategy pairs the estimate is shown for:
// the recipe's own, then bf16 with ddp and with zero1 (a large run's usual
// choices), whichever of those differ from it.
struct MemoryVariant {
  std::string precision, data_parallel;
  bool fp32_grads = true;  // the recipe's accumulate_grads_in_fp32 for its own variant
  double optim_share(const ModelEstimate& est, int dp) const {
    return data_parallel == "zero1" ? 1.0 / dp : data_parallel == "ddp" ? 1.0 : est.optim_share;
  }
};
std::vector<MemoryVariant> memory_variants(const Recipe& recipe) {
  std::vector<MemoryVariant> out = {{recipe.plugin("precision"), recipe.plugin("parallel.data_parallel"),
                                     grads_in_fp32(recipe.options("precision"))}};
  for (const char* dp : {"ddp", "zero1"}) {
    MemoryVariant v{"bf16", dp};
    if (v.precision != out[0].precision || v.data_parallel != out[0].data_parallel || !out[0].fp32_grads)
      out.push_back(v);
  }
  return out;
}

RankMemory variant_memory(const MemoryVariant& v, const ModelEstimate& est, int dp) {
  return rank_memory(est.local_params, est.optimizer_slots, v.optim_share(est, dp), est.act_fp32_bytes,
                     est.act16_bytes, precision_bytes(v.precision, v.fp32_grads));
}

// GiB from 1 GiB up, MiB below.
std::string size_str(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, bytes >= 1 << 30 ? "%.2f GiB" : "%.2f MiB",
                bytes >= 1 << 30 ? bytes / (1 << 30) : bytes / (1 << 20));
  return buf;
}

// One line per pipeline stage and variant: stages differ (embedding, head,
// microbatches in flight); tensor ranks of a stage hold equal shards.
void print_memory_table(const Recipe& recipe, const LayoutEstimates& ranks) {
  std::printf("# memory per rank by pipeline stage (estimate, docs/distributed.md#memory-per-rank; tensor rank 0 "
              "of each stage): params, grads, optimizer state, activations of the microbatches in flight\n");
  const std::vector<MemoryVariant> variants = memory_variants(recipe);
  for (int stage = 0; stage < recipe.sizes.pp; ++stage) {
    const ModelEstimate& est = ranks.by_coords.at({0, stage});
    for (size_t i = 0; i < variants.size(); ++i) {
      const MemoryVariant& v = variants[i];
      const RankMemory m = variant_memory(v, est, recipe.sizes.dp);
      std::printf("#   stage %d, %s + %s%s%s: params %s, grads %s, optimizer %s, activations %s (%d in flight), "
                  "total %s\n",
                  stage, v.precision.c_str(), v.data_parallel.c_str(), v.fp32_grads ? "" : ", 16-bit gradients",
                  i == 0 ? " (this recipe)" : "",
                  size_str(m.param).c_str(), size_str(m.grad).c_str(), size_str(m.optim).c_str(),
                  size_str(m.act).c_str(), est.in_flight, size_str(m.total()).c_str());
    }
  }
}

// `weft check --json`: one object for scripts; mem_* named as in metrics.jsonl.
void print_json(const Recipe& recipe, const ModelEstimate& est0, const LayoutEstimates& ranks) {
  using nlohmann::json;
  const ParallelSizes& s = recipe.sizes;
  json out;
  out["params"] = est0.summary.params;
  out["world"] = recipe.world;
  out["tensor"] = s.tp;
  out["pipeline"] = s.pp;
  out["data"] = s.dp;
  out["expert"] = s.ep;
  out["micro"] = recipe.options("batch").get_int("micro");
  out["global"] = recipe.options("batch").get_int("global");
  out["grad_accum"] = recipe.grad_accum;
  out["precision"] = recipe.plugin("precision");
  out["data_parallel"] = recipe.plugin("parallel.data_parallel");
  out["schedule"] = recipe.plugin("parallel.pipeline_schedule");
  out["recompute"] = recipe.options("model").has("recompute") ? recipe.options("model").get_string("recompute") : "none";
  out["bubble"] = est0.timeline.bubble;
  out["out_dir"] = std::filesystem::absolute(run_out_dir(recipe)).lexically_normal().string();
  auto rank_list = [&](const MemoryVariant* v) {
    json list = json::array();
    for (const RankEstimate& r : ranks.ranks) {
      const ModelEstimate& e = *r.est;
      const RankMemory m = v ? variant_memory(*v, e, s.dp) : RankMemory{e.param_bytes, e.grad_bytes, e.optim_bytes,
                                                                        e.act_bytes};
      json j = {{"rank", r.topology.rank},
                {"tp", r.topology.coords.tp},
                {"pp", r.topology.coords.pp},
                {"dp", r.topology.coords.dp},
                {"ep", r.topology.coords.ep},
                {"params", e.local_params},
                {"in_flight", e.in_flight},
                {"mem_param_bytes", m.param},
                {"mem_grad_bytes", m.grad},
                {"mem_optim_bytes", m.optim},
                {"mem_act_bytes", m.act},
                {"mem_total_bytes", m.total()}};
      if (!v) {  // the groups once, with the recipe's own figures
        j["tp_group"] = r.topology.tp_group;
        j["pp_group"] = r.topology.pp_group;
        j["dp_group"] = r.topology.dp_group;
        j["ep_group"] = r.topology.ep_group;
      }
      list.push_back(std::move(j));
    }
    return list;
  };
  out["ranks"] = rank_list(nullptr);
  json variants = json::array();
  const std::vector<MemoryVariant> all = memory_variants(recipe);
  for (size_t i = 1; i < all.size(); ++i)
    variants.push_back({{"precision", all[i].precision}, {"data_parallel", all[i].data_parallel},
                        {"ranks", rank_list(&all[i])}});
  out["variants"] = std::move(variants);
  out["notes"] = recipe.notes;
  std::printf("%s\n", out.dump(1).c_str());
}

}  // namespace

void check_recipe_builds(const Recipe& recipe, const Registry& registry) {
  CheckedRun run;
  build_checked_run(run, recipe, registry);
}

int cmd_check(const RecipeArgs& args, bool json) {
  Plugins plugins;
  load_default_plugins(plugins);
  Recipe recipe = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  CheckedRun run;
  build_checked_run(run, recipe, plugins.registry);
  LayoutEstimates ranks;
  estimate_ranks(ranks, recipe, plugins.registry);
  if (json) {
    print_json(recipe, ranks.by_coords.at({0, 0}), ranks);
    return 0;
  }
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

  const ModelEstimate& est = ranks.by_coords.at({0, 0});
  print_experts(recipe, est.summary);
  print_first_block_shards(recipe, plugins.registry);
  print_pipeline(recipe, est);
  std::printf("# parameters: %lld (%.3fM); this rank holds %lld\n", static_cast<long long>(est.summary.params),
              est.summary.params / 1e6, static_cast<long long>(est.local_params));
  const std::string kept_fp32 = grads_in_fp32(recipe.options("precision"))
                                    ? "master weights, gradients and optimizer state f32"
                                    : std::string("master weights and optimizer state f32; gradients ") +
                                          dtype_name(est.compute);
  std::printf("# precision: %s (compute dtype %s; %s)\n", recipe.plugin("precision").c_str(),
              dtype_name(est.compute), kept_fp32.c_str());
  std::printf("# memory per rank (estimate, rank 0; activations of %d microbatch%s in flight): params %s, grads %s, "
              "optimizer state %s, activations %s, total %s\n",
              est.in_flight, est.in_flight == 1 ? "" : "es",
              mib(est.param_bytes).c_str(), mib(est.grad_bytes).c_str(), mib(est.optim_bytes).c_str(),
              mib(est.act_bytes).c_str(), mib(est.param_bytes + est.grad_bytes + est.optim_bytes + est.act_bytes).c_str());
  print_memory_table(recipe, ranks);
  std::printf("# out_dir: %s\n", std::filesystem::absolute(run_out_dir(recipe)).lexically_normal().c_str());
  print_data(recipe, *run.parts.dataset, est.summary.seq_length);
  return 0;
}

}  // namespace weft::cli
