// Optimizers "adamw" and "sgd", learning-rate schedules "constant", "linear",
// "cosine": each against an independent reference computed here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "adamw.hpp"
#include "cpu_backend.hpp"
#include "lr_schedules.hpp"
#include "sgd.hpp"
#include "stub_backend.hpp"
#include "weft/error.hpp"
#include "weft/rng.hpp"

using weft::OptValue;

namespace {

// A backend that only reports its device and records the adamw call; enough
// to drive the optimizers' own logic without kernels.
class RecordingBackend final : public StubBackend {
 public:
  explicit RecordingBackend(weft::Device device) : device_(device) {}
  std::string name() const override { return "recording"; }
  weft::Device device() const override { return device_; }
  void adamw(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
             float weight_decay, int64_t step, float grad_scale) override {
    calls++;
    last = {p, g, m, v, n, lr, beta1, beta2, eps, weight_decay, step, grad_scale};
  }

  struct AdamwCall {
    float* p;
    const float* g;
    float* m;
    float* v;
    int64_t n;
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step;
    float grad_scale;
  };
  int calls = 0;
  AdamwCall last{};

 private:
  weft::Device device_;
};

weft::Options adamw_options(double lr = 6e-4, double beta1 = 0.9, double beta2 = 0.95, double eps = 1e-8,
                            double wd = 0.1, double clip = 1.0, weft::SourcePos lr_pos = {}) {
  return weft::Options("optimizer", {{"lr", {OptValue(lr), lr_pos}},
                                     {"beta1", {OptValue(beta1), {}}},
                                     {"beta2", {OptValue(beta2), {}}},
                                     {"eps", {OptValue(eps), {}}},
                                     {"weight_decay", {OptValue(wd), {}}},
                                     {"clip_grad_norm", {OptValue(clip), {}}}});
}

weft::Options sgd_options(double lr, double momentum, double wd, bool nesterov, double clip = 0) {
  return weft::Options("optimizer", {{"lr", {OptValue(lr), {}}},
                                     {"momentum", {OptValue(momentum), {}}},
                                     {"weight_decay", {OptValue(wd), {}}},
                                     {"nesterov", {OptValue(nesterov), {}}},
                                     {"clip_grad_norm", {OptValue(clip), {}}}});
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const weft::Error& e) {
    return e.what();
  }
  return "(no weft::Error)";
}

// ---------------------------------------------------------------- adamw ----

TEST(AdamW, OptionsAndForwarding) {
  weft::AdamW opt(adamw_options(3e-4, 0.8, 0.99, 1e-6, 0.05, 2.0));
  EXPECT_EQ(opt.state_slots(), 2);
  EXPECT_DOUBLE_EQ(opt.base_lr(), 3e-4);
  EXPECT_DOUBLE_EQ(opt.clip_grad_norm(), 2.0);

  RecordingBackend recorder(weft::Device::Cuda);  // adamw runs on any backend
  float p[3] = {}, g[3] = {}, m[3] = {}, v[3] = {};
  float* state[2] = {m, v};
  opt.update(recorder, p, g, state, 3, 1e-4, 0.25, true, 7);
  ASSERT_EQ(recorder.calls, 1);
  EXPECT_EQ(recorder.last.p, p);
  EXPECT_EQ(recorder.last.g, g);
  EXPECT_EQ(recorder.last.m, m);
  EXPECT_EQ(recorder.last.v, v);
  EXPECT_EQ(recorder.last.n, 3);
  EXPECT_FLOAT_EQ(recorder.last.lr, 1e-4f);
  EXPECT_FLOAT_EQ(recorder.last.beta1, 0.8f);
  EXPECT_FLOAT_EQ(recorder.last.beta2, 0.99f);
  EXPECT_FLOAT_EQ(recorder.last.eps, 1e-6f);
  EXPECT_FLOAT_EQ(recorder.last.weight_decay, 0.05f);
  EXPECT_EQ(recorder.last.step, 7);
  EXPECT_EQ(recorder.last.grad_scale, 0.25f);
  opt.update(recorder, p, g, state, 3, 1e-4, 1.0, false, 8);  // no decay for biases and norms
  EXPECT_EQ(recorder.last.weight_decay, 0.0f);
  EXPECT_EQ(recorder.last.grad_scale, 1.0f);
}

TEST(AdamW, RejectsBadOptions) {
  weft::SourcePos pos{"r.toml", 4, 6};
  std::string msg = error_of([&] { weft::AdamW o(adamw_options(0.0, 0.9, 0.95, 1e-8, 0.1, 1.0, pos)); });
  EXPECT_NE(msg.find("r.toml:4:6"), std::string::npos) << msg;
  EXPECT_NE(msg.find("optimizer.lr"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { weft::AdamW o(adamw_options(1e-3, 1.0)); }).find("optimizer.beta1"), std::string::npos);
  EXPECT_NE(error_of([] { weft::AdamW o(adamw_options(1e-3, 0.9, 1.0)); }).find("optimizer.beta2"),
            std::string::npos);
  EXPECT_NE(error_of([] { weft::AdamW o(adamw_options(1e-3, 0.9, 0.95, 0.0)); }).find("optimizer.eps"),
            std::string::npos);
  EXPECT_NO_THROW(weft::AdamW o(adamw_options(1e-3, 0.0, 0.0, 1e-8, 0.0, 0.0)));
}

TEST(AdamW, MatchesADoublePrecisionReferenceOverThreeSteps) {
  const int64_t n = 5000;
  const double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, wd = 0.1;
  weft::AdamW opt(adamw_options(1e-2, beta1, beta2, eps, wd, 1.0));
  weft::CpuBackend backend(3);

  for (bool decay : {true, false}) {
    std::vector<float> p(n), m(n, 0.f), v(n, 0.f), g(n);
    std::vector<double> rp(n), rm(n, 0.0), rv(n, 0.0);
    for (int64_t i = 0; i < n; ++i) p[i] = weft::normal01(1, 0, static_cast<uint64_t>(i));
    for (int64_t i = 0; i < n; ++i) rp[i] = p[i];
    float* state[2] = {m.data(), v.data()};
    const double lrs[3] = {1e-2, 5e-3, 2e-3};
    for (int64_t step = 1; step <= 3; ++step) {
      for (int64_t i = 0; i < n; ++i)
        g[i] = weft::normal01(2, static_cast<uint64_t>(step), static_cast<uint64_t>(i)) * (i % 7 == 0 ? 1e-3f : 1.f);
      const double clip = step == 2 ? 0.4 : 1.0;  // a clipped step in the middle
      opt.update(backend, p.data(), g.data(), state, n, lrs[step - 1], clip, decay, step);

      const double lr = lrs[step - 1], w = decay ? wd : 0.0;
      const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
      const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
      for (int64_t i = 0; i < n; ++i) {
        const double gi = clip * g[i];
        rm[i] = beta1 * rm[i] + (1 - beta1) * gi;
        rv[i] = beta2 * rv[i] + (1 - beta2) * gi * gi;
        const double mhat = rm[i] / bc1, vhat = rv[i] / bc2;
        rp[i] = rp[i] - lr * (mhat / (std::sqrt(vhat) + eps) + w * rp[i]);
      }
    }
    double max_err = 0;
    for (int64_t i = 0; i < n; ++i) {
      max_err = std::max(max_err, std::fabs(p[i] - rp[i]));
      ASSERT_NEAR(m[i], rm[i], 1e-6 + 1e-5 * std::fabs(rm[i])) << i;
      ASSERT_NEAR(v[i], rv[i], 1e-9 + 1e-5 * std::fabs(rv[i])) << i;
    }
    // Three steps of at most ~lr*(1 + wd*|p|) each, in fp32 arithmetic.
    EXPECT_LT(max_err, 2e-6) << "decay=" << decay;
    // The updates are not trivially zero: the parameters moved.
    double moved = 0;
    for (int64_t i = 0; i < n; ++i) moved += std::fabs(rp[i] - weft::normal01(1, 0, static_cast<uint64_t>(i)));
    EXPECT_GT(moved / n, 1e-2);
  }
}

// ------------------------------------------------------------------ sgd ----

TEST(Sgd, MomentumTrajectoryByHand) {
  // lr 0.1, momentum 0.5, weight decay 0.1, so g' = g + 0.1*p.
  // Element 0: p = 1, g = 1 every step. Element 1: p = 2, g = 0: only the decay term drives it.
  weft::Sgd opt(sgd_options(0.1, 0.5, 0.1, false));
  EXPECT_EQ(opt.state_slots(), 1);
  RecordingBackend host(weft::Device::Host);
  float p[2] = {1.f, 2.f};
  float g[2] = {1.f, 0.f};
  float buf[2] = {123.f, -5.f};  // overwritten at step 1
  float* state[1] = {buf};
  // Element 0 by hand:
  //   step 1: g' = 1.1,          buf = 1.1,                     p = 1 - 0.11 = 0.89
  //   step 2: g' = 1.089,        buf = 0.55 + 1.089 = 1.639,    p = 0.89 - 0.1639 = 0.7261
  //   step 3: g' = 1.07261,      buf = 0.8195 + 1.07261 = 1.89211, p = 0.7261 - 0.189211 = 0.536889
  // Element 1 by hand:
  //   step 1: g' = 0.2,          buf = 0.2,                     p = 1.98
  //   step 2: g' = 0.198,        buf = 0.1 + 0.198 = 0.298,     p = 1.9502
  //   step 3: g' = 0.19502,      buf = 0.149 + 0.19502 = 0.34402, p = 1.915798
  const double want_p0[3] = {0.89, 0.7261, 0.536889};
  const double want_p1[3] = {1.98, 1.9502, 1.915798};
  const double want_b0[3] = {1.1, 1.639, 1.89211};
  const double want_b1[3] = {0.2, 0.298, 0.34402};
  for (int step = 1; step <= 3; ++step) {
    opt.update(host, p, g, state, 2, 0.1, 1.0, true, step);
    EXPECT_NEAR(p[0], want_p0[step - 1], 1e-6) << step;
    EXPECT_NEAR(p[1], want_p1[step - 1], 1e-6) << step;
    EXPECT_NEAR(buf[0], want_b0[step - 1], 1e-6) << step;
    EXPECT_NEAR(buf[1], want_b1[step - 1], 1e-6) << step;
  }
}

TEST(Sgd, NesterovPlainAndNoDecay) {
  RecordingBackend host(weft::Device::Host);
  {
    // Nesterov, lr 0.1, momentum 0.5, p = 1, g = 1:
    //   buf 1, 1.5, 1.75; step d = g + 0.5*buf = 1.5, 1.75, 1.875; p = 0.85, 0.675, 0.4875
    weft::Sgd opt(sgd_options(0.1, 0.5, 0.0, true));
    float p = 1.f, g = 1.f, buf = 0.f;
    float* state[1] = {&buf};
    const double want[3] = {0.85, 0.675, 0.4875};
    for (int step = 1; step <= 3; ++step) {
      opt.update(host, &p, &g, state, 1, 0.1, 1.0, true, step);
      EXPECT_NEAR(p, want[step - 1], 1e-6) << step;
    }
  }
  {
    // No momentum: no state; p = 1 - 0.1*k for g = 1.
    weft::Sgd opt(sgd_options(0.1, 0.0, 0.0, false));
    EXPECT_EQ(opt.state_slots(), 0);
    float p = 1.f, g = 1.f;
    for (int step = 1; step <= 3; ++step) {
      opt.update(host, &p, &g, nullptr, 1, 0.1, 1.0, true, step);
      EXPECT_NEAR(p, 1.0 - 0.1 * step, 1e-6) << step;
    }
  }
  {
    // decay = false: weight decay does not touch p when g = 0.
    weft::Sgd opt(sgd_options(0.1, 0.9, 0.5, false));
    float p = 2.f, g = 0.f, buf = 0.f;
    float* state[1] = {&buf};
    for (int step = 1; step <= 3; ++step) opt.update(host, &p, &g, state, 1, 0.1, 1.0, false, step);
    EXPECT_EQ(p, 2.f);
  }
}

TEST(Sgd, ClipFactorScalesTheGradientNotTheDecay) {
  // lr 0.1, momentum 0.5, weight decay 0.1, clip factor 0.5, p = 1, g = 2:
  //   step 1: g' = 0.5*2 + 0.1*1 = 1.1, buf = 1.1, p = 0.89
  //   step 2: g' = 1 + 0.089 = 1.089, buf = 0.55 + 1.089 = 1.639, p = 0.7261
  weft::Sgd opt(sgd_options(0.1, 0.5, 0.1, false));
  RecordingBackend host(weft::Device::Host);
  float p = 1.f, g = 2.f, buf = 0.f;
  float* state[1] = {&buf};
  opt.update(host, &p, &g, state, 1, 0.1, 0.5, true, 1);
  EXPECT_NEAR(p, 0.89, 1e-6);
  opt.update(host, &p, &g, state, 1, 0.1, 0.5, true, 2);
  EXPECT_NEAR(p, 0.7261, 1e-6);
  EXPECT_NEAR(buf, 1.639, 1e-6);
}

TEST(Sgd, NeedsAHostBackendAndValidOptions) {
  weft::Sgd opt(sgd_options(0.1, 0.9, 0.0, false));
  RecordingBackend gpu(weft::Device::Cuda);
  float p = 1.f, g = 1.f, buf = 0.f;
  float* state[1] = {&buf};
  std::string msg = error_of([&] { opt.update(gpu, &p, &g, state, 1, 0.1, 1.0, true, 1); });
  EXPECT_NE(msg.find("sgd"), std::string::npos) << msg;
  EXPECT_NE(msg.find("host backend"), std::string::npos) << msg;
  EXPECT_EQ(p, 1.f);
  EXPECT_NE(error_of([] { weft::Sgd o(sgd_options(0.1, 0.0, 0.0, true)); }).find("optimizer.nesterov"),
            std::string::npos);
  EXPECT_NE(error_of([] { weft::Sgd o(sgd_options(0.1, 1.0, 0.0, false)); }).find("optimizer.momentum"),
            std::string::npos);
  EXPECT_NE(error_of([] { weft::Sgd o(sgd_options(0.0, 0.9, 0.0, false)); }).find("optimizer.lr"),
            std::string::npos);
}

// ---------------------------------------------------------- lr schedules ----

weft::Options lr_options(int64_t warmup, double min_lr, int64_t decay, weft::SourcePos min_pos = {}) {
  return weft::Options("lr_schedule", {{"warmup_steps", {OptValue(warmup), {}}},
                                       {"min_lr", {OptValue(min_lr), min_pos}},
                                       {"decay_steps", {OptValue(decay), {}}}});
}

const double kPi = 3.14159265358979323846;

TEST(LrSchedule, Constant) {
  weft::WarmupDecaySchedule s(weft::LrShape::Constant, lr_options(10, 0.0, 0), {1e-3, 100});
  EXPECT_DOUBLE_EQ(s.lr(1), 1e-3 * 1 / 10);
  EXPECT_DOUBLE_EQ(s.lr(5), 1e-3 * 5 / 10);
  EXPECT_DOUBLE_EQ(s.lr(10), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(11), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(100), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(5000), 1e-3);
  weft::WarmupDecaySchedule flat(weft::LrShape::Constant, lr_options(0, 0.0, 0), {2e-4, 10});
  EXPECT_DOUBLE_EQ(flat.lr(1), 2e-4);
  // min_lr is not used by constant, so it may exceed the lr.
  EXPECT_NO_THROW(weft::WarmupDecaySchedule(weft::LrShape::Constant, lr_options(0, 1.0, 0), {2e-4, 10}));
}

TEST(LrSchedule, Linear) {
  const double base = 1e-3, min_lr = 1e-4;
  weft::WarmupDecaySchedule s(weft::LrShape::Linear, lr_options(10, min_lr, 100), {base, 500});
  auto ref = [&](int64_t step) {
    if (step <= 10) return base * step / 10.0;
    double prog = std::min(1.0, (step - 10) / 90.0);
    return base - (base - min_lr) * prog;
  };
  for (int64_t step : {1, 3, 10, 11, 40, 55, 99, 100, 101, 500}) EXPECT_NEAR(s.lr(step), ref(step), 1e-15) << step;
  EXPECT_NEAR(s.lr(55), 5.5e-4, 1e-15);
  EXPECT_NEAR(s.lr(100), min_lr, 1e-15);
  EXPECT_NEAR(s.lr(400), min_lr, 1e-15);
}

TEST(LrSchedule, Cosine) {
  const double base = 1e-3, min_lr = 1e-4;
  weft::WarmupDecaySchedule s(weft::LrShape::Cosine, lr_options(10, min_lr, 100), {base, 500});
  auto ref = [&](int64_t step) {
    if (step <= 10) return base * step / 10.0;
    double prog = std::min(1.0, (step - 10) / 90.0);
    return min_lr + 0.5 * (base - min_lr) * (1 + std::cos(kPi * prog));
  };
  for (int64_t step : {1, 9, 10, 11, 40, 55, 77, 100, 101, 500}) EXPECT_NEAR(s.lr(step), ref(step), 1e-15) << step;
  EXPECT_NEAR(s.lr(10), base, 1e-15);
  EXPECT_NEAR(s.lr(40), 1e-4 + 0.45e-3 * 1.5, 1e-15);  // progress 1/3: cos = 1/2
  EXPECT_NEAR(s.lr(55), 5.5e-4, 1e-15);                // progress 1/2: halfway
  EXPECT_NEAR(s.lr(100), min_lr, 1e-15);
  EXPECT_NEAR(s.lr(250), min_lr, 1e-15);
}

TEST(LrSchedule, DecayStepsDefaultToTheRunLength) {
  weft::WarmupDecaySchedule s(weft::LrShape::Cosine, lr_options(0, 0.0, 0), {6e-4, 50});
  EXPECT_EQ(s.config().decay_steps, 50);
  EXPECT_NEAR(s.lr(1), 0.5 * 6e-4 * (1 + std::cos(kPi * 1 / 50.0)), 1e-15);
  EXPECT_NEAR(s.lr(25), 3e-4, 1e-15);
  EXPECT_NEAR(s.lr(50), 0.0, 1e-15);
  weft::WarmupDecaySchedule l(weft::LrShape::Linear, lr_options(0, 0.0, 0), {6e-4, 50});
  EXPECT_NEAR(l.lr(10), 6e-4 * 40 / 50.0, 1e-15);
}

TEST(LrSchedule, RejectsInconsistentOptions) {
  weft::SourcePos pos{"run.toml", 12, 3};
  std::string msg =
      error_of([&] { weft::WarmupDecaySchedule s(weft::LrShape::Cosine, lr_options(0, 1e-2, 0, pos), {1e-3, 10}); });
  EXPECT_NE(msg.find("run.toml:12:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lr_schedule.min_lr"), std::string::npos) << msg;
  msg = error_of([] { weft::WarmupDecaySchedule s(weft::LrShape::Linear, lr_options(20, 0.0, 10), {1e-3, 100}); });
  EXPECT_NE(msg.find("lr_schedule.warmup_steps"), std::string::npos) << msg;
  EXPECT_NO_THROW(weft::WarmupDecaySchedule(weft::LrShape::Cosine, lr_options(100, 0.0, 0), {1e-3, 100}));
}

TEST(LrSchedule, RunShorterThanItsWarmupIsAllWarmup) {
  // A short trial of a long recipe (--set run.steps=4) is not refused.
  weft::WarmupDecaySchedule s(weft::LrShape::Cosine, lr_options(200, 0.0, 0), {1e-3, 100});
  EXPECT_NEAR(s.lr(1), 1e-3 / 200, 1e-18);
  EXPECT_NEAR(s.lr(100), 1e-3 * 100 / 200, 1e-18);
}

// Options of `shape`'s full schema with `values` set.
weft::Options sched(weft::LrShape shape, const std::map<std::string, OptValue>& values) {
  return weft::options_with_defaults(weft::WarmupDecaySchedule::schema(shape), "lr_schedule", values);
}

TEST(LrSchedule, PreviousReadsTheStepBefore) {
  // Megatron's convention: step k applies the schedule at k - 1 (0 at step 1 with a warm-up from 0).
  auto opts = sched(weft::LrShape::Cosine, {{"warmup_steps", OptValue(int64_t(5))},
                                            {"min_lr", OptValue(1e-4)},
                                            {"step_of_lr", OptValue(std::string("previous"))}});
  weft::WarmupDecaySchedule prev(weft::LrShape::Cosine, opts, {1e-3, 30});
  EXPECT_EQ(prev.lr(1), 0.0);
  EXPECT_NEAR(prev.lr(2), 1e-3 / 5, 1e-18);
  EXPECT_NEAR(prev.lr(6), 1e-3, 1e-18);  // the peak one step later than "current"
  for (int64_t k = 1; k <= 30; ++k) EXPECT_EQ(prev.lr(k), prev.lr_at(k - 1)) << k;
}

TEST(LrSchedule, WarmupInitLrAndFraction) {
  auto opts = sched(weft::LrShape::Linear, {{"warmup_fraction", OptValue(0.25)},
                                            {"warmup_init_lr", OptValue(2e-4)},
                                            {"decay_steps", OptValue(int64_t(40))}});
  weft::WarmupDecaySchedule s(weft::LrShape::Linear, opts, {1e-3, 100});
  EXPECT_EQ(s.config().warmup_steps, 10);
  EXPECT_NEAR(s.lr_at(0), 2e-4, 1e-18);
  EXPECT_NEAR(s.lr(5), 2e-4 + 8e-4 * 0.5, 1e-18);
  EXPECT_NEAR(s.lr(10), 1e-3, 1e-18);
  EXPECT_NEAR(s.lr(25), 0.5e-3, 1e-15);  // linear to min_lr 0 at 40
  EXPECT_EQ(s.lr(41), 0.0);
}

TEST(LrSchedule, InverseSquareRoot) {
  auto opts = sched(weft::LrShape::InverseSquareRoot, {{"warmup_steps", OptValue(int64_t(4))},
                                                       {"min_lr", OptValue(2e-4)}});
  weft::WarmupDecaySchedule s(weft::LrShape::InverseSquareRoot, opts, {1e-3, 100});
  EXPECT_NEAR(s.lr(4), 1e-3, 1e-18);
  EXPECT_NEAR(s.lr(16), 1e-3 * 2.0 / 4.0, 1e-18);  // sqrt(4 / 16)
  EXPECT_NEAR(s.lr(64), 2.5e-4, 1e-18);
  EXPECT_NEAR(s.lr(100), 2e-4, 1e-18);  // floored at min_lr (1e-3 * 2 / 10 = 2e-4 as well)
  EXPECT_NEAR(s.lr(81), std::max(2e-4, 1e-3 * 2.0 / 9.0), 1e-18);
}

TEST(LrSchedule, WsdStylesEndAtMinLr) {
  const double base = 1e-3, min_lr = 1e-4;
  for (const char* style : {"linear", "cosine", "exponential", "minus_sqrt"}) {
    auto opts = sched(weft::LrShape::Wsd, {{"warmup_steps", OptValue(int64_t(2))},
                                           {"min_lr", OptValue(min_lr)},
                                           {"wsd_decay_steps", OptValue(int64_t(8))},
                                           {"wsd_decay_style", OptValue(std::string(style))}});
    weft::WarmupDecaySchedule s(weft::LrShape::Wsd, opts, {base, 20});
    EXPECT_NEAR(s.lr(12), base, 1e-18) << style;  // stable until 20 - 8
    EXPECT_NEAR(s.lr(20), min_lr, 1e-15) << style;
    EXPECT_NEAR(s.lr(21), min_lr, 1e-18) << style;
    double a = 4.0 / 8.0, c = 0;  // step 16: halfway through the decay
    if (std::string(style) == "linear") c = 1 - a;
    if (std::string(style) == "cosine") c = 0.5 * (1 + std::cos(kPi * a));
    if (std::string(style) == "exponential") c = 2 * std::pow(0.5, a) - 1;
    if (std::string(style) == "minus_sqrt") c = 1 - std::sqrt(a);
    EXPECT_NEAR(s.lr(16), min_lr + c * (base - min_lr), 1e-15) << style;
  }
}

TEST(LrSchedule, WeightDecaySchedule) {
  auto none = sched(weft::LrShape::Cosine, {});
  EXPECT_FALSE(weft::WarmupDecaySchedule(weft::LrShape::Cosine, none, {1e-3, 10}).weight_decay(3).has_value());
  auto lin = sched(weft::LrShape::Constant, {{"weight_decay_style", OptValue(std::string("linear"))},
                                             {"weight_decay_start", OptValue(0.0)},
                                             {"weight_decay_end", OptValue(0.1)}});
  weft::WarmupDecaySchedule s(weft::LrShape::Constant, lin, {1e-3, 10});
  EXPECT_NEAR(*s.weight_decay(5), 0.05, 1e-15);
  EXPECT_NEAR(*s.weight_decay(10), 0.1, 1e-15);
  auto cos = sched(weft::LrShape::Constant, {{"weight_decay_style", OptValue(std::string("cosine"))},
                                             {"weight_decay_start", OptValue(0.2)},
                                             {"weight_decay_end", OptValue(0.0)},
                                             {"step_of_lr", OptValue(std::string("previous"))}});
  weft::WarmupDecaySchedule c(weft::LrShape::Constant, cos, {1e-3, 10});
  EXPECT_NEAR(*c.weight_decay(1), 0.2, 1e-15);   // position 0
  EXPECT_NEAR(*c.weight_decay(6), 0.1, 1e-15);   // position 5 of 10: halfway
  // A constant style with a start or end set is a mistake, not silently ignored.
  auto bad = sched(weft::LrShape::Constant, {{"weight_decay_end", OptValue(0.1)}});
  EXPECT_NE(error_of([&] { weft::WarmupDecaySchedule x(weft::LrShape::Constant, bad, {1e-3, 10}); })
                .find("lr_schedule.weight_decay_end"),
            std::string::npos);
  // AdamW takes the scheduled value.
  weft::AdamW adam(weft::AdamWConfig{});
  EXPECT_TRUE(adam.set_weight_decay(0.03));
  EXPECT_EQ(adam.config().weight_decay, 0.03);
}

TEST(LrSchedule, RefusesWarmupNotShorterThanDecay) {
  auto msg = error_of([] {
    weft::WarmupDecaySchedule s(weft::LrShape::Cosine, sched(weft::LrShape::Cosine, {{"warmup_steps", OptValue(int64_t(10))},
                                                                                   {"decay_steps", OptValue(int64_t(10))}}),
                                {1e-3, 100});
  });
  EXPECT_NE(msg.find("lr_schedule.warmup_steps: warm-up of 10 steps is not shorter than decay_steps 10"),
            std::string::npos)
      << msg;
  msg = error_of([] {
    weft::WarmupDecaySchedule s(weft::LrShape::Cosine,
                                sched(weft::LrShape::Cosine, {{"warmup_steps", OptValue(int64_t(2))},
                                                              {"warmup_fraction", OptValue(0.1)}}),
                                {1e-3, 100});
  });
  EXPECT_NE(msg.find("lr_schedule.warmup_fraction"), std::string::npos) << msg;
  msg = error_of([] {
    weft::WarmupDecaySchedule s(weft::LrShape::Cosine, sched(weft::LrShape::Cosine, {{"warmup_init_lr", OptValue(2e-3)}}),
                                {1e-3, 100});
  });
  EXPECT_NE(msg.find("lr_schedule.warmup_init_lr"), std::string::npos) << msg;
  msg = error_of([] {
    weft::WarmupDecaySchedule s(weft::LrShape::Wsd,
                                sched(weft::LrShape::Wsd, {{"warmup_steps", OptValue(int64_t(5))},
                                                           {"wsd_decay_steps", OptValue(int64_t(8))}}),
                                {1e-3, 12});
  });
  EXPECT_NE(msg.find("lr_schedule.wsd_decay_steps: 8 exceeds decay_steps 12 - warmup_steps 5"), std::string::npos)
      << msg;
  msg = error_of([] {
    weft::WarmupDecaySchedule s(weft::LrShape::Wsd, sched(weft::LrShape::Wsd, {}), {1e-3, 12});
  });
  EXPECT_NE(msg.find("lr_schedule.wsd_decay_steps"), std::string::npos) << msg;
}

}  // namespace
