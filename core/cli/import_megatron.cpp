// `weft import megatron [--strict] [-o FILE] -- FLAGS...`: Megatron-LM's
// arguments (optionally with the torchrun or deepspeed launcher in front)
// as a weft recipe. Every flag weft knows is in kFlags below with the recipe
// key it writes; a key this build of weft lacks is reported as "not in this
// version" (recipe_draft.hpp), so a mapping starts writing when its key lands.
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include "commands.hpp"
#include "import.hpp"
#include "runtime.hpp"
#include "weft/error.hpp"
#include "weft/recipe.hpp"

namespace fs = std::filesystem;

namespace weft::cli {

namespace {

enum class Take {
  Value,     // one argument -> target
  Switch,    // no argument -> target = value
  Special,   // arguments converted in apply_special(), which writes `target`
  Ignored,   // no effect on what is computed in weft (fusions, logging): listed; --strict lets it pass
  NotTaken,  // changes the model or the training in a way this weft cannot follow: listed; --strict refuses
};

struct FlagRule {
  const char* flag;
  Take take;
  int args;            // arguments after the flag (-1: every one up to the next flag)
  const char* target;  // recipe key written ("a.k|b.k": the first this weft has); "" when none
  const char* value;   // Switch: the value written
  const char* why;     // Special: the conversion; Ignored / NotTaken: the reason
  bool droppable;      // not part of the layout: left out with a line on stderr when this weft refuses its value
};

// The one table of Megatron-LM flags. Keep every mapping here.
const FlagRule kFlags[] = {
    // layout
    {"--tensor-model-parallel-size", Take::Value, 1, "parallel.tensor", "", "", false},
    {"--pipeline-model-parallel-size", Take::Value, 1, "parallel.pipeline", "", "", false},
    {"--expert-model-parallel-size", Take::Value, 1, "parallel.expert", "", "", true},
    {"--context-parallel-size", Take::Special, 1, "", "", "1 is weft's only context-parallel size", false},
    {"--sequence-parallel", Take::Switch, 0, "parallel.tensor_parallel.sequence_parallel", "true", "", true},
    {"--use-distributed-optimizer", Take::Switch, 0, "parallel.data_parallel.plugin", "zero1", "", false},
    {"--zero-stage", Take::Special, 1, "parallel.data_parallel.plugin", "", "0 -> ddp, 1 -> zero1", false},
    {"--num-layers-per-virtual-pipeline-stage", Take::Special, 1, "parallel.pipeline_schedule.virtual_stages", "",
     "interleaved schedule, virtual_stages = num-layers / (pipeline x N)", false},
    {"--num-virtual-stages-per-pipeline-rank", Take::Special, 1, "parallel.pipeline_schedule.virtual_stages", "",
     "interleaved schedule", false},
    // model
    {"--num-layers", Take::Value, 1, "model.layers", "", "", false},
    {"--hidden-size", Take::Value, 1, "model.hidden", "", "", false},
    {"--num-attention-heads", Take::Value, 1, "model.heads", "", "", false},
    {"--seq-length", Take::Value, 1, "model.seq_length", "", "", false},
    {"--encoder-seq-length", Take::Value, 1, "model.seq_length", "", "", false},
    {"--max-position-embeddings", Take::Special, 1, "model.max_position_embeddings", "",
     "without that key: the position embedding has seq_length rows", true},
    {"--init-method-std", Take::Value, 1, "model.init_std", "", "", false},
    {"--make-vocab-size-divisible-by", Take::Value, 1, "model.vocab_pad_multiple", "", "", false},
    {"--vocab-size", Take::Value, 1, "model.vocab_size", "", "", false},
    {"--ffn-hidden-size", Take::Special, 1, "", "", "4 x hidden-size is weft's MLP width", false},
    {"--kv-channels", Take::Special, 1, "", "", "hidden-size / num-attention-heads is weft's head width", false},
    {"--num-experts", Take::Value, 1, "model.moe_experts", "", "", true},
    {"--moe-router-topk", Take::Value, 1, "model.moe_top_k", "", "", true},
    {"--moe-layer-freq", Take::Value, 1, "model.moe_every", "", "", true},
    {"--moe-aux-loss-coeff", Take::Value, 1, "model.moe_aux_loss_coef", "", "", true},
    {"--moe-z-loss-coeff", Take::Value, 1, "model.moe_z_loss_coef", "", "", true},
    {"--moe-expert-capacity-factor", Take::Value, 1, "model.moe_capacity_factor", "", "", true},
    {"--moe-token-dispatcher-type", Take::Value, 1, "parallel.expert_parallel.plugin", "", "", true},
    {"--moe-router-load-balancing-type", Take::Special, 1, "", "", "aux_loss is weft's load balancing", true},
    {"--recompute-activations", Take::Switch, 0, "model.recompute", "selective", "", true},
    {"--recompute-granularity", Take::Value, 1, "model.recompute", "", "", true},
    {"--checkpoint-activations", Take::Switch, 0, "model.recompute", "full", "", true},
    {"--recompute-method", Take::Special, 1, "model.recompute_layers", "",
     "uniform: every block (0); block: the first --recompute-num-layers blocks", true},
    {"--recompute-num-layers", Take::Special, 1, "model.recompute_layers", "", "with --recompute-method block", true},
    {"--hidden-dropout", Take::Value, 1, "model.hidden_dropout", "", "", true},
    {"--attention-dropout", Take::Value, 1, "model.attention_dropout", "", "", true},
    {"--untie-embeddings-and-output-weights", Take::Switch, 0, "model.untie_embeddings", "true", "", false},
    {"--disable-bias-linear", Take::Switch, 0, "model.bias", "false", "", false},
    {"--norm-epsilon", Take::Value, 1, "model.norm_eps", "", "", false},
    {"--layernorm-epsilon", Take::Value, 1, "model.norm_eps", "", "", false},
    {"--position-embedding-type", Take::Special, 1, "", "", "learned_absolute is weft GPT's position embedding", false},
    {"--normalization", Take::Special, 1, "", "", "LayerNorm is weft GPT's normalisation", false},
    {"--swiglu", Take::NotTaken, 0, "", "", "weft's GPT MLP is GeLU 4x (no SwiGLU in this version)", false},
    {"--use-rotary-position-embeddings", Take::NotTaken, 0, "", "", "weft's GPT has learned positions (no RoPE)", false},
    {"--rotary-percent", Take::NotTaken, 1, "", "", "weft's GPT has learned positions (no RoPE)", false},
    {"--rotary-base", Take::NotTaken, 1, "", "", "weft's GPT has learned positions (no RoPE)", false},
    {"--group-query-attention", Take::NotTaken, 0, "", "", "weft's attention has as many key/value heads as heads", false},
    {"--num-query-groups", Take::NotTaken, 1, "", "", "weft's attention has as many key/value heads as heads", false},
    {"--squared-relu", Take::NotTaken, 0, "", "", "weft's GPT MLP is GeLU", false},
    {"--apply-layernorm-1p", Take::NotTaken, 0, "", "", "weft's LayerNorm weights are not offset by 1", false},
    // batch and schedule
    {"--micro-batch-size", Take::Value, 1, "batch.micro", "", "", false},
    {"--global-batch-size", Take::Value, 1, "batch.global", "", "", false},
    {"--rampup-batch-size", Take::Special, 3, "batch.rampup_start", "",
     "start, increment, samples -> batch.rampup_start, rampup_increment, rampup_samples", false},
    {"--train-iters", Take::Value, 1, "run.steps", "", "", false},
    {"--seed", Take::Value, 1, "run.seed", "", "", false},
    {"--optimizer", Take::Special, 1, "optimizer.plugin", "", "adam -> adamw (decoupled weight decay), sgd", false},
    {"--lr", Take::Value, 1, "optimizer.lr", "", "", false},
    {"--weight-decay", Take::Value, 1, "optimizer.weight_decay", "", "", false},
    {"--start-weight-decay", Take::Value, 1, "optimizer.weight_decay_start|lr_schedule.weight_decay_start", "", "",
     false},
    {"--end-weight-decay", Take::Value, 1, "optimizer.weight_decay_end|lr_schedule.weight_decay_end", "", "", false},
    {"--weight-decay-incr-style", Take::Value, 1, "optimizer.weight_decay_style|lr_schedule.weight_decay_style", "",
     "", false},
    {"--clip-grad", Take::Value, 1, "optimizer.clip_grad_norm", "", "", false},
    {"--adam-beta1", Take::Value, 1, "optimizer.beta1", "", "", false},
    {"--adam-beta2", Take::Value, 1, "optimizer.beta2", "", "", false},
    {"--adam-eps", Take::Value, 1, "optimizer.eps", "", "", false},
    {"--sgd-momentum", Take::Value, 1, "optimizer.momentum", "", "", false},
    {"--lr-decay-style", Take::Special, 1, "lr_schedule.plugin", "",
     "constant, linear, cosine; inverse-square-root -> inverse_square_root; WSD -> wsd", false},
    {"--min-lr", Take::Value, 1, "lr_schedule.min_lr", "", "", false},
    {"--lr-decay-iters", Take::Value, 1, "lr_schedule.decay_steps", "", "", false},
    {"--lr-warmup-iters", Take::Value, 1, "lr_schedule.warmup_steps", "", "", false},
    {"--lr-warmup-fraction", Take::Value, 1, "lr_schedule.warmup_fraction", "", "", false},
    {"--lr-warmup-init", Take::Value, 1, "lr_schedule.warmup_init_lr", "", "", false},
    {"--train-samples", Take::Special, 1, "run.steps", "", "samples / global-batch-size, rounded up", false},
    {"--lr-decay-samples", Take::Special, 1, "lr_schedule.decay_steps", "", "samples / global-batch-size, rounded up",
     false},
    {"--lr-warmup-samples", Take::Special, 1, "lr_schedule.warmup_steps", "",
     "samples / global-batch-size, rounded up", false},
    // precision
    {"--bf16", Take::Switch, 0, "precision.plugin", "bf16", "", false},
    {"--fp16", Take::Switch, 0, "precision.plugin", "fp16", "", false},
    {"--loss-scale", Take::Special, 1, "precision.initial_scale", "",
     "a static scale: initial_scale, growth_factor = 1, backoff_factor = 1", false},
    {"--initial-loss-scale", Take::Value, 1, "precision.initial_scale", "", "", false},
    {"--min-loss-scale", Take::Value, 1, "precision.min_scale", "", "", false},
    {"--loss-scale-window", Take::Value, 1, "precision.growth_interval", "", "", false},
    {"--hysteresis", Take::Value, 1, "precision.hysteresis", "", "", false},
    {"--grad-reduce-in-bf16", Take::Switch, 0, "precision.accumulate_grads_in_fp32", "false",
     "gradients accumulated over microbatches and reduced over data parallelism in bf16", true},
    // data and tokenizer
    {"--data-path", Take::Special, -1, "data.paths", "",
     "data.plugin = megatron; weights and prefixes as written, prefixes relative to the recipe file", false},
    {"--split", Take::Value, 1, "data.split", "", "", false},
    {"--mock-data", Take::Switch, 0, "data.plugin", "synthetic", "", false},
    {"--eod-mask-loss", Take::Switch, 0, "data.eod_mask_loss", "true", "", false},
    {"--reset-position-ids", Take::Switch, 0, "data.reset_position_ids", "true", "", false},
    {"--reset-attention-mask", Take::Switch, 0, "data.reset_attention_mask", "true", "", false},
    {"--tokenizer-type", Take::Special, 1, "tokenizer.plugin", "",
     "HuggingFaceTokenizer, HFTokenizer -> hf; GPT2BPETokenizer -> gpt2", false},
    {"--tokenizer-model", Take::Special, 1, "tokenizer.file", "",
     "a tokenizer.json or its folder; a hub name becomes a path to fill in", false},
    {"--vocab-file", Take::Value, 1, "tokenizer.vocab_file", "", "", false},
    {"--merge-file", Take::Value, 1, "tokenizer.merge_file", "", "", false},
    // checkpoints, logging, evaluation
    {"--save", Take::Special, 1, "run.out_dir", "", "and run.name = its last folder", false},
    {"--save-interval", Take::Value, 1, "checkpoint.interval", "", "", false},
    {"--load", Take::Special, 1, "checkpoint.resume", "",
     "true when it is --save's folder; another folder: weft train --resume=DIR", false},
    {"--log-interval", Take::Value, 1, "log.interval", "", "", false},
    {"--eval-interval", Take::Value, 1, "eval.interval", "", "", false},
    {"--eval-iters", Take::Value, 1, "eval.iters", "", "", false},
    {"--exit-interval", Take::NotTaken, 1, "", "", "a run stops at run.steps (or on SIGTERM, checkpointing)", false},
    {"--exit-duration-in-mins", Take::NotTaken, 1, "", "", "a run stops at run.steps (or on SIGTERM, checkpointing)",
     false},
    {"--finetune", Take::NotTaken, 0, "", "", "resuming always restores the optimizer and data position", false},
    {"--no-load-optim", Take::NotTaken, 0, "", "", "resuming always restores the optimizer state", false},
    {"--no-load-rng", Take::NotTaken, 0, "", "", "resuming always restores the RNG state", false},
    {"--no-save-optim", Take::NotTaken, 0, "", "", "checkpoints always hold the optimizer state", false},
    // DeepSpeed inside a Megatron launch
    {"--deepspeed", Take::Ignored, 0, "", "", "ZeRO-1 is weft's own data-parallel plugin", false},
    {"--deepspeed_config", Take::Special, 1, "", "", "read as by weft import deepspeed", false},
    {"--deepspeed-config", Take::Special, 1, "", "", "read as by weft import deepspeed", false},
    // no effect on what weft computes: kernels, overlap, logging, I/O
    {"--use-flash-attn", Take::Ignored, 0, "", "", "weft's attention is always fused", false},
    {"--use-mcore-models", Take::Ignored, 0, "", "", "one model implementation", false},
    {"--use-legacy-models", Take::Ignored, 0, "", "", "one model implementation", false},
    {"--transformer-impl", Take::Ignored, 1, "", "", "one model implementation", false},
    {"--distributed-backend", Take::Ignored, 1, "", "", "[comm] plugin = auto picks the communicator", false},
    {"--no-masked-softmax-fusion", Take::Ignored, 0, "", "", "a kernel choice", false},
    {"--no-bias-gelu-fusion", Take::Ignored, 0, "", "", "a kernel choice", false},
    {"--no-bias-dropout-fusion", Take::Ignored, 0, "", "", "a kernel choice", false},
    {"--no-gradient-accumulation-fusion", Take::Ignored, 0, "", "", "a kernel choice", false},
    {"--no-async-tensor-model-parallel-allreduce", Take::Ignored, 0, "", "", "a communication schedule", false},
    {"--overlap-grad-reduce", Take::Ignored, 0, "", "", "gradient buckets always overlap the backward", false},
    {"--overlap-param-gather", Take::Ignored, 0, "", "", "a communication schedule", false},
    {"--tp-comm-overlap", Take::Ignored, 0, "", "", "a communication schedule", false},
    {"--moe-grouped-gemm", Take::Ignored, 0, "", "", "a kernel choice", false},

    {"--attention-softmax-in-fp32", Take::Ignored, 0, "", "", "weft's softmax is always fp32", false},
    {"--accumulate-allreduce-grads-in-fp32", Take::Ignored, 0, "", "",
     "weft's default: gradients are fp32 unless --grad-reduce-in-bf16", false},
    {"--fp32-residual-connection", Take::Ignored, 0, "", "", "weft's residual stream is always fp32", false},
    {"--apply-query-key-layer-scaling", Take::Ignored, 0, "", "", "mathematically the same scores", false},
    {"--num-workers", Take::Ignored, 1, "", "", "data loading", false},
    {"--dataloader-type", Take::Ignored, 1, "", "", "data loading", false},
    {"--data-cache-path", Take::Ignored, 1, "", "", "data loading", false},
    {"--no-create-attention-mask-in-dataloader", Take::Ignored, 0, "", "", "data loading", false},
    {"--empty-unused-memory-level", Take::Ignored, 1, "", "", "memory management", false},
    {"--manual-gc", Take::Ignored, 0, "", "", "memory management", false},
    {"--ckpt-format", Take::Ignored, 1, "", "", "weft writes its own checkpoint format", false},
    {"--use-dist-ckpt", Take::Ignored, 0, "", "", "weft writes its own checkpoint format", false},
    {"--log-throughput", Take::Ignored, 0, "", "", "tokens/s and MFU are always logged", false},
    {"--log-params-norm", Take::Ignored, 0, "", "", "logging", false},
    {"--log-num-zeros-in-grad", Take::Ignored, 0, "", "", "logging", false},
    {"--log-timers-to-tensorboard", Take::Ignored, 0, "", "", "logging", false},
    {"--log-validation-ppl-to-tensorboard", Take::Ignored, 0, "", "", "logging", false},
    {"--timing-log-level", Take::Ignored, 1, "", "", "logging ([log] timers)", false},
    {"--tensorboard-dir", Take::Ignored, 1, "", "", "TensorBoard files go to out_dir/tensorboard ([log] sinks)", false},
    {"--tensorboard-log-interval", Take::Ignored, 1, "", "", "logging", false},
    {"--wandb-project", Take::Ignored, 1, "", "", "logging", false},
    {"--wandb-exp-name", Take::Ignored, 1, "", "", "logging", false},
};

// Megatron-LM's defaults where they differ from weft's, written so that the
// imported run is the Megatron run even for flags the launch leaves out.
struct SourceDefault {
  const char* flag;
  const char* target;
  const char* value;
};
const SourceDefault kMegatronDefaults[] = {
    {"--adam-beta2", "optimizer.beta2", "0.999"},
    {"--weight-decay", "optimizer.weight_decay", "0.01"},
    {"--lr-decay-style", "lr_schedule.plugin", "linear"},
    {"--make-vocab-size-divisible-by", "model.vocab_pad_multiple", "128"},
    {"--log-interval", "log.interval", "100"},
    {"--hidden-dropout", "model.hidden_dropout", "0.1"},
    {"--attention-dropout", "model.attention_dropout", "0.1"},
};

const FlagRule* find_rule(const std::string& flag) {
  for (const FlagRule& r : kFlags)
    if (flag == r.flag) return &r;
  return nullptr;
}

struct ImportState {
  explicit ImportState(const Registry& r) : registry(r), draft(r) {}
  const Registry& registry;
  RecipeDraft draft;
  std::map<std::string, std::pair<int64_t, std::string>> implied;  // flag -> (value, source), see finish()
  struct Samples {
    std::string target;
    int64_t samples;
    std::string source;
  };
  std::vector<Samples> samples;  // --train-samples and friends: steps of the global batch, see finish()
  int world = 0;
  std::string world_source;                 // "--nproc_per_node 4 x --nnodes 4"
  std::vector<std::string> ds_configs;      // DeepSpeed configs to read
  std::optional<std::string> save_dir, load_dir;
  std::optional<int64_t> vpp_layers;        // --num-layers-per-virtual-pipeline-stage
  std::string recompute_method;
  std::optional<int64_t> recompute_layers;
  std::string recompute_layers_source;
  fs::path out_dir;                         // where the recipe goes: data paths are made relative to it
  std::optional<std::string> tokenizer_model;  // --tokenizer-model
};

std::string joined(const std::string& flag, const std::vector<std::string>& args) {
  std::string s = flag;
  for (const std::string& a : args) s += " " + a;
  return s;
}

bool is_flag(const std::string& s) { return s.size() > 2 && s[0] == '-' && s[1] == '-'; }

int64_t int_arg(const std::string& source, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE) throw Error(source + ": '" + text + "' is not an integer");
  return v;
}

// A path the launch named relative to its working folder, as the recipe names
// it: relative to the folder the recipe is written to.
std::string recipe_relative(const ImportState& st, const std::string& path) {
  if (st.out_dir.empty() || fs::path(path).is_absolute()) return path;
  return fs::absolute(path).lexically_normal().lexically_relative(st.out_dir).string();
}

void apply_special(const FlagRule& rule, const std::vector<std::string>& args, ImportState& st) {
  const std::string flag = rule.flag, source = joined(flag, args);
  RecipeDraft& d = st.draft;
  if (flag == "--context-parallel-size") {
    if (int_arg(source, args[0]) != 1) d.unmapped(source, "not taken: context parallelism is not in this version");
  } else if (flag == "--zero-stage") {
    const int64_t stage = int_arg(source, args[0]);
    if (stage == 0 || stage == 1) {
      d.set(rule.target, stage == 0 ? "ddp" : "zero1", source);
    } else {
      throw Error(source + ": ZeRO stage " + args[0] + " (" +
                  (stage == 2 ? "sharded gradients" : stage == 3 ? "sharded parameters" : "unknown") +
                  ") is not available in this version: stage 1 is parallel.data_parallel.plugin = \"zero1\", "
                  "stage 0 \"ddp\"");
    }
  } else if (flag == "--num-layers-per-virtual-pipeline-stage") {
    st.vpp_layers = int_arg(source, args[0]);
    d.set("parallel.pipeline_schedule.plugin", "interleaved", source);
  } else if (flag == "--num-virtual-stages-per-pipeline-rank") {
    d.set("parallel.pipeline_schedule.plugin", "interleaved", source);
    d.set(rule.target, args[0], source);
  } else if (flag == "--max-position-embeddings" || flag == "--ffn-hidden-size" || flag == "--kv-channels") {
    st.implied[flag] = {int_arg(source, args[0]), source};  // checked in finish(), once the model's sizes are known
  } else if (flag == "--train-samples" || flag == "--lr-decay-samples" || flag == "--lr-warmup-samples") {
    st.samples.push_back({rule.target, int_arg(source, args[0]), source});  // steps once the global batch is known
  } else if (flag == "--moe-router-load-balancing-type") {
    if (args[0] != "aux_loss") d.unmapped(source, "not taken: aux_loss is weft's only load balancing");
  } else if (flag == "--position-embedding-type") {
    if (args[0] != "learned_absolute") d.unmapped(source, "not taken: weft's GPT has learned absolute positions (no " + args[0] + ")");
  } else if (flag == "--normalization") {
    if (args[0] != "LayerNorm") d.unmapped(source, "not taken: weft's GPT normalises with LayerNorm (no " + args[0] + ")");
  } else if (flag == "--recompute-method") {
    st.recompute_method = args[0];
    if (args[0] != "uniform" && args[0] != "block") throw Error(source + ": expected uniform or block");
  } else if (flag == "--recompute-num-layers") {
    st.recompute_layers = int_arg(source, args[0]);
    st.recompute_layers_source = source;
  } else if (flag == "--rampup-batch-size") {
    d.set("batch.rampup_start", args[0], source);
    d.set("batch.rampup_increment", args[1], source);
    d.set("batch.rampup_samples", args[2], source);
  } else if (flag == "--optimizer") {
    if (args[0] == "adam") d.set(rule.target, "adamw", source);
    else if (args[0] == "sgd") d.set(rule.target, "sgd", source);
    else d.unmapped(source, "not taken: optimizer '" + args[0] + "' is not in this version (adam, sgd)");
  } else if (flag == "--lr-decay-style") {
    std::string style = args[0];
    if (style == "inverse-square-root") style = "inverse_square_root";
    if (style == "WSD") style = "wsd";
    d.set(rule.target, style, source);
  } else if (flag == "--loss-scale") {
    d.set("precision.initial_scale", args[0], source);
    d.set("precision.growth_factor", "1.0", source + " (static)");
    d.set("precision.backoff_factor", "1.0", source + " (static)");
  } else if (flag == "--data-path") {
    if (args.empty()) throw Error("--data-path: expects one or more dataset prefixes");
    std::vector<std::string> paths;
    // A blend alternates weight and prefix; only prefixes are paths.
    char* end = nullptr;
    const bool blend = args.size() > 1 && (std::strtod(args[0].c_str(), &end), *end == '\0');
    for (size_t i = 0; i < args.size(); ++i)
      paths.push_back(blend && i % 2 == 0 ? args[i] : recipe_relative(st, args[i]));
    d.set("data.plugin", "megatron", source);
    d.set_list(rule.target, paths, source);
  } else if (flag == "--tokenizer-type") {
    const std::string& t = args[0];
    if (t == "HuggingFaceTokenizer" || t == "HFTokenizer") d.set(rule.target, "hf", source);
    else if (t == "GPT2BPETokenizer") d.set(rule.target, "gpt2", source);
    else d.unmapped(source, "not taken: tokenizer type " + t + " is not in this version (hf and gpt2 byte-level BPE; "
                              "SentencePiece is not)");
  } else if (flag == "--tokenizer-model") {
    st.tokenizer_model = args[0];  // written in finish(), once the tokenizer type is known
  } else if (flag == "--save") {
    st.save_dir = args[0];
    d.set(rule.target, args[0], source + " (checkpoints in out_dir/checkpoints)");
    const std::string name = fs::path(args[0]).lexically_normal().filename().string();
    if (!name.empty() && name != "." && name != "..") d.set("run.name", name, source);
  } else if (flag == "--load") {
    st.load_dir = args[0];
  } else if (flag == "--deepspeed_config" || flag == "--deepspeed-config") {
    st.ds_configs.push_back(args[0]);
  }
}

// Splits a pasted launch line: what comes before the training script (a
// *.py word) is the launcher's; --nproc_per_node / --nnodes (torchrun) or
// --num_gpus / --num_nodes (deepspeed) give the world size.
std::vector<std::string> strip_launcher(const std::vector<std::string>& words, ImportState& st) {
  size_t script = words.size();
  for (size_t i = 0; i < words.size(); ++i)
    if (words[i].size() > 3 && words[i].compare(words[i].size() - 3, 3, ".py") == 0 && !is_flag(words[i])) {
      script = i;
      break;
    }
  if (script == words.size()) return words;
  int per_node = 0, nodes = 1;
  std::string per_node_src, nodes_src;
  for (size_t i = 0; i < script; ++i) {
    std::string w = words[i], v;
    const size_t eq = w.find('=');
    if (eq != std::string::npos) v = w.substr(eq + 1), w = w.substr(0, eq);
    else if (i + 1 < script) v = words[i + 1];
    if (w == "--nproc_per_node" || w == "--nproc-per-node" || w == "--num_gpus" || w == "--num-gpus") {
      per_node = static_cast<int>(int_arg(w, v));
      per_node_src = w + " " + v;
    } else if (w == "--nnodes" || w == "--num_nodes" || w == "--num-nodes") {
      nodes = static_cast<int>(int_arg(w, v));
      nodes_src = w + " " + v;
    }
  }
  if (per_node > 0 && st.world == 0) {
    st.world = per_node * nodes;
    st.world_source = per_node_src + (nodes_src.empty() ? "" : " x " + nodes_src);
  }
  return std::vector<std::string>(words.begin() + static_cast<long>(script) + 1, words.end());
}

void parse_flags(const std::vector<std::string>& words, ImportState& st) {
  for (size_t i = 0; i < words.size();) {
    std::string word = words[i++];
    if (word == "\\" || word.empty()) continue;
    if (!is_flag(word)) {
      st.draft.unmapped(word, "an argument without a flag");
      continue;
    }
    std::vector<std::string> args;
    const size_t eq = word.find('=');
    if (eq != std::string::npos) {
      args.push_back(word.substr(eq + 1));
      word = word.substr(0, eq);
    }
    const FlagRule* rule = find_rule(word);
    const int want = rule ? rule->args : -1;
    // Arguments: as many as the rule takes; for unknown flags, up to the next flag.
    while (i < words.size() && (want < 0 ? !is_flag(words[i]) : static_cast<int>(args.size()) < want)) {
      if (words[i] == "\\") {
        ++i;
        continue;
      }
      if (is_flag(words[i])) break;
      args.push_back(words[i++]);
    }
    const std::string source = joined(word, args);
    if (!rule) {
      st.draft.unmapped(source, "a flag weft import does not know");
      continue;
    }
    if (want >= 0 && static_cast<int>(args.size()) != want)
      throw Error(source + ": expects " + std::to_string(want) + " value" + (want == 1 ? "" : "s"));
    switch (rule->take) {
      case Take::Value: st.draft.set(rule->target, args[0], source, rule->droppable); break;
      case Take::Switch: st.draft.set(rule->target, rule->value, source, rule->droppable); break;
      case Take::Special: apply_special(*rule, args, st); break;
      case Take::Ignored: st.draft.unmapped(source, std::string("ignored: ") + rule->why, false); break;
      case Take::NotTaken: st.draft.unmapped(source, std::string("not taken: ") + rule->why); break;
    }
  }
}

// Conversions that need several flags, the world size and the DeepSpeed batch.
void finish(ImportState& st, const DeepSpeedBatch& ds) {
  RecipeDraft& d = st.draft;
  const int64_t tp = d.get_int("parallel", "tensor").value_or(1), pp = d.get_int("parallel", "pipeline").value_or(1);
  const std::optional<int64_t> layers = d.get_int("model", "layers"), hidden = d.get_int("model", "hidden"),
                               heads = d.get_int("model", "heads"), seq = d.get_int("model", "seq_length");
  for (const auto& [flag, given] : st.implied) {
    const auto& [value, source] = given;
    if (flag == "--max-position-embeddings") {
      if (recipe_option(st.registry, "model", "", "max_position_embeddings")) {
        d.set("model.max_position_embeddings", std::to_string(value), source, true);
      } else if (seq && *seq == value) {
        d.comment(source + ": the position embedding has seq_length = " + std::to_string(*seq) + " rows");
      } else {
        d.unmapped(source, "not in this version: the position embedding has seq_length rows (model.seq_length" +
                               (seq ? " = " + std::to_string(*seq) : std::string()) + ")");
      }
    } else {
      const bool ffn = flag == "--ffn-hidden-size";
      const std::optional<int64_t> implied =
          ffn ? (hidden ? std::optional<int64_t>(4 * *hidden) : std::nullopt)
              : (hidden && heads && *heads > 0 ? std::optional<int64_t>(*hidden / *heads) : std::nullopt);
      const std::string what = ffn ? "4 x hidden" : "hidden / heads";
      if (implied && *implied == value)
        d.comment(source + ": " + what + ", as weft's GPT has it");
      else
        d.unmapped(source, "not taken: weft's GPT has " + what +
                               (implied ? " = " + std::to_string(*implied) : std::string()));
    }
  }
  // Megatron counts these in samples, weft in steps of the global batch.
  for (const ImportState::Samples& smp : st.samples) {
    const std::optional<int64_t> global = d.get_int("batch", "global");
    if (!global || *global < 1) {
      d.unmapped(smp.source, "not taken: counting steps from samples needs --global-batch-size");
      continue;
    }
    const bool rampup = d.find("batch", "rampup_start") != nullptr;
    d.set(smp.target, std::to_string((smp.samples + *global - 1) / *global),
          smp.source + " / global batch " + std::to_string(*global) + (rampup ? " (ramp-up not counted)" : ""));
  }
  if (st.vpp_layers) {
    const int64_t n = *st.vpp_layers;
    const std::string source = "--num-layers-per-virtual-pipeline-stage " + std::to_string(n);
    if (!layers) throw Error(source + ": needs --num-layers");
    if (n < 1 || *layers % (pp * n) != 0)
      throw Error(source + ": --num-layers " + std::to_string(*layers) + " is not divisible by pipeline " +
                  std::to_string(pp) + " x " + std::to_string(n));
    d.set("parallel.pipeline_schedule.virtual_stages", std::to_string(*layers / (pp * n)),
          source + " (num-layers " + std::to_string(*layers) + " / (pipeline " + std::to_string(pp) + " x " +
              std::to_string(n) + "))");
  }
  if (st.recompute_layers || !st.recompute_method.empty()) {
    const std::string source = "--recompute-method " + (st.recompute_method.empty() ? "uniform" : st.recompute_method) +
                               (st.recompute_layers ? " " + st.recompute_layers_source : std::string());
    if (st.recompute_method == "block" && st.recompute_layers && pp == 1) {
      d.set("model.recompute_layers", std::to_string(*st.recompute_layers), source, true);
    } else {
      // uniform recomputes every block; block with pipeline stages counts
      // per stage, which weft's first-N-blocks cannot say: every block is
      // recomputed (the losses are the same, only memory and time differ).
      d.set("model.recompute_layers", "0", source + " (every block)", true);
      if (st.recompute_method == "block")
        d.unmapped(source, "mapped to every block: Megatron counts the blocks per pipeline stage, "
                           "model.recompute_layers from the first block of the model",
                   false);
    }
  }
  if (st.tokenizer_model) {
    const std::string& model = *st.tokenizer_model;
    const std::string source = "--tokenizer-model " + model;
    const DraftKey* type = d.find("tokenizer", "plugin");
    if (!type || type->raw != "hf") {
      d.unmapped(source, "not taken: a tokenizer model file goes with --tokenizer-type HuggingFaceTokenizer");
    } else {
      const fs::path given(model);
      std::error_code ec;
      if (fs::is_regular_file(given, ec)) {
        d.set("tokenizer.file", recipe_relative(st, model), source);
      } else if (fs::is_regular_file(given / "tokenizer.json", ec)) {
        d.set("tokenizer.file", recipe_relative(st, (given / "tokenizer.json").string()), source);
      } else {
        // A hub name (no network here): the user puts the file there.
        const std::string path = (given / "tokenizer.json").string();
        d.set("tokenizer.file", path, source + "; FILL IN: put that model's tokenizer.json here (weft does not download)");
        std::fprintf(stderr, "weft import: fill in tokenizer.file: %s is not a local file or folder; put the "
                             "tokenizer.json of the Hugging Face model %s at %s (relative to the recipe)\n",
                     model.c_str(), model.c_str(), path.c_str());
      }
    }
  }
  if (st.load_dir) {
    const std::string source = "--load " + *st.load_dir;
    if (st.save_dir && fs::path(*st.load_dir).lexically_normal() == fs::path(*st.save_dir).lexically_normal())
      d.set("checkpoint.resume", "true", source + " (= --save)");
    else
      d.unmapped(source, "a folder other than --save's: start with weft train RECIPE --resume=" + *st.load_dir, false);
  }

  // The batch: DeepSpeed's sizes, the data-parallel size from the world, the identities.
  if (ds.micro) d.set("batch.micro", std::to_string(*ds.micro), ds.file + ": train_micro_batch_size_per_gpu");
  if (ds.train_batch) d.set("batch.global", std::to_string(*ds.train_batch), ds.file + ": train_batch_size");
  const int64_t micro = d.get_int("batch", "micro").value_or(1);
  std::optional<int64_t> dp;
  std::string dp_source;
  if (st.world > 0) {
    if (st.world % (tp * pp) != 0)
      throw Error("world " + std::to_string(st.world) + " (" + st.world_source +
                  ") is not divisible by --tensor-model-parallel-size " + std::to_string(tp) +
                  " x --pipeline-model-parallel-size " + std::to_string(pp) + " = " + std::to_string(tp * pp));
    dp = st.world / (tp * pp);
    dp_source = "world " + std::to_string(st.world) + " (" + st.world_source + ") / (tensor " + std::to_string(tp) +
                " x pipeline " + std::to_string(pp) + ")";
  } else if (ds.train_batch && ds.micro && ds.accumulation) {
    // DeepSpeed's identity gives the data-parallel size when no world was given.
    const int64_t per_rank = *ds.micro * *ds.accumulation;
    if (per_rank < 1 || *ds.train_batch % per_rank != 0)
      throw Error(ds.file + ": train_batch_size " + std::to_string(*ds.train_batch) +
                  " is not divisible by train_micro_batch_size_per_gpu " + std::to_string(*ds.micro) +
                  " x gradient_accumulation_steps " + std::to_string(*ds.accumulation));
    dp = *ds.train_batch / per_rank;
    dp_source = ds.file + ": train_batch_size / (micro x gradient_accumulation_steps)";
  }
  if (dp) {
    d.set("parallel.data", std::to_string(*dp), dp_source);
    if (ds.train_batch && ds.micro && ds.accumulation && *ds.micro * *ds.accumulation * *dp != *ds.train_batch)
      throw Error(ds.file + ": train_batch_size " + std::to_string(*ds.train_batch) +
                  " != train_micro_batch_size_per_gpu " + std::to_string(*ds.micro) +
                  " x gradient_accumulation_steps " + std::to_string(*ds.accumulation) + " x data-parallel size " +
                  std::to_string(*dp) + " = " + std::to_string(*ds.micro * *ds.accumulation * *dp));
    if (const std::optional<int64_t> global = d.get_int("batch", "global"); global && *global % (micro * *dp) != 0)
      throw Error(d.find("batch", "global")->source + ": global batch " + std::to_string(*global) +
                  " is not divisible by micro " + std::to_string(micro) + " x data " + std::to_string(*dp) + " = " +
                  std::to_string(micro * *dp));
  } else {
    d.set("parallel.data", "auto", "the launcher's world / (tensor x pipeline); weft import --world N fixes it");
  }

  if (!d.find("data", "plugin")) {
    d.set("data.plugin", "synthetic", "no --data-path: synthetic tokens until [data] names a dataset");
    d.unmapped("(no --data-path)", "the recipe trains on synthetic tokens; set [data] plugin = \"megatron\" and paths",
               false);
  }
  for (const SourceDefault& def : kMegatronDefaults)
    d.set_default(def.target, def.value, std::string("Megatron's default (") + def.flag + " not given)");
  // Conventions rather than flags: Megatron's iteration k applies the lr of
  // position k - 1, and its GeLU is the exact (erf) one.
  d.set_default("lr_schedule.step_of_lr", "previous", "Megatron's convention: iteration k applies the lr of step k - 1");
  d.set_default("model.gelu", "erf", "Megatron's GeLU (exact, erf)");
  const DraftKey* data = d.find("data", "plugin");
  if (data && data->raw == "megatron") {
    d.set_default("eval.interval", "1000", "Megatron's default (--eval-interval not given)");
    d.set_default("eval.iters", "100", "Megatron's default (--eval-iters not given)");
  }
}

// The place in the rendered recipe an error names, as the flag that wrote it.
// `rest` gets the message without its place.
std::string blame(const std::string& message, const std::string& tmp_path, RecipeDraft& d, DraftKey** key,
                  std::string& rest) {
  *key = nullptr;
  const std::string prefix = tmp_path + ":";
  rest = message;
  if (message.rfind(prefix, 0) == 0) {
    const int line = std::atoi(message.c_str() + prefix.size());
    const size_t colon = message.find(": ", prefix.size());
    rest = colon == std::string::npos ? message : message.substr(colon + 2);
    for (DraftKey& k : d.keys())
      if (k.line == line) *key = &k;
  }
  for (size_t at; (at = rest.find(tmp_path)) != std::string::npos;) rest.replace(at, tmp_path.size(), "the recipe");
  return *key ? (*key)->source + ": " + rest : rest;
}

// `weft check` on the rendered recipe, with the tokenizer and data swapped
// for built-in ones (the files may live on another machine): every key, the
// layout, the model's sizes, the schedule and the optimizer are checked.
void check_rendered(const std::string& text, const std::string& tmp_path, Registry& registry) {
  {
    std::ofstream out(tmp_path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) throw Error("cannot write " + tmp_path);
  }
  PluginScan scan;
  const std::vector<std::string> swaps = {"tokenizer.plugin=byte", "data.plugin=synthetic", "eval.interval=0"};
  Recipe recipe = load_recipe_for_run(tmp_path, swaps, registry, scan);
  check_recipe_builds(recipe, registry);
}

void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) throw Error("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw Error("cannot write " + path + ": " + ec.message());
  }
}

}  // namespace

int cmd_import(const ImportArgs& args) {
  Plugins plugins;
  load_default_plugins(plugins);
  ImportState st(plugins.registry);
  if (!args.output.empty()) st.out_dir = fs::absolute(args.output).parent_path().lexically_normal();
  if (args.world > 0) {
    st.world = args.world;
    st.world_source = "--world " + std::to_string(args.world);
  }
  const std::vector<std::string> words = strip_launcher(args.flags, st);
  if (!args.ds_config.empty()) st.ds_configs.push_back(args.ds_config);
  parse_flags(words, st);
  DeepSpeedBatch ds;
  for (const std::string& config : st.ds_configs) import_deepspeed_config(config, st.draft, ds);
  finish(st, ds);
  st.draft.resolve();

  const std::string header = std::string("weft recipe imported by `weft import ") +
                             (args.ds_config.empty() ? "megatron" : "deepspeed") +
                             "`: each key names the flag or entry it came from.\n"
                             "Flags and entries not written are listed below (and were printed on stderr).";
  // Render, then check as `weft check` would; a value this weft refuses for a
  // key outside the layout (an expert size, sequence parallelism) is left out
  // and reported, anything else stops the import naming its flag.
  const fs::path tmp_dir = fs::temp_directory_path();
  const std::string tmp_path =
      (tmp_dir / ("weft-import-" + std::to_string(::getpid()) + ".toml")).string();
  std::string text;
  for (int attempt = 0;; ++attempt) {
    RecipeDraft shown = st.draft;
    for (const Unmapped& u : st.draft.unmapped_list()) shown.comment("not written: " + u.source + ": " + u.reason);
    text = shown.render(header);
    st.draft.keys() = shown.keys();  // the lines each key was rendered at
    try {
      check_rendered(text, tmp_path, plugins.registry);
      break;
    } catch (const Error& e) {
      DraftKey* key = nullptr;
      std::string rest;
      const std::string why = blame(e.what(), tmp_path, st.draft, &key, rest);
      // A message that names another flag's key as the cause ("expert
      // parallelism (parallel.expert 4) is not available") drops that one.
      for (DraftKey& other : st.draft.keys())
        if (key && &other != key && other.droppable &&
            why.find(other.section + "." + other.key + " ") != std::string::npos)
          key = &other;
      if (!key || !key->droppable || args.strict || attempt > 32) {
        std::error_code ec;
        fs::remove(tmp_path, ec);
        throw Error(why);
      }
      st.draft.unmapped(key->source, "refused by this version: " + rest);
      st.draft.remove(key->section, key->key);
    }
  }
  std::error_code ec;
  fs::remove(tmp_path, ec);

  int refused = 0;
  std::string first;
  for (const Unmapped& u : st.draft.unmapped_list()) {
    std::fprintf(stderr, "weft import: %s: %s\n", u.source.c_str(), u.reason.c_str());
    if (u.strict_refuses && refused++ == 0) first = u.source + ": " + u.reason;
  }
  if (args.strict && refused > 0)
    throw Error("--strict: " + first + (refused > 1 ? " (and " + std::to_string(refused - 1) + " more listed above)" : ""));
  if (args.output.empty()) {
    std::fputs(text.c_str(), stdout);
  } else {
    write_atomically(args.output, text);
    std::fprintf(stderr, "weft import: wrote %s\n", args.output.c_str());
  }
  return 0;
}

}  // namespace weft::cli
