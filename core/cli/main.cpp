// weft: train, check, plugins, eval, export, generate, plot, preprocess, data. Refused input (weft::Error,
// usage errors) prints one line and exits 2; anything else exits 1.
#include <CLI/CLI.hpp>
#include <malloc.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <spdlog/spdlog.h>

#include "commands.hpp"
#include "import.hpp"
#include "logging.hpp"
#include "weft/error.hpp"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"weft: train transformer language models from TOML recipes", "weft"};
  app.set_version_flag("--version", std::string("weft ") + WEFT_VERSION + " (plugin ABI " +
                                        std::to_string(weft::kAbiVersion) + ")");
  std::string log_level;
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off (default: the recipe's log.level, "
                                           "else info)");
  app.require_subcommand(1);

  weft::cli::RecipeArgs recipe_args;
  auto add_recipe = [&](CLI::App* sub, bool required) {
    sub->add_option("recipe", recipe_args.recipe, "recipe TOML file")->required(required);
    sub->add_option("--set", recipe_args.overrides, "override a recipe value: section.key=value (repeatable)")
        ->take_all();
    sub->add_option("--unset", recipe_args.unsets,
                    "remove a key the recipe sets, so its default applies: section.key (repeatable)")
        ->take_all();
  };

  CLI::App* train = app.add_subcommand("train", "train a model from a recipe");
  add_recipe(train, false);  // `train --resume RECIPE` leaves it to --resume
  std::string resume_dir;
  CLI::Option* resume_opt =
      train->add_option("--resume", resume_dir,
                        "resume from the run's latest checkpoint, or from DIR (a step_N folder, a checkpoints "
                        "folder or an out_dir; write --resume=DIR before the recipe); starts from scratch when "
                        "the run has no checkpoint yet, unless written --resume=require")
          ->expected(0, 1);
  bool overwrite = false;
  CLI::Option* overwrite_opt =
      train->add_flag("--overwrite", overwrite, "start from scratch in an out_dir that holds an earlier run, "
                                                "removing its checkpoints and metrics");
  overwrite_opt->excludes(resume_opt);
  bool override_schedule = false;
  train->add_flag("--override-schedule", override_schedule,
                  "resume although the lr schedule differs from the checkpoint's; the recipe's schedule "
                  "continues from the checkpoint's step");

  CLI::App* check = app.add_subcommand("check", "validate a recipe; print it resolved, the layout, "
                                                 "the parameter count and a per-rank memory estimate");
  add_recipe(check, true);
  bool check_json = false;
  check->add_flag("--json", check_json, "print one JSON object (layout, parameter count, every rank's memory "
                                        "estimate) instead of the text");

  CLI::App* plugins = app.add_subcommand("plugins", "list plugins, one family's plugins, or one plugin's options");
  std::string plugin_name;
  plugins->add_option("name", plugin_name, "plugin name (or family/name), or a family name (tokenizer, model, ...)");

  CLI::App* eval = app.add_subcommand("eval", "mean loss and perplexity of checkpoints over a text file");
  std::string checkpoint, text_file;
  std::vector<std::string> eval_checkpoints;
  eval->add_option("--checkpoint", eval_checkpoints,
                   "checkpoint directory (or a run's out_dir); several give one JSON line each")
      ->required();
  eval->add_option("--text", text_file, "text file")->required();

  CLI::App* export_cmd = app.add_subcommand(
      "export", "write a checkpoint as a Hugging Face transformers folder (config.json + model.safetensors, fp32) in "
                "the layout its model plugin gives, which transformers loads as it is; [model] init_from reads it "
                "back");
  std::string export_checkpoint, export_format = "hf", export_out;
  export_cmd->add_option("--checkpoint", export_checkpoint, "checkpoint directory (or a run's out_dir: its latest)")
      ->required();
  export_cmd->add_option("--format", export_format, "output format: hf (Hugging Face transformers)")
      ->capture_default_str()
      ->check(CLI::IsMember({"hf"}));
  export_cmd->add_option("out", export_out, "the folder to write (created if missing)")->required();

  // CLI::Range lets nan through (every comparison with nan is false).
  CLI::Validator finite(
      [](std::string& s) {
        char* end = nullptr;
        double v = std::strtod(s.c_str(), &end);
        return std::isfinite(v) ? std::string() : "'" + s + "' is not a finite number";
      },
      "FINITE");
  CLI::App* generate = app.add_subcommand("generate", "sample text from a checkpoint");
  std::string prompt;
  int tokens = 200, top_k = 40;
  double temperature = 0.8;
  long long seed = 1234;
  generate->add_option("--checkpoint", checkpoint, "checkpoint directory (or a run's out_dir)")->required();
  generate->add_option("--prompt", prompt, "prompt text")->required();
  generate->add_option("--tokens", tokens, "tokens to generate")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  generate->add_option("--temperature", temperature, "sampling temperature (0 = greedy)")
      ->capture_default_str()
      ->check(finite)
      ->check(CLI::Range(0.0, 100.0));
  generate->add_option("--top-k", top_k, "sample from the k most likely tokens (0 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 30));
  generate->add_option("--seed", seed, "sampling seed")->capture_default_str();

  CLI::App* plot = app.add_subcommand("plot", "SVG of loss, val_loss, lr, grad norm and tokens/s against step, "
                                               "several runs overlaid");
  std::vector<std::string> plot_dirs;
  std::string plot_out = "plot.svg";
  plot->add_option("run_dir", plot_dirs, "run folders (each with metrics.jsonl)")->required();
  plot->add_option("-o,--output", plot_out, "the SVG file to write (a .png name: a PNG, through rsvg-convert)")->capture_default_str();
  CLI::App* preprocess = app.add_subcommand("preprocess", "tokenize JSON lines into a Megatron indexed dataset "
                                                           "(PREFIX.bin + PREFIX.idx) with the recipe's tokenizer");
  add_recipe(preprocess, true);
  weft::cli::PreprocessArgs pre;
  preprocess->add_option("--input", pre.input, "JSON-lines file, one document per line")->required();
  preprocess->add_option("--output-prefix", pre.output_prefix, "writes PREFIX.bin and PREFIX.idx")->required();
  preprocess->add_option("--json-key", pre.json_key, "the key holding each document's text")->capture_default_str();
  preprocess->add_flag("--append-eod", pre.append_eod, "end each document with the tokenizer's end-of-text token");
  preprocess->add_option("--workers", pre.workers, "tokenizing threads (0 = every core)")->check(CLI::Range(0, 1024));

  CLI::App* data = app.add_subcommand("data", "the recipe's data: documents, tokens, samples per epoch, and "
                                               "samples as ids and text");
  add_recipe(data, true);
  std::vector<long long> data_samples;
  bool data_json = false;
  data->add_option("--sample", data_samples, "print sample I of the training order (repeatable)")->take_all();
  data->add_flag("--json", data_json, "print JSON lines");

  CLI::App* plan = app.add_subcommand("plan", "the parallel layouts of a recipe's model that fit a number of "
                                               "devices of a memory size, best first, and why the others do not");
  add_recipe(plan, true);
  int plan_world = 0;
  double plan_memory_gb = 0;
  std::string plan_precision;
  bool plan_json = false;
  plan->add_option("--world", plan_world, "ranks (devices)")->required()->check(CLI::Range(1, 1 << 16));
  plan->add_option("--memory-gb", plan_memory_gb, "memory per device in GiB")->required()->check(finite)->check(
      CLI::Range(0.001, 1e9));
  plan->add_option("--precision", plan_precision, "estimate as fp32, bf16 or fp16 (default: the recipe's)");
  plan->add_flag("--json", plan_json, "print one JSON object with every layout");

  CLI::App* import = app.add_subcommand("import", "write a recipe from a Megatron-LM launch line or a DeepSpeed "
                                                   "config (docs/recipes.md#from-megatron-lm-and-deepspeed)");
  import->require_subcommand(1);
  weft::cli::ImportArgs import_args;
  auto add_import_options = [&](CLI::App* sub) {
    sub->add_flag("--strict", import_args.strict, "refuse (exit 2) when a flag or entry is not taken");
    sub->add_option("-o,--output", import_args.output, "write the recipe to FILE (default: stdout)");
    sub->add_option("--world", import_args.world, "ranks of the run (default: from a torchrun/deepspeed prefix)")
        ->check(CLI::Range(1, 1 << 20));
  };
  CLI::App* import_megatron = import->add_subcommand(
      "megatron", "a recipe from Megatron-LM flags: weft import megatron [-o FILE] -- [torchrun ... pretrain_gpt.py] FLAGS...");
  add_import_options(import_megatron);
  import_megatron->add_option("flags", import_args.flags, "Megatron-LM flags, after --");
  CLI::App* import_deepspeed = import->add_subcommand(
      "deepspeed", "a recipe from a DeepSpeed config: weft import deepspeed ds_config.json [-- FLAGS...]");
  add_import_options(import_deepspeed);
  import_deepspeed->add_option("config", import_args.ds_config, "DeepSpeed JSON config")->required();
  import_deepspeed->add_option("flags", import_args.flags, "Megatron-LM flags of the same launch, after --");

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    std::fprintf(stderr, "weft: error: %s (see weft --help)\n", what.c_str());
    return 2;
  }

  weft::setup_logging(log_level.empty() ? "info" : log_level);
  recipe_args.log_level_given = !log_level.empty();
  if (train->parsed()) {
    weft::cli::resolve_resume_form(recipe_args.recipe, resume_dir);
    return weft::cli::cmd_train(recipe_args, resume_opt->count() > 0, resume_dir, overwrite, override_schedule);
  }
  if (plan->parsed()) return weft::cli::cmd_plan(recipe_args, plan_world, plan_memory_gb, plan_precision, plan_json);
  if (import->parsed()) return weft::cli::cmd_import(import_args);
  if (check->parsed()) return weft::cli::cmd_check(recipe_args, check_json);
  if (plugins->parsed()) return weft::cli::cmd_plugins(plugin_name);
  if (eval->parsed()) return weft::cli::cmd_eval(eval_checkpoints, text_file);
  if (export_cmd->parsed()) return weft::cli::cmd_export(export_checkpoint, export_format, export_out);
  if (plot->parsed()) return weft::cli::cmd_plot(plot_dirs, plot_out);
  if (generate->parsed()) return weft::cli::cmd_generate(checkpoint, prompt, tokens, temperature, top_k, seed);
  if (preprocess->parsed()) return weft::cli::cmd_preprocess(recipe_args, pre);
  if (data->parsed()) return weft::cli::cmd_data(recipe_args, data_samples, data_json);
  return 2;
}

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  // Fixed glibc thresholds: by default freeing a large block raises the mmap
  // threshold to its size and the heap top is trimmed after every step, so
  // host buffers that come and go each step would be unmapped and
  // page-faulted back in. Kept, they are reused; the backends bound what
  // they cache themselves.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  try {
    return run(argc, argv);
  } catch (const weft::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "weft: error: %s\n", one_line(e.what()).c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "weft: internal error: %s\n", one_line(e.what()).c_str());
    return 1;
  }
}
