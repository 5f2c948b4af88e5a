#include "lr_schedules.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace weft {

namespace {

const double kPi = 3.14159265358979323846;

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.12g", v);
  return buf;
}

const char* shape_name(LrShape s) {
  switch (s) {
    case LrShape::Constant: return "constant";
    case LrShape::Linear: return "linear";
    case LrShape::Cosine: return "cosine";
    case LrShape::InverseSquareRoot: return "inverse_square_root";
    case LrShape::Wsd: return "wsd";
  }
  return "?";
}

}  // namespace

OptionSchema WarmupDecaySchedule::schema(LrShape shape) {
  OptionSchema s = {
      opt_int("warmup_steps", 0, "steps of linear warm-up from warmup_init_lr to the optimizer's lr", 0),
      opt_float("warmup_fraction", 0.0, "warm-up as a fraction of decay_steps, in [0, 1) (instead of warmup_steps)",
                0.0, 1.0),
      opt_float("warmup_init_lr", 0.0, "learning rate the warm-up starts from", 0.0),
      opt_float("min_lr", 0.0, "learning rate at the end of the decay", 0.0),
      opt_int("decay_steps", 0, "step at which the decay reaches min_lr (0 = the run's total steps)", 0),
      opt_string("step_of_lr", "current",
                 "which schedule position step k uses: \"current\" (k) or \"previous\" (k - 1, Megatron-LM's)",
                 {"current", "previous"}),
      opt_string("weight_decay_style", "constant",
                 "weight-decay schedule over the run: \"constant\" (the optimizer's weight_decay), \"linear\", "
                 "\"cosine\" (weight_decay_start -> weight_decay_end)",
                 {"constant", "linear", "cosine"}),
      opt_float("weight_decay_start", 0.0, "weight decay at step 0 of a linear or cosine weight-decay schedule", 0.0),
      opt_float("weight_decay_end", 0.0, "weight decay at the last step of a linear or cosine weight-decay schedule",
                0.0),
  };
  if (shape == LrShape::Wsd) {
    s.push_back(opt_int("wsd_decay_steps", 0, "steps of the final decay (required, > 0), ending at decay_steps", 0));
    s.push_back(opt_string("wsd_decay_style", "exponential", "shape of the final decay",
                           {"linear", "cosine", "exponential", "minus_sqrt"}));
  }
  return s;
}

WarmupDecaySchedule::WarmupDecaySchedule(LrShape shape, const Options& options, const LrEnv& env) {
  LrScheduleConfig& c = config_;
  c.shape = shape;
  c.base_lr = env.base_lr;
  c.total_steps = env.total_steps;
  c.min_lr = options.get_float("min_lr");
  const int64_t decay_steps = options.get_int("decay_steps");
  c.decay_steps = decay_steps > 0 ? decay_steps : env.total_steps;
  // Keys that older callers (tests, plugin authors' own schemas) may not set.
  auto get_f = [&](const char* k, double d) { return options.has(k) ? options.get_float(k) : d; };
  auto get_s = [&](const char* k, const char* d) { return options.has(k) ? options.get_string(k) : std::string(d); };
  c.warmup_init_lr = get_f("warmup_init_lr", 0.0);
  c.previous = get_s("step_of_lr", "current") == "previous";
  const double fraction = get_f("warmup_fraction", 0.0);
  c.warmup_steps = options.get_int("warmup_steps");
  if (c.warmup_steps < 0) options.fail("warmup_steps", "must be >= 0");
  if (!(c.min_lr >= 0)) options.fail("min_lr", "must be >= 0");
  if (decay_steps < 0) options.fail("decay_steps", "must be >= 0 (0 = the run's total steps)");
  if (!(fraction >= 0 && fraction < 1)) options.fail("warmup_fraction", num(fraction) + " is not in [0, 1)");
  if (fraction > 0) {
    if (c.warmup_steps > 0)
      options.fail("warmup_fraction", "set together with warmup_steps " + std::to_string(c.warmup_steps) +
                                          "; give one of them");
    // Megatron: warm-up = fraction x decay span, in whole steps.
    c.warmup_steps = static_cast<int64_t>(fraction * static_cast<double>(c.decay_steps));
  }
  if (!(c.warmup_init_lr >= 0) || c.warmup_init_lr > c.base_lr)
    options.fail("warmup_init_lr", num(c.warmup_init_lr) + " is not in [0, the optimizer's lr " + num(c.base_lr) + "]");

  const std::string wd_style = get_s("weight_decay_style", "constant");
  c.wd_style = wd_style == "linear" ? WdStyle::Linear : wd_style == "cosine" ? WdStyle::Cosine : WdStyle::Constant;
  const double wd_start = get_f("weight_decay_start", 0.0), wd_end = get_f("weight_decay_end", 0.0);
  if (c.wd_style == WdStyle::Constant && (wd_start != 0 || wd_end != 0))
    options.fail(wd_start != 0 ? "weight_decay_start" : "weight_decay_end",
                 "needs weight_decay_style \"linear\" or \"cosine\" (\"constant\" uses optimizer.weight_decay)");
  c.wd_start = wd_start;
  c.wd_end = wd_end;

  if (shape == LrShape::Wsd) {
    c.wsd_decay_steps = options.get_int("wsd_decay_steps");
    const std::string style = options.get_string("wsd_decay_style");
    c.wsd_decay = style == "linear"   ? WsdDecay::Linear
                  : style == "cosine" ? WsdDecay::Cosine
                  : style == "minus_sqrt" ? WsdDecay::MinusSqrt
                                          : WsdDecay::Exponential;
    if (c.wsd_decay_steps <= 0) options.fail("wsd_decay_steps", "must be > 0 for the wsd schedule");
    if (c.wsd_decay_steps > c.decay_steps - c.warmup_steps)
      options.fail("wsd_decay_steps", std::to_string(c.wsd_decay_steps) + " exceeds decay_steps " +
                                          std::to_string(c.decay_steps) + " - warmup_steps " +
                                          std::to_string(c.warmup_steps));
  }
  if (shape == LrShape::Constant) return;  // min_lr and decay_steps play no part
  if (c.min_lr > c.base_lr)
    options.fail("min_lr", num(c.min_lr) + " is above the optimizer's lr " + num(c.base_lr));
  // Megatron refuses a warm-up that reaches the end of the decay. A run
  // shorter than its warm-up with decay_steps left at the run's length is a
  // short trial of a long recipe (--set run.steps=4) and is accepted.
  if ((decay_steps > 0 || fraction > 0) && c.warmup_steps >= c.decay_steps)
    options.fail(fraction > 0 ? "warmup_fraction" : "warmup_steps",
                 "warm-up of " + std::to_string(c.warmup_steps) + " steps is not shorter than decay_steps " +
                     std::to_string(c.decay_steps));
}

double WarmupDecaySchedule::lr_at(double t) const {
  const LrScheduleConfig& c = config_;
  const double td = t;
  if (c.warmup_steps > 0 && t <= static_cast<double>(c.warmup_steps))
    return c.warmup_init_lr + (c.base_lr - c.warmup_init_lr) * td / static_cast<double>(c.warmup_steps);
  if (c.shape == LrShape::Constant) return c.base_lr;
  if (t > static_cast<double>(c.decay_steps)) return c.min_lr;
  if (c.shape == LrShape::InverseSquareRoot) {
    const double w = static_cast<double>(std::max<int64_t>(c.warmup_steps, 1));
    return std::max(c.min_lr, c.base_lr * std::sqrt(w) / std::sqrt(std::max(td, 1.0)));
  }
  double coeff = 1.0;
  if (c.shape == LrShape::Wsd) {
    const double anneal_start = static_cast<double>(c.decay_steps - c.wsd_decay_steps);
    if (t > anneal_start) {
      const double a = (t - anneal_start) / static_cast<double>(c.wsd_decay_steps);
      switch (c.wsd_decay) {
        case WsdDecay::Linear: coeff = 1.0 - a; break;
        case WsdDecay::Cosine: coeff = 0.5 * (1.0 + std::cos(kPi * a)); break;
        case WsdDecay::Exponential: coeff = 2.0 * std::pow(0.5, a) - 1.0; break;
        case WsdDecay::MinusSqrt: coeff = 1.0 - std::sqrt(a); break;
      }
    }
  } else {
    const int64_t span = c.decay_steps - c.warmup_steps;
    double r = span > 0 ? (t - static_cast<double>(c.warmup_steps)) / static_cast<double>(span) : 1.0;
    r = std::clamp(r, 0.0, 1.0);
    coeff = c.shape == LrShape::Linear ? 1.0 - r : 0.5 * (1.0 + std::cos(kPi * r));
  }
  return c.min_lr + coeff * (c.base_lr - c.min_lr);
}

double WarmupDecaySchedule::lr(int64_t step) const {
  return lr_at(static_cast<double>(config_.previous ? step - 1 : step));
}

std::optional<double> WarmupDecaySchedule::weight_decay(int64_t step) const {
  return weight_decay_at(static_cast<double>(config_.previous ? step - 1 : step));
}

std::optional<double> WarmupDecaySchedule::weight_decay_at(double t) const {
  const LrScheduleConfig& c = config_;
  if (c.wd_style == WdStyle::Constant) return std::nullopt;
  if (c.total_steps <= 0 || t >= static_cast<double>(c.total_steps)) return c.wd_end;
  const double ratio = t / static_cast<double>(c.total_steps);
  const double coeff = c.wd_style == WdStyle::Linear ? ratio : 0.5 * (1.0 - std::cos(kPi * ratio));
  return c.wd_start + coeff * (c.wd_end - c.wd_start);
}

// What a resume compares (resolved values: decay_steps after its default, the warm-up after warmup_fraction).
std::map<std::string, std::string> WarmupDecaySchedule::settings() const {
  const LrScheduleConfig& c = config_;
  std::map<std::string, std::string> s = {{"plugin", shape_name(c.shape)},
                                          {"lr", num(c.base_lr)},
                                          {"warmup_steps", std::to_string(c.warmup_steps)},
                                          {"warmup_init_lr", num(c.warmup_init_lr)},
                                          {"step_of_lr", c.previous ? "previous" : "current"}};
  if (c.shape != LrShape::Constant) {
    s["min_lr"] = num(c.min_lr);
    s["decay_steps"] = std::to_string(c.decay_steps);
  }
  if (c.shape == LrShape::Wsd) {
    const char* styles[] = {"linear", "cosine", "exponential", "minus_sqrt"};
    s["wsd_decay_steps"] = std::to_string(c.wsd_decay_steps);
    s["wsd_decay_style"] = styles[static_cast<int>(c.wsd_decay)];
  }
  if (c.wd_style != WdStyle::Constant) {
    s["weight_decay_style"] = c.wd_style == WdStyle::Linear ? "linear" : "cosine";
    s["weight_decay_start"] = num(c.wd_start);
    s["weight_decay_end"] = num(c.wd_end);
    s["weight_decay_steps"] = std::to_string(c.total_steps);
  }
  return s;
}

}  // namespace weft
