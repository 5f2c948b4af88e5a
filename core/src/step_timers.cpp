#include "step_timers.hpp"

namespace weft {

const char* step_phase_field(StepPhase phase) {
  static const char* const kFields[kStepPhases] = {"time_forward_ms", "time_backward_ms", "time_optimizer_ms",
                                                   "time_comm_ms", "time_bubble_ms"};
  return kFields[static_cast<int>(phase)];
}

void StepTimers::charge(Clock::time_point now) {
  if (running_) step_s_[static_cast<int>(current_)] += std::chrono::duration<double>(now - since_).count();
  since_ = now;
}

void StepTimers::begin_step(StepPhase phase) {
  step_s_.fill(0);
  current_ = phase;
  running_ = true;
  since_ = Clock::now();
}

void StepTimers::end_step() {
  charge(Clock::now());
  running_ = false;
  for (int i = 0; i < kStepPhases; ++i) total_s_[i] += step_s_[i];
}

StepPhase StepTimers::enter(StepPhase phase) {
  charge(Clock::now());
  StepPhase previous = current_;
  current_ = phase;
  return previous;
}

std::vector<std::pair<std::string, double>> StepTimers::fields() const {
  std::vector<std::pair<std::string, double>> out;
  for (int i = 0; i < kStepPhases; ++i) out.emplace_back(step_phase_field(static_cast<StepPhase>(i)), step_s_[i] * 1e3);
  return out;
}

double model_flops_utilization(double tokens_per_s, double flops_per_token, double peak_tflops_per_rank, int ranks) {
  if (!(peak_tflops_per_rank > 0) || ranks < 1) return 0;
  return tokens_per_s * flops_per_token / (peak_tflops_per_rank * 1e12 * ranks);
}

}  // namespace weft

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "weft/backend.hpp"
#include "weft/comm.hpp"

namespace weft {

double measure_gemm_tflops(Backend& backend) {
  const int64_t n = 512;
  Tensor a = backend.alloc({n, n}, DType::F32, MemCategory::Workspace);
  Tensor b = backend.alloc({n, n}, DType::F32, MemCategory::Workspace);
  Tensor c = backend.alloc({n, n}, DType::F32, MemCategory::Workspace);
  GemmArgs g;
  g.m = g.n = g.k = n;
  g.a = a.data<float>(), g.lda = n;
  g.b = b.data<float>(), g.ldb = n;
  g.c = c.data<float>(), g.ldc = n;
  double best = 0;
  for (int rep = 0; rep < 6; ++rep) {  // the first warms caches and thread pools
    auto t0 = std::chrono::steady_clock::now();
    backend.gemm(g);
    backend.synchronize();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0 && s > 0) best = std::max(best, 2.0 * n * n * n / s / 1e12);
  }
  return best;
}

void log_timer_summary(const StepTimers& timers, int64_t steps, Communicator& world, Backend& backend,
                       spdlog::logger& log) {
  const int ranks = world.size(), rank = world.rank();
  // [phase][rank]: each rank fills its column, a sum gathers them all.
  std::vector<float> ms(static_cast<size_t>(kStepPhases) * ranks, 0.f);
  for (int p = 0; p < kStepPhases; ++p)
    ms[p * ranks + rank] = static_cast<float>(timers.total_s(static_cast<StepPhase>(p)) * 1e3 / std::max<int64_t>(1, steps));
  Tensor buf = backend.alloc({static_cast<int64_t>(ms.size())}, DType::F32, MemCategory::Workspace);
  backend.copy_from_host(buf, ms.data());
  if (ranks > 1) world.all_reduce(buf, ReduceOp::Sum)->wait();
  backend.copy_to_host(ms.data(), buf);
  if (rank != 0) return;
  log.info("timers over {} steps, ms per step (min / max over {} ranks):", steps, ranks);
  for (int p = 0; p < kStepPhases; ++p) {
    const float* row = ms.data() + p * ranks;
    const auto [lo, hi] = std::minmax_element(row, row + ranks);
    char line[160];
    std::snprintf(line, sizeof line, "  %-18s min %9.2f (rank %d)  max %9.2f (rank %d)",
                  step_phase_field(static_cast<StepPhase>(p)), *lo, static_cast<int>(lo - row), *hi,
                  static_cast<int>(hi - row));
    log.info("{}", line);
  }
}

}  // namespace weft
