// Where a training step's wall-clock time goes: forward, backward, optimizer,
// exposed communication (time spent waiting on a collective) and pipeline
// bubble (time a stage waits for its neighbour's activation or gradient).
// Exactly one phase is current at any moment, so nested phases (a gradient
// all-reduce inside a backward) pause the outer one and the phases of a step
// sum to its wall-clock time.
#pragma once

#include <array>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace weft {

enum class StepPhase { Forward, Backward, Optimizer, Comm, Bubble };
constexpr int kStepPhases = 5;
// The metrics.jsonl field of each phase, in StepPhase order.
const char* step_phase_field(StepPhase phase);

class StepTimers {
 public:
  using Clock = std::chrono::steady_clock;
  // Starts a step in `phase`; clears the step's figures (totals are kept).
  void begin_step(StepPhase phase);
  // Ends the step: charges the current phase, adds the step to the totals.
  void end_step();
  // Makes `phase` current; returns the phase it replaces.
  StepPhase enter(StepPhase phase);
  double step_ms(StepPhase phase) const { return step_s_[static_cast<int>(phase)] * 1e3; }
  double total_s(StepPhase phase) const { return total_s_[static_cast<int>(phase)]; }
  // (field, ms) of the last step, for the metrics record.
  std::vector<std::pair<std::string, double>> fields() const;

 private:
  void charge(Clock::time_point now);
  StepPhase current_ = StepPhase::Forward;
  bool running_ = false;
  Clock::time_point since_{};
  std::array<double, kStepPhases> step_s_{}, total_s_{};
};

// Makes a phase current for a scope and restores the previous one; a null
// StepTimers (a caller that does not time) makes it a no-op.
class PhaseScope {
 public:
  PhaseScope(StepTimers* timers, StepPhase phase) : timers_(timers) {
    if (timers_) previous_ = timers_->enter(phase);
  }
  ~PhaseScope() {
    if (timers_) timers_->enter(previous_);
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  StepTimers* timers_;
  StepPhase previous_ = StepPhase::Forward;
};

// Model FLOPs utilisation: the fraction of `ranks` devices' peak that
// `flops_per_token` (forward + backward) at `tokens_per_s` uses. 0 when the
// peak is unknown.
double model_flops_utilization(double tokens_per_s, double flops_per_token, double peak_tflops_per_rank, int ranks);

}  // namespace weft

namespace spdlog {
class logger;
}

namespace weft {

class Backend;
class Communicator;

// A fp32 GEMM rate this backend reaches (TFLOP/s): the best of a few
// 512x512x512 products, the ceiling MFU is measured against when the recipe
// gives no backend.peak_tflops.
double measure_gemm_tflops(Backend& backend);

// With log.timers: every rank's mean ms per step of each phase, gathered over
// `world`, and rank 0 logs min and max over ranks (and which rank) per phase,
// so a straggler or an unbalanced pipeline stage shows. Collective.
void log_timer_summary(const StepTimers& timers, int64_t steps, Communicator& world, Backend& backend,
                       spdlog::logger& log);

}  // namespace weft
