// `weft plan RECIPE --world N --memory-gb M [--json]`: every layout of the
// recipe's model on N ranks (tensor, pipeline, data, expert, ddp or zero1,
// schedule, micro batch, recomputation), the per-rank memory, bytes sent per
// step and pipeline bubble of each (memory_estimate.hpp), those that fit M GiB
// best first, and why the others do not.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.hpp"
#include "memory_estimate.hpp"
#include "runtime.hpp"
#include "weft/error.hpp"

namespace weft::cli {

namespace {

struct Layout {
  int tp = 1, pp = 1, dp = 1, ep = 1;
  std::string data_parallel = "ddp", schedule = "1f1b", recompute = "none";
  int virtual_stages = 1;
  int64_t micro = 1;
  // Results: the worst stage's figures (tensor rank 0, data rank 0 of each stage).
  bool fits = false;
  std::string why;  // refused or too large
  RankMemory mem;
  int worst_stage = 0;
  CommBytes comm;
  double bubble = 0;

  std::string name() const {
    std::string s = "tensor " + std::to_string(tp) + ", pipeline " + std::to_string(pp) + ", data " +
                    std::to_string(dp) + ", expert " + std::to_string(ep) + ", " + data_parallel + ", " + schedule;
    if (virtual_stages > 1) s += " x" + std::to_string(virtual_stages);
    return s + ", micro " + std::to_string(micro) + ", recompute " + recompute;
  }
};

std::vector<int> divisors(int n) {
  std::vector<int> out;
  for (int d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

// "file:line:col: what" -> "what": the candidate's override is the place, not the file.
std::string reason(const std::string& message) {
  size_t at = 0;
  for (int colons = 0; colons < 3 && at != std::string::npos; ++colons) at = message.find(':', at + 1);
  if (at != std::string::npos && message.compare(at, 2, ": ") == 0 && message.find(".toml:") != std::string::npos)
    return message.substr(at + 2);
  return message;
}

double gib(double bytes) { return bytes / static_cast<double>(1ull << 30); }

// Estimates one layout: the recipe loaded with the layout's overrides (so the
// recipe's own checks refuse what train would refuse), every stage's rank 0.
void estimate_layout(Layout& l, const RecipeArgs& args, int world, const std::string& precision, double limit_bytes,
                     Plugins& plugins) {
  std::vector<std::string> sets = args.overrides;
  auto set = [&](const std::string& kv) { sets.push_back(kv); };
  set("parallel.world=" + std::to_string(world));
  set("parallel.tensor=" + std::to_string(l.tp));
  set("parallel.pipeline=" + std::to_string(l.pp));
  set("parallel.data=" + std::to_string(l.dp));
  set("parallel.expert=" + std::to_string(l.ep));
  set("parallel.data_parallel.plugin=" + l.data_parallel);
  set("parallel.pipeline_schedule.plugin=" + l.schedule);
  if (l.virtual_stages > 1) set("parallel.pipeline_schedule.virtual_stages=" + std::to_string(l.virtual_stages));
  set("parallel.pipeline_schedule.layers_per_stage=[]");
  set("batch.micro=" + std::to_string(l.micro));
  set("model.recompute=" + l.recompute);
  if (l.recompute == "full") set("model.recompute_layers=0");
  if (l.tp == 1) set("parallel.tensor_parallel.sequence_parallel=false");
  try {
    Recipe recipe = load_recipe_for_run(args.recipe, sets, plugins.registry, plugins.scan, args.unsets);
    // The recipe's gradient dtype where --precision is its own mode, else fp32 gradients.
    const PrecisionBytes bytes = precision_bytes(
        precision, precision != recipe.plugin("precision") || grads_in_fp32(recipe.options("precision")));
    const bool sp = recipe.options("parallel.tensor_parallel").has("sequence_parallel") &&
                    recipe.options("parallel.tensor_parallel").get_bool("sequence_parallel");
    for (int stage = 0; stage < l.pp; ++stage) {
      const int rank = stage * l.tp * l.dp;  // tensor 0, data 0 of the stage
      const ModelEstimate est = estimate_model(recipe, plugins.registry, rank);
      const RankMemory mem = rank_memory(est.local_params, est.optimizer_slots, est.optim_share, est.act_fp32_bytes,
                                         est.act16_bytes, bytes);
      CommInput in;
      in.tp = l.tp, in.pp = l.pp, in.dp = l.dp;
      in.stage_blocks = est.stage_blocks;
      in.local_params = est.local_params;
      in.microbatches = recipe.grad_accum;
      in.micro = l.micro;
      in.seq_length = est.summary.seq_length;
      in.hidden = est.summary.hidden;
      in.sequence_parallel = sp;
      in.grad_bytes = bytes.grad;
      in.act_bytes = 4;  // activations between layers and stages are fp32 in every mode
      const CommBytes comm = step_comm_bytes(in);
      if (stage == 0 || mem.total() > l.mem.total()) l.mem = mem, l.worst_stage = stage;
      if (stage == 0 || comm.total() > l.comm.total()) l.comm = comm;
      l.bubble = est.timeline.bubble;
    }
    l.fits = l.mem.total() <= limit_bytes;
    if (!l.fits) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "needs %.1f GiB on stage %d's ranks (params %.1f, grads %.1f, optimizer %.1f, "
                                     "activations %.1f) > %.1f GiB",
                    gib(l.mem.total()), l.worst_stage, gib(l.mem.param), gib(l.mem.grad), gib(l.mem.optim),
                    gib(l.mem.act), gib(limit_bytes));
      l.why = buf;
    }
  } catch (const Error& e) {
    l.fits = false;
    l.why = reason(e.what());
  }
}

// Best first: without recomputation (it costs a forward per block), then the
// smaller pipeline bubble, then fewer bytes sent per step, then less memory.
bool better(const Layout& a, const Layout& b) {
  if ((a.recompute == "full") != (b.recompute == "full")) return a.recompute != "full";
  if (std::abs(a.bubble - b.bubble) > 1e-9) return a.bubble < b.bubble;
  if (a.comm.total() != b.comm.total()) return a.comm.total() < b.comm.total();
  return a.mem.total() < b.mem.total();
}

}  // namespace

int cmd_plan(const RecipeArgs& args, int world, double memory_gb, const std::string& precision_arg, bool json) {
  Plugins plugins;
  load_default_plugins(plugins);
  // The recipe as written first: a recipe weft refuses is refused here too.
  const Recipe base = load_recipe_for_run(args.recipe, args.overrides, plugins.registry, plugins.scan, args.unsets);
  const std::string precision = precision_arg.empty() ? base.plugin("precision") : precision_arg;
  if (!precision_known(precision))
    throw Error("--precision " + precision + ": the estimate knows fp32, bf16 and fp16");
  const int64_t global = base.options("batch").get_int("global");
  const int64_t recipe_micro = base.options("batch").get_int("micro");
  const double limit = memory_gb * static_cast<double>(1ull << 30);
  const bool moe = base.options("model").has("moe_experts") && base.options("model").get_int("moe_experts") > 0;

  std::vector<Layout> layouts;
  for (int tp : divisors(world))
    for (int pp : divisors(world / tp)) {
      const int dp = world / tp / pp;
      for (int ep : moe ? divisors(dp) : std::vector<int>{1})
        for (const char* dpp : {"ddp", "zero1"}) {
          if (dp == 1 && std::string(dpp) == "zero1") continue;  // the same as ddp
          for (int v : pp > 1 ? std::vector<int>{1, 2} : std::vector<int>{1})
            for (int64_t micro : {int64_t{1}, int64_t{2}, int64_t{4}, int64_t{8}, recipe_micro}) {
              if (global % (micro * dp) != 0) continue;  // the global batch fixes micro x data x accumulation
              for (const char* rc : {"none", "full"}) {
                Layout l;
                l.tp = tp, l.pp = pp, l.dp = dp, l.ep = ep, l.data_parallel = dpp;
                l.schedule = v > 1 ? "interleaved" : "1f1b";
                l.virtual_stages = v;
                l.micro = micro;
                l.recompute = rc;
                bool seen = false;
                for (const Layout& o : layouts) seen = seen || o.name() == l.name();
                if (!seen) layouts.push_back(l);
              }
            }
        }
    }
  for (Layout& l : layouts) estimate_layout(l, args, world, precision, limit, plugins);
  std::stable_sort(layouts.begin(), layouts.end(), [](const Layout& a, const Layout& b) {
    if (a.fits != b.fits) return a.fits;
    if (a.fits) return better(a, b);
    // Refused: those too large, smallest first, then those the recipe refuses.
    if ((a.mem.total() > 0) != (b.mem.total() > 0)) return a.mem.total() > 0;
    return a.mem.total() < b.mem.total();
  });
  const size_t fitting = static_cast<size_t>(std::count_if(layouts.begin(), layouts.end(), [](const Layout& l) { return l.fits; }));

  if (json) {
    nlohmann::json out = {{"world", world}, {"memory_gb", memory_gb}, {"precision", precision},
                          {"global", global}, {"fits", fitting}};
    nlohmann::json list = nlohmann::json::array();
    for (const Layout& l : layouts) {
      nlohmann::json j = {{"fits", l.fits}, {"tensor", l.tp}, {"pipeline", l.pp}, {"data", l.dp}, {"expert", l.ep},
                          {"data_parallel", l.data_parallel}, {"schedule", l.schedule},
                          {"virtual_stages", l.virtual_stages}, {"micro", l.micro}, {"recompute", l.recompute}};
      if (l.mem.total() > 0) {
        j["mem_param_bytes"] = l.mem.param, j["mem_grad_bytes"] = l.mem.grad, j["mem_optim_bytes"] = l.mem.optim;
        j["mem_act_bytes"] = l.mem.act, j["mem_total_bytes"] = l.mem.total(), j["worst_stage"] = l.worst_stage;
        j["comm_bytes"] = l.comm.total(), j["comm_tp_bytes"] = l.comm.tp, j["comm_pp_bytes"] = l.comm.pp;
        j["comm_dp_bytes"] = l.comm.dp, j["bubble"] = l.bubble;
      }
      if (!l.fits) j["why"] = l.why;
      list.push_back(std::move(j));
    }
    out["layouts"] = std::move(list);
    std::printf("%s\n", out.dump(1).c_str());
    return 0;
  }

  std::printf("# %zu of %zu layouts of %s fit %d ranks of %.0f GiB (%s; per rank: the worst pipeline stage; "
              "comm: bytes one rank sends per step; best first)\n",
              fitting, layouts.size(), args.recipe.c_str(), world, memory_gb, precision.c_str());
  std::printf("%4s %6s %8s %4s %6s %5s %-14s %5s %9s %9s %9s %9s %9s %9s %10s %7s\n", "#", "tensor", "pipeline",
              "data", "expert", "zero", "schedule", "micro", "recompute", "params", "grads", "optim", "activ",
              "total", "comm GB", "bubble");
  // The 20 best; --json lists every layout.
  int shown = 0;
  for (const Layout& l : layouts) {
    if (!l.fits || shown == 20) break;
    const std::string sched = l.schedule + (l.virtual_stages > 1 ? " x" + std::to_string(l.virtual_stages) : "");
    std::printf("%4d %6d %8d %4d %6d %5s %-14s %5lld %9s %8.1fG %8.1fG %8.1fG %8.1fG %8.1fG %10.1f %6.1f%%\n",
                ++shown, l.tp, l.pp, l.dp, l.ep, l.data_parallel == "zero1" ? "yes" : "no", sched.c_str(),
                static_cast<long long>(l.micro), l.recompute.c_str(), gib(l.mem.param), gib(l.mem.grad),
                gib(l.mem.optim), gib(l.mem.act), gib(l.mem.total()), l.comm.total() / 1e9, 100.0 * l.bubble);
  }
  if (fitting > 20) std::printf("# ... %zu more that fit (--json lists every layout)\n", fitting - 20);
  if (fitting == 0) std::printf("# none fits: fewer bytes per rank need more ranks, bf16 (--precision bf16) or recomputation\n");
  // The refused ones, nearest to fitting first (the recipe's own refusals last); --json lists every one.
  const size_t refused = layouts.size() - fitting, listed = std::min<size_t>(refused, 20);
  std::printf("# do not fit (%zu%s):\n", refused, listed < refused ? ", the 20 nearest to fitting; --json lists all" : "");
  for (size_t i = fitting; i < fitting + listed; ++i)
    std::printf("#   %s: %s\n", layouts[i].name().c_str(), layouts[i].why.c_str());
  return 0;
}

}  // namespace weft::cli
