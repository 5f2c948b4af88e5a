#include "trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "batch_rampup.hpp"
#include "checkpoint.hpp"
#include "hf_format.hpp"
#include "expert_data_parallel.hpp"
#include "logging.hpp"
#include "run_parts.hpp"
#include "stop_signals.hpp"
#include "run_dir.hpp"
#include "runtime.hpp"
#include "safetensors.hpp"
#include "step_timers.hpp"
#include "validation.hpp"
#include "weft/dataset.hpp"
#include "weft/documents.hpp"
#include "weft/grad_sync.hpp"
#include "weft/metrics.hpp"
#include "weft/optimizer.hpp"
#include "weft/params.hpp"
#include "weft/pipeline.hpp"
#include "weft/schedule.hpp"

namespace fs = std::filesystem;

namespace weft {

std::string run_out_dir(const Recipe& recipe) {
  const Options& run = recipe.options("run");
  std::string dir = run.get_string("out_dir");
  return dir.empty() ? "runs/" + run.get_string("name") : dir;
}

namespace {

// --overwrite wins over the recipe's checkpoint.resume, not over --resume (the CLI refuses both).
ResumeMode resume_mode(const TrainArgs& args, bool recipe_resume) {
  if (args.require_checkpoint) return ResumeMode::Require;
  if (args.resume || (recipe_resume && !args.overwrite)) return ResumeMode::IfAny;
  return ResumeMode::Off;
}

// Why a run stops before run.steps (RankTrainer::stop_reason); a larger value wins across ranks.
constexpr int kGoOn = 0, kExitInterval = 1, kExitDuration = 2, kSignal = 3;

class RankTrainer {
 public:
  RankTrainer(const Recipe& recipe, const Registry& registry, const TrainArgs& args, Communicator& world,
              const LaunchInfo& launch)
      : recipe_(recipe), registry_(registry), args_(args), world_(world), launch_(launch) {}

  void run();

 private:
  void build();
  double sum_over(Communicator& group, double value);
  void skip_or_stop(int64_t step, double loss, double norm);
  int stop_reason(int64_t step);
  void wait_for_save();
  std::string last_checkpoint_or_none() const;
  void log_checkpoint(const std::string& dir, double seconds) const;
  void reduce_moe_stats(const std::map<std::string, double>& stats);
  CheckpointGroups checkpoint_groups();
  void sum_tied_grads();
  void load_microbatch(const Dataset& data, int64_t sample0, int64_t accum, int mb, Tensor& ids, Tensor& targets);
  void prepare_microbatch(int64_t sample0, int64_t accum, int mb, bool training, Context& ctx);
  int64_t counted_tokens(const Dataset& data, int64_t sample0, int64_t batch);
  double validation_loss(const std::vector<PipelineOp>& ops, const Shape& activation_shape);
  ScheduleStep schedule_step(Dataset& data, int64_t sample0, int64_t batch, const Shape& activation_shape,
                             bool training, int64_t tokens, float loss_scale = 1.f);
  double mean_loss(double loss_sum, int64_t tokens);
  MetricsRecord record(int64_t step, double loss, double loss_step, double lr, double grad_norm, double step_s,
                       int64_t comm);
  void check_resume(const std::string& dir, const CheckpointMeta& meta);
  double seconds_since_start() const;
  void log_summary(int64_t start) const;

  const Recipe& recipe_;
  const Registry& registry_;
  const TrainArgs& args_;
  Communicator& world_;
  LaunchInfo launch_;
  std::shared_ptr<spdlog::logger> log_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  double last_loss_ = 0;  // of the last step (the last step is always logged)
  StepTimers timers_;
  double peak_tflops_ = 0;  // per rank: backend.peak_tflops, else the measured GEMM rate

  ModelStack stack_;
  std::unique_ptr<Communicator> tp_comm_, pp_comm_, dp_comm_;
  // Expert parallelism: the ep group (dp ranks holding other experts) and the
  // expert-data-parallel group (dp ranks holding the same experts).
  std::unique_ptr<Communicator> ep_comm_, edp_comm_;
  // The first and last stage of this rank's pipeline (Megatron's embedding
  // group): the tied embedding's two copies sum their gradients over it.
  std::unique_ptr<Communicator> embedding_comm_;
  std::unique_ptr<Dataset> dataset_;
  EvalPlan eval_;  // [eval]: the validation part and how often to score it
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LrSchedule> lr_schedule_;
  std::unique_ptr<DataParallel> dp_;
  std::vector<std::unique_ptr<MetricsSink>> sinks_;

  int64_t micro_ = 1, global_ = 1, accum_ = 1, seq_ = 1, steps_ = 1;
  BatchRampup rampup_;       // [batch] rampup_*: the global batch of each step
  int64_t consumed_ = 0;     // data position: samples of the seeded order the steps so far consumed
  int64_t start_samples_ = 0;  // consumed_ when this process started (a resume's position)
  int64_t cur_global_ = 1;   // this step's global batch (batch.global, or less during a ramp-up)
  std::string out_dir_;
  std::vector<std::pair<std::string, double>> moe_metrics_;  // appended to each logged record
  int64_t skipped_steps_ = 0;  // steps without an update (run.on_nan = "skip")
  std::future<void> pending_save_;  // rank 0: the checkpoint being written (checkpoint.async)
  // rank 0: host buffers a save's tensors land in, kept for the next save
  std::shared_ptr<AlignedBytesPool> save_buffers_ = std::make_shared<AlignedBytesPool>();
  int64_t pending_step_ = 0;        // its step (every rank; 0 = none)
  std::vector<std::string> tied_names_;  // params tied across stages (both copies sum their gradients)
  std::vector<int32_t> host_tokens_;     // [B, T+1]
  std::vector<int32_t> host_ids_, host_targets_;
  DocumentMasks masks_;  // [data] eod_mask_loss, reset_position_ids, reset_attention_mask
  int32_t eot_ = -1;     // the tokenizer's end-of-text token
  std::vector<int32_t> host_doc_start_, host_positions_;  // [B, T] of the last microbatch loaded
};

void RankTrainer::build() {
  const int rank = world_.rank();
  log_ = rank_logger(rank, world_.size());
  stack_.topology = make_topology(recipe_.world, rank, recipe_.sizes);
  const Topology& topo = stack_.topology;
  // Group communicators: the colour is the group's first rank, so members agree.
  tp_comm_ = world_.split(topo.tp_group.front(), rank);
  pp_comm_ = world_.split(topo.pp_group.front(), rank);
  dp_comm_ = world_.split(topo.dp_group.front(), rank);
  ep_comm_ = world_.split(topo.ep_group.front(), rank);
  edp_comm_ = world_.split(topo.edp_group.front(), rank);
  const int stages = topo.sizes.pp;
  const bool end_stage = topo.coords.pp == 0 || topo.coords.pp == stages - 1;
  embedding_comm_ = world_.split(end_stage ? topo.pp_group.front() : recipe_.world + rank, rank);
  stack_.parallel.tp = tp_comm_.get();
  stack_.parallel.pp = pp_comm_.get();
  stack_.parallel.dp = dp_comm_.get();
  stack_.parallel.ep = ep_comm_.get();

  BackendEnv env;
  env.rank = rank;
  env.local_rank = launch_.local_rank;
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  env.cores = std::max(1, cores / std::max(1, launch_.local_size));
  build_model_stack(stack_, recipe_, registry_, env);

  // Parameters a later stage reads and the first stage owns (the tied
  // embedding): every rank derives them from the last stage's layers.
  if (topo.sizes.pp > 1) {
    std::vector<Param*> shared;
    stage_params(*stack_.model, stack_.plan, topo.sizes.pp - 1, &shared);
    for (Param* p : shared) tied_names_.push_back(p->name);
  }
  ModelSummary summary = stack_.model->summary();
  seq_ = summary.seq_length;
  micro_ = recipe_.options("batch").get_int("micro");
  global_ = recipe_.options("batch").get_int("global");
  accum_ = recipe_.grad_accum;
  steps_ = recipe_.options("run").get_int("steps");
  rampup_ = BatchRampup::from(recipe_);
  // Megatron ramps up sample-based runs: run.steps x batch.global samples, however many steps that takes.
  if (rampup_.on()) {
    if (steps_ > std::numeric_limits<int64_t>::max() / global_)
      recipe_.options("run").fail("steps", "run.steps x batch.global overflows the sample count");
    steps_ = rampup_.steps_for(steps_ * global_);
  }
  cur_global_ = global_;
  out_dir_ = run_out_dir(recipe_);

  RunParts parts;  // built as `weft check` builds them
  ModelFacts facts{stack_.tokenizer.get(), summary, has_expert_params(stack_.model->params())};
  build_run_parts(parts, recipe_, registry_, facts);
  dataset_ = std::move(parts.dataset);
  optimizer_ = std::move(parts.optimizer);
  lr_schedule_ = std::move(parts.lr_schedule);
  dp_ = std::move(parts.dp);
  if (topo.sizes.ep > 1 && facts.has_experts)  // a second instance of the strategy for the experts
    dp_ = std::make_unique<ExpertDataParallel>(
        std::move(dp_),
        registry_.factory<DataParallel>(recipe_.plugin("parallel.data_parallel"))(
            recipe_.options("parallel.data_parallel")),
        edp_comm_.get(), ep_comm_.get());
  eval_ = std::move(parts.eval);
  dp_->setup(stack_.flat, *optimizer_, *stack_.backend, dp_comm_.get());
  stack_.flat.initial_master = {};  // the strategy keeps its share of the fp32 masters
  const Options& be = recipe_.options("backend");
  peak_tflops_ = be.has("peak_tflops") ? be.get_float("peak_tflops") : 0;
  if (peak_tflops_ <= 0) peak_tflops_ = measure_gemm_tflops(*stack_.backend);
  host_tokens_.resize(seq_ + 1);
  host_ids_.resize(micro_ * seq_);
  host_targets_.resize(micro_ * seq_);
  host_doc_start_.resize(micro_ * seq_);
  host_positions_.resize(micro_ * seq_);
  masks_ = document_masks(recipe_.options("data"));
  eot_ = stack_.tokenizer->eot();
}

// Every stage's tensors reach the writer (global rank 0) through the pp group
// of the ranks at tp 0, dp 0.
CheckpointGroups RankTrainer::checkpoint_groups() {
  CheckpointGroups g;
  g.tp = tp_comm_.get();
  g.pp = pp_comm_.get();
  g.stage = stack_.topology.coords.pp;
  g.collects = stack_.topology.coords.tp == 0 && stack_.topology.coords.dp == 0;
  g.ep = ep_comm_.get();
  g.ep_rank = stack_.topology.coords.ep;
  g.ep_collects = stack_.topology.coords.tp == 0 && stack_.topology.coords.edp == 0;
  g.all_params = stack_.model->params();
  g.owner_stage = param_owner_stages(*stack_.model, stack_.plan);
  return g;
}

// A value summed over `group` (the gradient norm's squares over tp and pp).
double RankTrainer::sum_over(Communicator& group, double value) {
  if (group.size() == 1) return value;
  Tensor buf = stack_.backend->alloc({1}, DType::F32, MemCategory::Workspace);
  float partial = static_cast<float>(value);
  stack_.backend->copy_from_host(buf, &partial);
  group.all_reduce(buf, ReduceOp::Sum)->wait();
  float total = 0;
  stack_.backend->copy_to_host(&total, buf);
  return total;
}

// The tied embedding lives on the first and the last stage: after the step's
// backward both copies get the sum of their gradients, then reduce over dp
// like any other parameter.
void RankTrainer::sum_tied_grads() {
  for (Param* p : stack_.flat.params) {
    if (!p->tied_copy && std::find(tied_names_.begin(), tied_names_.end(), p->name) == tied_names_.end()) continue;
    embedding_comm_->all_reduce(p->grad, ReduceOp::Sum)->wait();
    dp_->grad_ready(*p);
  }
}

// A global batch of micro*dp*accum samples starting at sample0 of the seeded
// order (a step: the samples consumed before it); dp rank r takes the
// contiguous slice [r*micro*accum, (r+1)*micro*accum) of it.
void RankTrainer::load_microbatch(const Dataset& data, int64_t sample0, int64_t accum, int mb, Tensor& ids,
                                  Tensor& targets) {
  int64_t base = sample0 + stack_.topology.coords.dp * micro_ * accum + mb * micro_;
  for (int64_t b = 0; b < micro_; ++b) {
    data.sample(base + b, host_tokens_.data());
    std::copy(host_tokens_.begin(), host_tokens_.begin() + seq_, host_ids_.begin() + b * seq_);
    std::copy(host_tokens_.begin() + 1, host_tokens_.end(), host_targets_.begin() + b * seq_);
    apply_document_masks(masks_, eot_, host_ids_.data() + b * seq_, host_targets_.data() + b * seq_,
                         host_doc_start_.data() + b * seq_, host_positions_.data() + b * seq_, seq_);
  }
  // Fresh tensors: a pipeline stage keeps several microbatches' ids (the embedding's backward reads them).
  ids = stack_.backend->alloc_uninitialized({micro_, seq_}, DType::I32, MemCategory::Workspace);
  targets = stack_.backend->alloc_uninitialized({micro_, seq_}, DType::I32, MemCategory::Workspace);
  stack_.backend->copy_from_host(ids, host_ids_.data());
  stack_.backend->copy_from_host(targets, host_targets_.data());
}

// `loss`: the mean over the steps since the last record (Megatron's logged
// loss); `loss_step`: the loss of this step alone.
// Microbatch mb's Context beyond ids and targets, right after load_microbatch
// of the same microbatch: its place in the sample order (dropout masks),
// whether it trains, and the document masks load_microbatch computed.
void RankTrainer::prepare_microbatch(int64_t sample0, int64_t accum, int mb, bool training, Context& ctx) {
  ctx.first_sample = sample0 + stack_.topology.coords.dp * micro_ * accum + mb * micro_;
  ctx.training = training;
  auto upload = [&](const std::vector<int32_t>& host) {
    Tensor t = stack_.backend->alloc_uninitialized({micro_, seq_}, DType::I32, MemCategory::Workspace);  // [B,T]
    stack_.backend->copy_from_host(t, host.data());
    return t;
  };
  if (masks_.reset_attention_mask) ctx.doc_start = upload(host_doc_start_);
  if (masks_.reset_position_ids) ctx.positions = upload(host_positions_);
}

// The targets that count in the global batch of `batch` samples from sample0
// (all batch x T unless eod_mask_loss): every rank counts the whole batch, so
// the loss's denominator needs no collective.
int64_t RankTrainer::counted_tokens(const Dataset& data, int64_t sample0, int64_t batch) {
  if (!masks_.eod_mask_loss) return batch * seq_;
  int64_t counted = 0;
  std::vector<int32_t> targets(seq_), doc_start(seq_), positions(seq_);
  for (int64_t i = 0; i < batch; ++i) {
    data.sample(sample0 + i, host_tokens_.data());
    std::copy(host_tokens_.begin() + 1, host_tokens_.end(), targets.begin());
    counted += apply_document_masks(masks_, eot_, host_tokens_.data(), targets.data(), doc_start.data(),
                                    positions.data(), seq_);
  }
  return counted;
}

MetricsRecord RankTrainer::record(int64_t step, double loss, double loss_step, double lr, double grad_norm,
                                  double step_s, int64_t comm) {
  MemStats mem = stack_.backend->mem_stats();
  auto peak = [&](MemCategory c) { return static_cast<double>(mem.peak[static_cast<int>(c)]); };
  MetricsRecord r;
  r.step = step;
  r.total_steps = steps_;
  r.values = {{"time", seconds_since_start()},
              {"loss", loss},
              {"loss_step", loss_step},
              {"lr", lr},
              {"grad_norm", grad_norm},
              {"tokens_per_s", static_cast<double>(cur_global_ * seq_) / step_s},
              {"mfu", model_flops_utilization(static_cast<double>(cur_global_ * seq_) / step_s,
                                              static_cast<double>(stack_.model->summary().flops_per_token),
                                              peak_tflops_, world_.size())},
              {"step_ms", step_s * 1e3},
              {"mem_param_bytes", peak(MemCategory::Param)},
              {"mem_grad_bytes", peak(MemCategory::Grad)},
              {"mem_optim_bytes", peak(MemCategory::OptimState)},
              {"mem_act_bytes", peak(MemCategory::Activation)},
              {"mem_workspace_bytes", peak(MemCategory::Workspace)},
              {"comm_bytes", static_cast<double>(comm)}};
  for (const auto& kv : moe_metrics_) r.values.push_back(kv);
  if (recipe_.options("run").get_string("on_nan") == "skip")
    r.values.push_back({"skipped_steps", static_cast<double>(skipped_steps_)});
  // fp16: the loss scale for the next step and the overflowed steps skipped so far.
  const std::map<std::string, double> scaler = stack_.precision->state();
  if (scaler.count("loss_scale")) r.values.push_back({"loss_scale", scaler.at("loss_scale")});
  if (scaler.count("skipped")) r.values.push_back({"skipped", scaler.at("skipped")});
  for (auto& field : timers_.fields()) r.values.push_back(field);
  if (rampup_.on()) r.values.push_back({"global_batch", static_cast<double>(cur_global_)});
  return r;
}

// A NaN or infinite loss or gradient norm: never train on it. "stop" ends the
// run naming the step and the last good checkpoint; "skip" leaves the
// parameters and optimizer state as they were and counts the step.
void RankTrainer::skip_or_stop(int64_t step, double loss, double norm) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "step %lld: loss %.6g, gradient norm %.6g", static_cast<long long>(step), loss, norm);
  const std::string what = buf;
  if (recipe_.options("run").get_string("on_nan") == "skip") {
    ++skipped_steps_;
    log_->warn("{}: skipped, no update ({} step{} skipped so far; run.on_nan = \"skip\")", what, skipped_steps_,
               skipped_steps_ == 1 ? "" : "s");
    return;
  }
  throw Error(what + ": the run stops before updating on it (run.on_nan = \"stop\"); last good checkpoint: " +
              last_checkpoint_or_none());
}

std::string RankTrainer::last_checkpoint_or_none() const {
  try {
    return resolve_checkpoint_dir(out_dir_);
  } catch (const Error&) {
    return "none was written yet";
  }
}

// The folder, its size and the rate it was written at (collecting included).
void RankTrainer::log_checkpoint(const std::string& dir, double seconds) const {
  std::error_code ec;
  double bytes = 0;
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const auto n = fs::file_size(fs::path(dir) / f, ec);
    if (!ec) bytes += static_cast<double>(n);
  }
  log_->info("checkpoint {} ({:.1f} MB in {:.2f} s, {:.0f} MB/s)", dir, bytes / 1e6, seconds,
             seconds > 0 ? bytes / 1e6 / seconds : 0.0);
}

// The step's mixture-of-experts figures, summed over every microbatch, stage
// and data rank: the auxiliary losses as added to the objective, the share of
// dropped token assignments and the busiest expert's load over the mean
// (averaged over MoE layers and microbatches).
void RankTrainer::reduce_moe_stats(const std::map<std::string, double>& stats) {
  const char* keys[] = {"aux_loss", "z_loss", "moe_assignments", "moe_dropped", "moe_load_ratio_sum",
                        "moe_layer_microbatches"};
  std::vector<float> v;
  for (const char* k : keys) {
    auto it = stats.find(k);
    v.push_back(it == stats.end() ? 0.f : static_cast<float>(it->second));
  }
  Tensor buf = stack_.backend->alloc({static_cast<int64_t>(v.size())}, DType::F32, MemCategory::Workspace);
  stack_.backend->copy_from_host(buf, v.data());
  if (pp_comm_->size() > 1) pp_comm_->all_reduce(buf, ReduceOp::Sum)->wait();
  if (dp_comm_->size() > 1) dp_comm_->all_reduce(buf, ReduceOp::Sum)->wait();
  stack_.backend->copy_to_host(v.data(), buf);
  moe_metrics_ = {{"aux_loss", v[0]},
                  {"z_loss", v[1]},
                  {"moe_dropped_frac", v[2] > 0 ? v[3] / v[2] : 0.0},
                  {"moe_max_load", v[5] > 0 ? v[4] / v[5] : 0.0}};
}

double RankTrainer::seconds_since_start() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
}

// The run's last line: time, steps, tokens, final loss and where its weights are.
void RankTrainer::log_summary(int64_t start) const {
  const int64_t steps = steps_ - start;
  char line[160];
  std::snprintf(line, sizeof line, "done: %lld steps (%lld to %lld) in %.1f s, %lld tokens, final loss %.4f",
                static_cast<long long>(steps), static_cast<long long>(start + 1), static_cast<long long>(steps_),
                seconds_since_start(), static_cast<long long>((consumed_ - start_samples_) * seq_), last_loss_);
  log_->info("{}, last checkpoint {}", line, resolve_checkpoint_dir(out_dir_));
}

void RankTrainer::run() {
  started_ = std::chrono::steady_clock::now();
  build();
  const bool rank0 = world_.rank() == 0;
  const uint64_t seed = static_cast<uint64_t>(recipe_.options("run").get_int("seed"));
  int64_t start = 0;

  const ResumeMode mode = resume_mode(args_, recipe_.options("checkpoint").get_bool("resume"));
  std::string dir = find_resume_checkpoint(out_dir_, args_.resume_from, mode);
  if (!dir.empty()) {
    CheckpointMeta meta = read_checkpoint_meta(dir);
    check_resume(dir, meta);
    consumed_ = start_samples_ = meta.samples_consumed;
    if (meta.step >= steps_) {
      if (rank0) log_->info("{}", finished_message(dir, meta.step, steps_));
      return;
    }
    read_checkpoint(dir, stack_.flat, dp_.get(), optimizer_->state_slots(), *stack_.backend);
    // fp16 continues with the saved loss scale; a checkpoint of another mode
    // (none saved) starts the scaler afresh.
    if (!meta.precision_state.empty() && !stack_.precision->state().empty()) {
      try {
        stack_.precision->load_state(meta.precision_state);
      } catch (const Error& e) {
        throw Error(dir + "/meta.json: " + e.what());
      }
    }
    start = meta.step;
    log_->info("resumed from {} at step {}", dir, start);
  } else if (mode != ResumeMode::Off) {
    if (rank0) log_->info("{}: no checkpoint yet; starting from step 0", out_dir_);
  } else if (!args_.overwrite) {
    refuse_used_out_dir(out_dir_);
  }
  // A fresh run may start from a Hugging Face folder; a resume's checkpoint wins.
  if (dir.empty()) {
    std::string from = load_init_from(recipe_, *stack_.model, stack_.flat, dp_.get(), *stack_.backend);
    if (!from.empty() && rank0) log_->info("initialised the parameters from {}", from);
  }
  // Every rank has decided how to start before rank 0 changes out_dir.
  world_.barrier();
  if (rank0) {
    prepare_out_dir(out_dir_, args_.overwrite && mode == ResumeMode::Off);
    write_file_atomic(out_dir_ + "/recipe.toml", recipe_.to_toml());
    std::string moved = start_branch(out_dir_, start);
    if (!moved.empty()) log_->info("{}", moved);
  }
  world_.barrier();
  // Sinks open their files only now, after a resume trimmed metrics.jsonl.
  MetricsEnv menv{out_dir_, world_.rank(), world_.size(), start + 1};
  for (const RecipeSection& sec : recipe_.sections)
    if (sec.family == "metrics_sink") sinks_.push_back(registry_.factory<MetricsSink>(sec.plugin)(sec.options, menv));

  ModelSummary summary = stack_.model->summary();
  if (rank0)
    log_->info("{} parameters, world {} (tp {} pp {} dp {} ep {}), {} steps of {} samples x {} tokens, out_dir {}",
               summary.params, recipe_.world, recipe_.sizes.tp, recipe_.sizes.pp, recipe_.sizes.dp, recipe_.sizes.ep,
               steps_, global_, seq_, out_dir_);

  const int64_t log_interval = recipe_.options("log").get_int("interval");
  const int64_t ckpt_interval = recipe_.options("checkpoint").get_int("interval");
  const int64_t keep = recipe_.options("checkpoint").get_int("keep");
  // Activations between stages: [micro, T, C], or this rank's T/tp slice under sequence parallelism.
  const int64_t local_t = stack_.layers->sequence_parallel() ? seq_ / stack_.layers->tp_size() : seq_;
  const Shape activation_shape{micro_, local_t, summary.hidden};
  // The schedule's ops for each number of microbatches the run uses (one, or
  // one per global batch of a ramp-up); a schedule that cannot run one of them
  // refuses it here, before the first step.
  std::map<int64_t, std::vector<PipelineOp>> ops_by_accum;
  for (int64_t g : rampup_.sizes()) {
    const int64_t accum = g / (micro_ * recipe_.sizes.dp);
    ops_by_accum[accum] = stack_.schedule->ops(stack_.topology.coords.pp, stack_.topology.sizes.pp,
                                               static_cast<int>(accum));
  }
  const std::vector<PipelineOp>& ops = ops_by_accum.at(accum_);
  auto is_tied = [&](const Param& p) {
    return std::find(tied_names_.begin(), tied_names_.end(), p.name) != tied_names_.end();
  };
  auto comm_total = [&] {
    return world_.bytes_sent() + tp_comm_->bytes_sent() + pp_comm_->bytes_sent() + dp_comm_->bytes_sent() +
           ep_comm_->bytes_sent() + edp_comm_->bytes_sent();
  };

  double interval_loss_sum = 0;  // losses of the steps updated since the last record
  int64_t interval_steps = 0;
  for (int64_t step = start + 1; step <= steps_; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    int64_t comm0 = comm_total();
    timers_.begin_step(StepPhase::Backward);  // clearing the gradients belongs to the backward
    zero_grads(stack_.flat, *stack_.backend);

    // This step reads samples [consumed_, consumed_ + G) of the order.
    cur_global_ = rampup_.global_at(consumed_);
    const int64_t tokens = counted_tokens(*dataset_, consumed_, cur_global_);  // the loss's denominator
    const float loss_scale = stack_.precision->loss_scale();
    ScheduleStep s = schedule_step(*dataset_, consumed_, cur_global_, activation_shape, /*training=*/true, tokens,
                                   loss_scale);
    s.on_grad_ready = [&](Param& p) {
      if (p.tied_copy || is_tied(p)) return;  // summed across stages after the backward (sum_tied_grads)
      // Replicated params that saw only this rank's tokens (sequence parallelism) sum over tp first.
      if (stack_.layers->grad_sums_over_tp(p)) {
        PhaseScope wait(&timers_, StepPhase::Comm);
        tp_comm_->all_reduce(p.grad, ReduceOp::Sum)->wait();
      }
      dp_->grad_ready(p);
    };
    std::map<std::string, double> stats;
    s.stats = &stats;
    double loss_sum = run_pipeline_ops(s, ops_by_accum.at(s.microbatches), &timers_);
    timers_.enter(StepPhase::Comm);  // gradient reductions still in flight, the norm
    sum_tied_grads();
    if (summary.moe_layers > 0) reduce_moe_stats(stats);

    // The gradients carry the loss scale (fp16); the norm and clipping are of the unscaled ones.
    double norm = std::sqrt(sum_over(*pp_comm_, sum_over(*tp_comm_, dp_->finish_reduction())));
    if (loss_scale != 1.f) norm /= loss_scale;
    double clip = optimizer_->clip_grad_norm();
    double grad_scale = clip > 0 ? std::min(1.0, clip / (norm + 1e-6)) : 1.0;
    if (loss_scale != 1.f) grad_scale /= loss_scale;
    // Schedule positions: the step number, or during a ramp-up the samples consumed in units of
    // batch.global (Megatron counts its schedules in samples).
    const double before = static_cast<double>(consumed_) / static_cast<double>(global_);
    const double after = static_cast<double>(consumed_ + cur_global_) / static_cast<double>(global_);
    double lr = rampup_.on() ? lr_schedule_->lr_between(before, after) : lr_schedule_->lr(step);
    auto wd = rampup_.on() ? lr_schedule_->weight_decay_between(before, after) : lr_schedule_->weight_decay(step);
    if (wd) optimizer_->set_weight_decay(*wd);
    consumed_ += cur_global_;  // also for a skipped step: its samples are not read again

    const double loss = mean_loss(loss_sum, tokens);
    last_loss_ = loss;
    // Loss and norm are the same on every rank, so every rank takes the same branch.
    if (stack_.precision->update_scale(!std::isfinite(norm))) {
      if (rank0)
        log_->warn("step {}: gradients overflowed at loss scale {:g}; step skipped, loss scale now {:g}", step,
                   static_cast<double>(loss_scale), static_cast<double>(stack_.precision->loss_scale()));
    } else if (std::isfinite(loss) && std::isfinite(norm)) {
      timers_.enter(StepPhase::Optimizer);
      dp_->step(lr, grad_scale, step);
      timers_.enter(StepPhase::Comm);
      interval_loss_sum += loss;
      ++interval_steps;
    } else {
      skip_or_stop(step, loss, norm);
    }
    stack_.backend->synchronize();
    timers_.end_step();
    double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const bool evaluate = eval_.due(step, steps_);
    const double val_loss = evaluate ? validation_loss(ops, activation_shape) : 0.0;
    if (evaluate && rank0) log_->info("step {}: val_loss {:.4f}", step, val_loss);
    if (step % log_interval == 0 || step == steps_ || evaluate) {
      // Megatron's logged loss: the mean over the steps updated since the last record.
      const double interval_loss = interval_steps > 0 ? interval_loss_sum / static_cast<double>(interval_steps) : loss;
      interval_loss_sum = 0;
      interval_steps = 0;
      MetricsRecord r = record(step, interval_loss, loss, lr, norm, step_s, comm_total() - comm0);
      if (evaluate) r.values.emplace_back("val_loss", val_loss);
      for (auto& sink : sinks_) {
        sink->write(r);
        sink->flush();
      }
    }
    const int stop_why = step < steps_ ? stop_reason(step) : kGoOn;
    const bool stop = stop_why != kGoOn;
    bool save = stop || step == steps_ || (ckpt_interval > 0 && step % ckpt_interval == 0);
    if (save) {
      CheckpointMeta meta;
      meta.step = step;
      meta.samples_consumed = consumed_;
      meta.seed = seed;
      meta.global_batch = global_;
      meta.schedule = lr_schedule_->settings();
      meta.precision_state = stack_.precision->state();
      const auto saving = std::chrono::steady_clock::now();
      if (recipe_.options("checkpoint").get_bool("async")) {
        wait_for_save();  // a second save waits for the first
        auto commit = collect_checkpoint(out_dir_, meta, recipe_, stack_.flat, dp_.get(), optimizer_->state_slots(),
                                         *stack_.backend, rank0, checkpoint_groups(), /*buffered=*/true, save_buffers_);
        if (rank0)
          pending_save_ = std::async(std::launch::async, [this, commit, step, keep, saving] {
            const std::string dir = commit();
            publish_latest(out_dir_, step, keep);
            log_checkpoint(dir, std::chrono::duration<double>(std::chrono::steady_clock::now() - saving).count());
          });
        pending_step_ = step;
      } else {
        std::string dir;
        try {
          dir = write_checkpoint(out_dir_, meta, recipe_, stack_.flat, dp_.get(), optimizer_->state_slots(),
                                 *stack_.backend, rank0, checkpoint_groups(), save_buffers_);
        } catch (const Error& e) {
          throw Error(std::string(e.what()) + "; the checkpoint of step " + std::to_string(step) +
                      " was not written, the last complete one is " + last_checkpoint_or_none());
        }
        if (rank0)
          log_checkpoint(dir, std::chrono::duration<double>(std::chrono::steady_clock::now() - saving).count());
        world_.barrier();
        if (rank0) publish_latest(out_dir_, step, keep);
      }
    }
    if (stop) {
      wait_for_save();
      const int signo = args_.stop ? args_.stop->received() : 0;
      const std::string why = stop_why == kExitInterval   ? "run.exit_interval"
                              : stop_why == kExitDuration ? "run.exit_duration_mins"
                              : signo                     ? StopSignals::name(signo)
                                                          : "a stop signal";
      if (rank0)
        log_->info("stopped by {} after step {} of {}: checkpoint written; `weft train ... --resume` continues", why,
                   step, steps_);
      return;
    }
  }
  wait_for_save();
  if (recipe_.options("log").get_bool("timers"))
    log_timer_summary(timers_, steps_ - start, world_, *stack_.backend, *log_);
  if (rank0) log_summary(start);
}

// A resume continues the checkpoint's run: the same seed; a global batch
// that divides the samples consumed (the run goes on from there); the same
// lr schedule, each difference named, unless --override-schedule.
void RankTrainer::check_resume(const std::string& dir, const CheckpointMeta& meta) {
  const uint64_t seed = static_cast<uint64_t>(recipe_.options("run").get_int("seed"));
  if (meta.seed != seed)
    throw Error(dir + ": saved with run.seed " + std::to_string(meta.seed) + ", the recipe says " +
                std::to_string(seed));
  if (!rampup_.on() && meta.samples_consumed % global_ != 0)
    throw Error(dir + ": saved after " + std::to_string(meta.samples_consumed) + " samples at step " +
                std::to_string(meta.step) + ", which batch.global " + std::to_string(global_) +
                " does not divide");
  if (meta.schedule.empty()) return;  // an older checkpoint: nothing recorded to compare
  std::string diffs;
  const std::map<std::string, std::string> now = lr_schedule_->settings();
  std::set<std::string> keys;
  for (const auto& kv : meta.schedule) keys.insert(kv.first);
  for (const auto& kv : now) keys.insert(kv.first);
  for (const std::string& k : keys) {
    auto a = meta.schedule.find(k);
    auto b = now.find(k);
    const std::string saved = a == meta.schedule.end() ? "(none)" : a->second;
    const std::string wanted = b == now.end() ? "(none)" : b->second;
    if (saved != wanted) diffs += (diffs.empty() ? "" : ", ") + k + " " + saved + " -> " + wanted;
  }
  if (diffs.empty()) return;
  if (!args_.override_schedule)
    throw Error(dir + ": the lr schedule differs from the checkpoint's (" + diffs +
                "); resume with --override-schedule to continue with the recipe's schedule");
  if (world_.rank() == 0) log_->info("--override-schedule: continuing with the recipe's schedule ({})", diffs);
}

// Waits for the checkpoint being written in the background (checkpoint.async;
// rank 0), then every rank goes on together; its failure stops the run.
void RankTrainer::wait_for_save() {
  std::string failure;
  if (pending_save_.valid()) {
    try {
      pending_save_.get();
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  if (!failure.empty())
    throw Error(failure + "; the checkpoint of step " + std::to_string(pending_step_) +
                " was not written, the last complete one is " + last_checkpoint_or_none());
  if (pending_step_ > 0) world_.barrier();
  pending_step_ = 0;
}

// Whether the run stops after `step` and why: run.exit_interval (the same on
// every rank), run.exit_duration_mins or a stop signal (clocks and signals
// differ between ranks: all agree on the max over the world, taken after the
// step's metrics so it is not counted in the step's comm_bytes).
int RankTrainer::stop_reason(int64_t step) {
  const Options& run = recipe_.options("run");
  const int64_t interval = run.has("exit_interval") ? run.get_int("exit_interval") : 0;
  if (interval > 0 && step % interval == 0) return kExitInterval;
  const double minutes = run.has("exit_duration_mins") ? run.get_float("exit_duration_mins") : 0.0;
  if (!args_.stop && !(minutes > 0)) return kGoOn;
  float mine = static_cast<float>(kGoOn);
  if (minutes > 0 && seconds_since_start() > 60.0 * minutes) mine = static_cast<float>(kExitDuration);
  if (args_.stop && args_.stop->received()) mine = static_cast<float>(kSignal);
  Tensor flag = stack_.backend->alloc({1}, DType::F32, MemCategory::Workspace);
  stack_.backend->copy_from_host(flag, &mine);
  if (world_.size() > 1) world_.all_reduce(flag, ReduceOp::Max)->wait();
  float any = 0;
  stack_.backend->copy_to_host(&any, flag);
  return static_cast<int>(any);
}

// The mean loss over eval.iters global batches of the validation part (the
// same batches every time, so evaluations compare). The schedule runs as in
// training, backward included; the gradients are discarded.
double RankTrainer::validation_loss(const std::vector<PipelineOp>& ops, const Shape& activation_shape) {
  double loss_sum = 0;
  int64_t tokens = 0;
  for (int64_t k = 0; k < eval_.iters; ++k) {
    const int64_t counted = counted_tokens(*eval_.dataset, k * global_, global_);
    ScheduleStep s = schedule_step(*eval_.dataset, k * global_, global_, activation_shape, /*training=*/false, counted);
    s.on_grad_ready = [](Param&) {};
    loss_sum += run_pipeline_ops(s, ops);
    tokens += counted;
  }
  zero_grads(stack_.flat, *stack_.backend);
  return mean_loss(loss_sum, tokens);
}

// The schedule's inputs for the global batch of `batch` samples from sample0
// of `data` (the training or the validation part); `tokens` counts its
// targets (the loss is their mean). `loss_scale` multiplies the loss's
// gradient (fp16's loss scaling).
ScheduleStep RankTrainer::schedule_step(Dataset& data, int64_t sample0, int64_t batch, const Shape& activation_shape,
                                        bool training, int64_t tokens, float loss_scale) {
  ScheduleStep s;
  s.model = stack_.model.get();
  s.backend = stack_.backend.get();
  s.parallel = &stack_.parallel;
  s.plan = &stack_.plan;
  const int64_t accum = batch / (micro_ * recipe_.sizes.dp);
  s.microbatches = static_cast<int>(accum);
  s.activation_shape = activation_shape;
  s.dloss_scale = 1.0f / static_cast<float>(std::max<int64_t>(tokens, 1));
  if (loss_scale != 1.f) s.dloss_scale *= loss_scale;
  s.load = [this, &data, sample0, accum](int mb, Tensor& ids, Tensor& targets) {
    load_microbatch(data, sample0, accum, mb, ids, targets);
  };
  s.prepare = [this, sample0, accum, training](int mb, Context& ctx) {
    prepare_microbatch(sample0, accum, mb, training, ctx);
  };
  return s;
}

// This rank's sum of per-token losses (non-zero on the last stage) -> the mean
// over the `tokens` targets that count: summed over stages, then data ranks.
double RankTrainer::mean_loss(double loss_sum, int64_t tokens) {
  return sum_over(*dp_comm_, sum_over(*pp_comm_, loss_sum)) / static_cast<double>(std::max<int64_t>(tokens, 1));
}

}  // namespace

void train(const Recipe& recipe, const Registry& registry, const TrainArgs& args) {
  // Metrics sinks print through the default logger on rank 0 only.
  if (recipe.world > 1) spdlog::set_pattern("[%H:%M:%S] %^%l%$ [rank 0] %v");
  auto launcher = make_launcher(recipe, registry);
  launcher->run(recipe.world, [&](Communicator& world, const LaunchInfo& launch) {
    if (world.size() != recipe.world)
      throw Error("the communicator has " + std::to_string(world.size()) + " ranks, the recipe needs " +
                  std::to_string(recipe.world));
    RankTrainer(recipe, registry, args, world, launch).run();
  });
}

}  // namespace weft
