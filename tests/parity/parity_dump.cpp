// parity_dump: writes what tests/parity/test_parity.py compares against its
// own PyTorch GPT-2.
//
//   parity_dump BUILD_ROOT RECIPE OUT_DIR [--steps N] [--set section.key=value]...
//
// Loads the plugins of the build tree BUILD_ROOT (<build>/{plugins,parallel,
// models,optim}/*), resolves RECIPE with the overrides, builds a single-rank
// model stack and writes into OUT_DIR:
//   config.json          resolved sizes, optimizer and schedule settings, every
//                        [model] option as a TOML literal ("model_options"), and
//                        every param's name, shape and weight_decay flag
//   init.safetensors     every param at initialisation (or as [model] init_from loaded it), by logical name,
//                        full shape
//   batches.safetensors  "step<s>" [G, T+1] for s = 1..N: the tokens (as floats)
//                        of dataset samples (s-1)*G .. s*G-1, the trainer's order
//   step1.safetensors    for the batch of step 1 run as one microbatch of G samples:
//                        "logits" [G,T,Vp] (forward with no targets),
//                        "act.<i>" [G,T,C] the output of layer i (0 = embedding,
//                        1..L = blocks) on the way, and for each block layer i
//                        "act.<i>.ln1|attn|ln2|mlp": its sub-modules run on their
//                        own from the block's input x (ln1(x), attn(ln1(x)),
//                        ln2(x2), mlp(ln2(x2)) with x2 = x + attn(ln1(x))),
//                        "losses" [G,T], "loss" [1] (mean over the G*T tokens),
//                        "grad.<name>" for every param after one forward+backward
//                        with dloss_scale = 1/(G*T), grads zeroed first,
//                        "moe_loss" [1] the MoE aux + z losses of that pass (0 for a dense model).
// Exit codes: 0 done, 2 bad arguments or refused input, 1 anything else.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "weft/loader.hpp"
#include "hf_format.hpp"
#include "runtime.hpp"
#include "safetensors.hpp"
#include "weft/dataset.hpp"
#include "weft/error.hpp"
#include "weft/nn.hpp"
#include "weft/params.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Args {
  std::string build_root, recipe, out_dir;
  int64_t steps = 0;  // 0: the recipe's run.steps
  std::vector<std::string> overrides;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "parity_dump: %s\nusage: parity_dump BUILD_ROOT RECIPE OUT_DIR [--steps N] "
               "[--set section.key=value]...\n",
               why.c_str());
  std::exit(2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--set" || arg == "--steps") {
      if (i + 1 >= argc) usage(arg + " needs a value");
      std::string value = argv[++i];
      if (arg == "--set") {
        a.overrides.push_back(value);
      } else {
        try {
          a.steps = std::stoll(value);
        } catch (const std::exception&) {
          usage("--steps " + value + " is not a number");
        }
        if (a.steps < 1) usage("--steps must be >= 1");
      }
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 3) usage("expected BUILD_ROOT RECIPE OUT_DIR");
  a.build_root = positional[0];
  a.recipe = positional[1];
  a.out_dir = positional[2];
  return a;
}

// The build tree's plugin folders, as `weft` scans them.
std::vector<std::string> build_plugin_dirs(const std::string& build_root) {
  std::vector<std::string> dirs = weft::build_tree_plugin_dirs(build_root);
  if (dirs.empty()) throw weft::Error(build_root + ": no plugin folders (plugins/*, parallel/*, models/*, optim/*)");
  return dirs;
}

std::vector<float> to_host(weft::Backend& backend, const weft::Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  backend.copy_to_host(out.data(), t);
  return out;
}

int run(const Args& args) {
  weft::Registry registry;
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, build_plugin_dirs(args.build_root), scan);
  weft::Recipe recipe = weft::load_recipe_for_run(args.recipe, args.overrides, registry, scan);
  if (recipe.world != 1) throw weft::Error(args.recipe + ": parity_dump needs a one-rank recipe, world is " +
                                           std::to_string(recipe.world));

  weft::ModelStack stack;
  stack.topology = weft::make_topology(1, 0, recipe.sizes);
  weft::BackendEnv env;
  env.cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  weft::build_model_stack(stack, recipe, registry, env);
  weft::load_init_from(recipe, *stack.model, stack.flat, nullptr, *stack.backend);  // [model] init_from, if set
  weft::Backend& be = *stack.backend;
  weft::Model& model = *stack.model;
  const weft::ModelSummary summary = model.summary();
  const int64_t T = summary.seq_length, V = summary.vocab, Vp = summary.padded_vocab;
  const int64_t G = recipe.options("batch").get_int("global");
  const int64_t steps = args.steps > 0 ? args.steps : recipe.options("run").get_int("steps");
  const uint64_t seed = static_cast<uint64_t>(recipe.options("run").get_int("seed"));

  fs::create_directories(args.out_dir);
  const std::string out = args.out_dir + "/";

  // ------------------------------------------------ config.json
  const weft::Options& mo = recipe.options("model");
  const weft::Options& oo = recipe.options("optimizer");
  const weft::Options& lo = recipe.options("lr_schedule");
  json params = json::array();
  for (weft::Param* p : stack.flat.params)
    params.push_back({{"name", p->name}, {"shape", p->full_shape}, {"weight_decay", p->weight_decay}});
  json model_options = json::object();  // every [model] key as a TOML literal (model-specific options)
  for (const auto& [key, entry] : mo.entries()) model_options[key] = weft::opt_value_str(entry.value);
  json cfg = {
      {"model_options", model_options},
      {"model", {{"plugin", recipe.plugin("model")},
                 {"layers", mo.get_int("layers")},
                 {"hidden", mo.get_int("hidden")},
                 {"heads", mo.get_int("heads")},
                 {"seq_length", T},
                 {"init_std", mo.get_float("init_std")},
                 {"vocab", V},
                 {"padded_vocab", Vp}}},
      {"batch", {{"micro", recipe.options("batch").get_int("micro")}, {"global", G},
                 {"grad_accum", recipe.grad_accum}}},
      {"optimizer", {{"plugin", recipe.plugin("optimizer")},
                     {"lr", oo.get_float("lr")},
                     {"beta1", oo.get_float("beta1")},
                     {"beta2", oo.get_float("beta2")},
                     {"eps", oo.get_float("eps")},
                     {"weight_decay", oo.get_float("weight_decay")},
                     {"clip_grad_norm", oo.get_float("clip_grad_norm")}}},
      {"lr_schedule", {{"plugin", recipe.plugin("lr_schedule")}, {"warmup_steps", lo.get_int("warmup_steps")}}},
      {"precision", recipe.plugin("precision")},
      {"world", recipe.world},
      {"seed", seed},
      {"steps", steps},
      {"params", params},
  };
  if (mo.has("moe_experts")) {  // a model with mixture-of-experts options (gpt)
    json& m = cfg["model"];
    m["moe_experts"] = mo.get_int("moe_experts");
    m["moe_top_k"] = mo.get_int("moe_top_k");
    m["moe_every"] = mo.get_int("moe_every");
    m["moe_capacity_factor"] = mo.get_float("moe_capacity_factor");
    m["moe_aux_loss_coef"] = mo.get_float("moe_aux_loss_coef");
    m["moe_z_loss_coef"] = mo.get_float("moe_z_loss_coef");
  }
  {
    std::ofstream f(out + "config.json");
    f << cfg.dump(2) << "\n";
    if (!f) throw weft::Error(out + "config.json: cannot write");
  }

  // ------------------------------------------------ init.safetensors
  std::vector<weft::NamedArray> init;
  for (weft::Param* p : stack.flat.params) {
    WEFT_ASSERT(p->shard.count == 1, "parity_dump: sharded parameter " + p->name);
    init.push_back({p->name, p->full_shape, to_host(be, p->data)});
  }
  weft::write_safetensors(out + "init.safetensors", init, {{"format", "weft-parity"}});

  // ------------------------------------------------ batches.safetensors
  weft::DatasetEnv denv;
  denv.tokenizer = stack.tokenizer.get();
  denv.seq_length = T;
  denv.seed = seed;
  auto dataset = registry.factory<weft::Dataset>(recipe.plugin("data"))(recipe.options("data"), denv);
  std::vector<std::vector<int32_t>> step1_tokens;  // [G][T+1]
  std::vector<weft::NamedArray> batches;
  std::vector<int32_t> tokens(static_cast<size_t>(T + 1));
  for (int64_t s = 1; s <= steps; ++s) {
    weft::NamedArray a{"step" + std::to_string(s), {G, T + 1}, {}};
    a.values.reserve(static_cast<size_t>(G * (T + 1)));
    for (int64_t b = 0; b < G; ++b) {
      dataset->sample((s - 1) * G + b, tokens.data());
      for (int32_t t : tokens) a.values.push_back(static_cast<float>(t));
      if (s == 1) step1_tokens.push_back(tokens);
    }
    batches.push_back(std::move(a));
  }
  weft::write_safetensors(out + "batches.safetensors", batches, {{"format", "weft-parity"}});

  // ------------------------------------------------ step1.safetensors
  std::vector<int32_t> host_ids(static_cast<size_t>(G * T)), host_targets(static_cast<size_t>(G * T));
  for (int64_t b = 0; b < G; ++b)
    for (int64_t t = 0; t < T; ++t) {
      host_ids[b * T + t] = step1_tokens[b][t];
      host_targets[b * T + t] = step1_tokens[b][t + 1];
    }
  weft::Tensor ids = be.alloc({G, T}, weft::DType::I32, weft::MemCategory::Workspace);      // [G,T]
  weft::Tensor targets = be.alloc({G, T}, weft::DType::I32, weft::MemCategory::Workspace);  // [G,T]
  be.copy_from_host(ids, host_ids.data());
  be.copy_from_host(targets, host_targets.data());
  const std::vector<weft::Module*> layers = model.layers();

  std::vector<weft::NamedArray> step1;
  {  // logits: forward with no targets, and the activations along the way
    weft::Context ctx(be, 0);
    weft::Tensor x = ids;
    for (size_t li = 0; li < layers.size(); ++li) {
      if (auto* block = dynamic_cast<weft::nn::Block*>(layers[li])) {
        // Each sub-module of the block on its own, from the block's input, so a
        // mismatch can be pinned to ln1 / attn / ln2 / mlp (a separate context).
        weft::Context probe(be, 0);
        const std::string pre = "act." + std::to_string(li) + ".";
        weft::Tensor a1 = block->ln1().forward(probe, x);
        weft::Tensor o1 = block->attn().forward(probe, a1);
        std::vector<float> x2 = to_host(be, x), o1h = to_host(be, o1);
        for (size_t i = 0; i < x2.size(); ++i) x2[i] += o1h[i];
        weft::Tensor x2t = be.alloc(x.shape(), weft::DType::F32, weft::MemCategory::Workspace);
        be.copy_from_host(x2t, x2.data());
        weft::Tensor a2 = block->ln2().forward(probe, x2t);
        weft::Tensor o2 = block->mlp().forward(probe, a2);
        step1.push_back({pre + "ln1", x.shape(), to_host(be, a1)});
        step1.push_back({pre + "attn", x.shape(), o1h});
        step1.push_back({pre + "ln2", x.shape(), to_host(be, a2)});
        step1.push_back({pre + "mlp", x.shape(), to_host(be, o2)});
      }
      x = layers[li]->forward(ctx, x);
      if (li + 1 < layers.size()) step1.push_back({"act." + std::to_string(li), x.shape(), to_host(be, x)});
    }
    WEFT_ASSERT(x.shape() == (weft::Shape{G, T, Vp}), "parity_dump: logits are " + weft::shape_str(x.shape()));
    step1.push_back({"logits", {G, T, Vp}, to_host(be, x)});
  }
  {  // losses and gradients: one forward+backward over all G samples
    weft::zero_grads(stack.flat, be);
    weft::Context ctx(be, 0);
    ctx.targets = targets;
    ctx.dloss_scale = 1.0f / static_cast<float>(G * T);
    ctx.last_microbatch = true;
    weft::Tensor x = ids;
    for (weft::Module* layer : layers) x = layer->forward(ctx, x);
    WEFT_ASSERT(x.shape() == (weft::Shape{G, T}), "parity_dump: losses are " + weft::shape_str(x.shape()));
    std::vector<float> losses = to_host(be, x);
    double sum = 0;
    for (float l : losses) sum += l;
    step1.push_back({"losses", {G, T}, losses});
    step1.push_back({"loss", {1}, {static_cast<float>(sum / static_cast<double>(G * T))}});
    weft::Tensor dy;
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) dy = (*it)->backward(ctx, dy);
    be.synchronize();
    for (weft::Param* p : stack.flat.params) step1.push_back({"grad." + p->name, p->full_shape, to_host(be, p->grad)});
    // MoE: the auxiliary losses as added to the objective (weight 1 here: one microbatch of G).
    step1.push_back({"moe_loss", {1}, {static_cast<float>(ctx.stats["aux_loss"] + ctx.stats["z_loss"])}});
  }
  weft::write_safetensors(out + "step1.safetensors", step1, {{"format", "weft-parity"}});
  std::printf("parity_dump: %zu params, G %lld, T %lld, V %lld, Vp %lld, %lld steps of batches -> %s\n",
              stack.flat.params.size(), static_cast<long long>(G), static_cast<long long>(T),
              static_cast<long long>(V), static_cast<long long>(Vp), static_cast<long long>(steps),
              args.out_dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
  try {
    return run(args);
  } catch (const weft::Error& e) {
    std::fprintf(stderr, "parity_dump: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_dump: internal error: %s\n", e.what());
    return 1;
  }
}
