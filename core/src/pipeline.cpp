#include "weft/pipeline.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <tuple>

#include "step_timers.hpp"
#include "weft/error.hpp"
#include "weft/schedule.hpp"

namespace weft {

// ---------------------------------------------------------------- stages

PipelinePlan make_pipeline_plan(int64_t layers, int stages, int virtual_stages,
                                const std::vector<int64_t>& blocks_per_stage) {
  WEFT_ASSERT(layers >= 3 && stages >= 1 && virtual_stages >= 1, "pipeline plan: bad sizes");
  const int64_t blocks = layers - 2;
  const int J = stages * virtual_stages;
  const std::string chunks = virtual_stages == 1
                                 ? "pipeline " + std::to_string(stages) + " stages"
                                 : "pipeline " + std::to_string(stages) + " x virtual_stages " +
                                       std::to_string(virtual_stages) + " = " + std::to_string(J) + " model chunks";
  std::vector<int64_t> per_stage = blocks_per_stage;
  if (per_stage.empty()) {
    if (blocks < J)
      throw PlanError{"pipeline", chunks + " for " + std::to_string(blocks) +
                                      " blocks (model.layers): every stage needs at least one block"};
    for (int s = 0; s < stages; ++s) per_stage.push_back(blocks / stages + (s < blocks % stages ? 1 : 0));
  } else {
    if (static_cast<int>(per_stage.size()) != stages)
      throw PlanError{"layers_per_stage", "layers_per_stage has " + std::to_string(per_stage.size()) +
                                              " entries for pipeline " + std::to_string(stages)};
    int64_t sum = 0;
    for (size_t s = 0; s < per_stage.size(); ++s) {
      if (per_stage[s] < 1)
        throw PlanError{"layers_per_stage", "layers_per_stage gives stage " + std::to_string(s) + " " +
                                                std::to_string(per_stage[s]) + " blocks; every stage needs at least one"};
      sum += per_stage[s];
    }
    if (sum != blocks)
      throw PlanError{"layers_per_stage", "layers_per_stage sums to " + std::to_string(sum) +
                                              " blocks, the model has " + std::to_string(blocks) + " (model.layers)"};
  }
  for (int s = 0; s < stages; ++s)
    if (per_stage[s] % virtual_stages != 0)
      throw PlanError{"virtual_stages", "virtual_stages " + std::to_string(virtual_stages) + " does not divide the " +
                                            std::to_string(per_stage[s]) + " blocks of stage " + std::to_string(s) +
                                            " (each stage's blocks are split into that many model chunks)"};
  PipelinePlan plan;
  plan.stages = stages;
  plan.virtual_stages = virtual_stages;
  int64_t next = 1;  // the first block's layer index (layer 0 is the embedding)
  for (int j = 0; j < J; ++j) {
    PipelineChunk c;
    c.stage = j % stages;
    c.chunk = j / stages;
    c.first = j == 0 ? 0 : next;
    next += per_stage[c.stage] / virtual_stages;
    c.end = j == J - 1 ? layers : next;
    plan.chunks.push_back(c);
  }
  return plan;
}

std::vector<Param*> stage_params(Model& model, const PipelinePlan& plan, int stage, std::vector<Param*>* shared) {
  std::vector<Module*> layers = model.layers();
  std::vector<Param*> own, reads;
  for (int c = 0; c < plan.virtual_stages; ++c) {
    const PipelineChunk& chunk = plan.at(stage, c);
    for (int64_t l = chunk.first; l < chunk.end; ++l) layers.at(l)->collect_params(own);
  }
  for (int c = 0; c < plan.virtual_stages; ++c) {
    const PipelineChunk& chunk = plan.at(stage, c);
    for (int64_t l = chunk.first; l < chunk.end; ++l) layers.at(l)->collect_shared_params(reads);
  }
  std::set<Param*> held(own.begin(), own.end());
  for (Param* p : reads) {
    if (!held.insert(p).second) continue;
    own.push_back(p);
    if (shared) shared->push_back(p);
  }
  return own;
}

std::vector<int> param_owner_stages(Model& model, const PipelinePlan& plan) {
  std::map<const Param*, int> owner;
  std::vector<Module*> layers = model.layers();
  for (const PipelineChunk& chunk : plan.chunks)
    for (int64_t l = chunk.first; l < chunk.end; ++l) {
      std::vector<Param*> own;
      layers.at(l)->collect_params(own);
      for (Param* p : own) owner[p] = chunk.stage;
    }
  std::vector<int> out;
  for (Param* p : model.params()) out.push_back(owner.at(p));
  return out;
}

// ---------------------------------------------------------------- timeline

namespace {

std::string op_name(const PipelineOp& op, int virtual_stages) {
  std::string s = (op.kind == OpKind::Forward ? "F" : "B") + std::to_string(op.microbatch);
  if (virtual_stages > 1) s += "." + std::to_string(op.chunk);
  return s;
}

}  // namespace

PipelineTimeline simulate_pipeline(const PipelinePlan& plan, const std::vector<std::vector<PipelineOp>>& ops,
                                   int microbatches) {
  const int S = plan.stages, J = plan.virtual_count();
  WEFT_ASSERT(static_cast<int>(ops.size()) == S, "simulate_pipeline: one op list per stage");
  for (int s = 0; s < S; ++s) {
    std::set<std::tuple<int, int, int>> seen;
    for (const PipelineOp& op : ops[s]) {
      const bool ok = op.microbatch >= 0 && op.microbatch < microbatches && op.chunk >= 0 &&
                      op.chunk < plan.virtual_stages &&
                      seen.insert({static_cast<int>(op.kind), op.microbatch, op.chunk}).second;
      if (!ok)
        throw PlanError{"plugin", "the schedule repeats or misnames " + op_name(op, plan.virtual_stages) +
                                      " on stage " + std::to_string(s)};
    }
    if (static_cast<int>(seen.size()) != 2 * microbatches * plan.virtual_stages)
      throw PlanError{"plugin", "the schedule runs " + std::to_string(seen.size()) + " ops on stage " +
                                    std::to_string(s) + ", not " +
                                    std::to_string(2 * microbatches * plan.virtual_stages)};
  }
  // done[kind][mb][j]: finish time (-1 = not yet run)
  std::vector<std::vector<std::vector<int64_t>>> done(2, std::vector<std::vector<int64_t>>(
                                                            microbatches, std::vector<int64_t>(J, -1)));
  std::vector<size_t> next(S, 0);
  std::vector<int64_t> free_at(S, 0);
  std::vector<std::vector<std::pair<int64_t, PipelineOp>>> placed(S);
  int64_t busy = 0;
  for (bool progress = true; progress;) {
    progress = false;
    for (int s = 0; s < S; ++s) {
      while (next[s] < ops[s].size()) {
        const PipelineOp& op = ops[s][next[s]];
        const int j = op.chunk * S + s;
        const bool fwd = op.kind == OpKind::Forward;
        int64_t ready = free_at[s];
        if (fwd && j > 0) ready = std::max(ready, done[0][op.microbatch][j - 1]);
        if (fwd && j > 0 && done[0][op.microbatch][j - 1] < 0) break;
        if (!fwd) {
          if (done[0][op.microbatch][j] < 0) break;  // its own forward first
          if (j < J - 1) {
            if (done[1][op.microbatch][j + 1] < 0) break;
            ready = std::max(ready, done[1][op.microbatch][j + 1]);
          }
        }
        const int64_t cost = fwd ? 1 : 2;
        placed[s].push_back({ready, op});
        done[fwd ? 0 : 1][op.microbatch][j] = ready + cost;
        free_at[s] = ready + cost;
        busy += cost;
        ++next[s];
        progress = true;
      }
    }
  }
  for (int s = 0; s < S; ++s)
    if (next[s] < ops[s].size())
      throw PlanError{"plugin", "the schedule deadlocks: stage " + std::to_string(s) + " waits at " +
                                    op_name(ops[s][next[s]], plan.virtual_stages) +
                                    " for an input no stage will send"};
  PipelineTimeline t;
  for (int s = 0; s < S; ++s) t.makespan = std::max(t.makespan, free_at[s]);
  t.bubble = t.makespan > 0 ? 1.0 - static_cast<double>(busy) / (static_cast<double>(S) * t.makespan) : 0.0;
  size_t width = 1;  // characters per time unit
  for (int s = 0; s < S; ++s)
    for (const auto& [start, op] : placed[s]) width = std::max(width, op_name(op, plan.virtual_stages).size() + 1);
  for (int s = 0; s < S; ++s) {
    std::string row(static_cast<size_t>(t.makespan) * width, ' ');
    for (int64_t u = 0; u < t.makespan; ++u) row[u * width] = '.';
    for (const auto& [start, op] : placed[s]) {
      const int64_t cost = op.kind == OpKind::Forward ? 1 : 2;
      const std::string name = op_name(op, plan.virtual_stages);
      for (int64_t u = start; u < start + cost; ++u) {
        std::string cell = name;
        cell.resize(width, ' ');
        row.replace(static_cast<size_t>(u) * width, width, cell);
      }
    }
    while (!row.empty() && row.back() == ' ') row.pop_back();
    t.rows.push_back(row);
  }
  return t;
}

// ---------------------------------------------------------------- executor

namespace {

// Tag of the message that feeds virtual stage j of microbatch mb (forward: its
// input activation; backward: the gradient of its output).
int message_tag(int mb, int j, int J, bool backward) {
  return static_cast<int>((static_cast<int64_t>(mb) * J + j) * 2 + (backward ? 1 : 0)) % 32749;
}

}  // namespace

double run_pipeline_ops(ScheduleStep& step, const std::vector<PipelineOp>& ops) {
  return run_pipeline_ops(step, ops, nullptr);
}

double run_pipeline_ops(ScheduleStep& step, const std::vector<PipelineOp>& ops, StepTimers* timers) {
  Backend& be = *step.backend;
  std::vector<Module*> layers = step.model->layers();
  PipelinePlan single;
  if (!step.plan) single = make_pipeline_plan(static_cast<int64_t>(layers.size()), 1, 1, {});
  const PipelinePlan& plan = step.plan ? *step.plan : single;
  const int S = plan.stages, J = plan.virtual_count();
  Communicator* pp = step.parallel ? step.parallel->pp : nullptr;
  WEFT_ASSERT(S == 1 || (pp && pp->size() == S), "pipeline: no pp group of " + std::to_string(S) + " ranks");
  const int stage = S == 1 ? 0 : pp->rank();
  const int next_rank = (stage + 1) % S, prev_rank = (stage + S - 1) % S;

  struct InFlight {
    std::unique_ptr<Context> ctx;
    Tensor ids;
    int backwards = 0;  // chunks whose backward ran
  };
  std::map<int, InFlight> live;  // by microbatch
  std::vector<std::pair<std::unique_ptr<Work>, Tensor>> sends;  // waited at the end; keep buffers alive
  double loss_sum = 0;

  auto microbatch = [&](int mb) -> InFlight& {
    auto it = live.find(mb);
    if (it != live.end()) return it->second;
    InFlight& f = live[mb];
    f.ctx = std::make_unique<Context>(be, mb);
    step.load(mb, f.ids, f.ctx->targets);
    if (step.prepare) step.prepare(mb, *f.ctx);
    f.ctx->dloss_scale = step.dloss_scale;
    f.ctx->last_microbatch = mb == step.microbatches - 1;
    f.ctx->on_grad_ready = step.on_grad_ready;
    return f;
  };
  auto receive = [&](int peer, int tag) {
    Tensor buf = be.alloc_uninitialized(step.activation_shape, DType::F32, MemCategory::Activation);
    PhaseScope wait(timers, StepPhase::Bubble);  // the neighbour has not sent it yet
    pp->recv(buf, peer, tag)->wait();
    return buf;
  };

  for (const PipelineOp& op : ops) {
    const PipelineChunk& chunk = plan.at(stage, op.chunk);
    const int j = op.chunk * S + stage;
    PhaseScope phase(timers, op.kind == OpKind::Forward ? StepPhase::Forward : StepPhase::Backward);
    InFlight& f = microbatch(op.microbatch);
    Context& ctx = *f.ctx;
    if (op.kind == OpKind::Forward) {
      Tensor x = j == 0 ? f.ids : receive(prev_rank, message_tag(op.microbatch, j, J, false));
      for (int64_t l = chunk.first; l < chunk.end; ++l) x = layers[l]->forward(ctx, x);
      if (j == J - 1) {
        loss_sum += be.sum(x.data<float>(), x.numel());  // per-token losses [B,T]
      } else {
        sends.emplace_back(pp->send(x, next_rank, message_tag(op.microbatch, j + 1, J, false)), x);
      }
    } else {
      Tensor dy = j == J - 1 ? Tensor() : receive(next_rank, message_tag(op.microbatch, j, J, true));
      for (int64_t l = chunk.end - 1; l >= chunk.first; --l) dy = layers[l]->backward(ctx, dy);
      if (j > 0) sends.emplace_back(pp->send(dy, prev_rank, message_tag(op.microbatch, j - 1, J, true)), dy);
      if (++f.backwards == plan.virtual_stages) {  // its activations are freed
        if (step.stats)
          for (const auto& [key, value] : f.ctx->stats) (*step.stats)[key] += value;
        live.erase(op.microbatch);
      }
    }
  }
  {
    PhaseScope wait(timers, StepPhase::Comm);
    for (auto& [work, buf] : sends) work->wait();
  }
  WEFT_ASSERT(live.empty(), "pipeline: microbatches left without a backward");
  return loss_sum;
}

}  // namespace weft
