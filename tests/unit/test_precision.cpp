// Precision modes end to end on gpt-tiny (docs/precision.md): bf16 and fp16
// follow the fp32 loss curve, memory per parameter is as the table says,
// checkpoints keep the fp32 masters and resume bit for bit (fp16 with its
// loss-scaler state), checkpoints cross between modes, and an fp16 overflow
// skips its step and backs the scale off. The fp16 loss scaler's rules are
// checked on their own against the rules as written.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "loss_scaler.hpp"
#include "runtime.hpp"
#include "safetensors.hpp"
#include "stub_backend.hpp"
#include "trainer.hpp"
#include "weft/error.hpp"
#include "weft/loader.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Trainer {
  weft::Registry registry;
  weft::PluginScan scan;
  Trainer() { weft::load_plugin_dirs(registry, weft::build_tree_plugin_dirs(WEFT_BUILD_ROOT), scan); }
  void train(std::vector<std::string> overrides, const fs::path& out, bool resume = false,
             const std::string& from = "") {
    overrides.push_back("run.out_dir=" + out.string());
    weft::Recipe recipe = weft::load_recipe_for_run(std::string(WEFT_SOURCE_ROOT) + "/examples/gpt-tiny.toml",
                                                    overrides, registry, scan);
    weft::TrainArgs args;
    args.resume = resume;
    args.resume_from = from;
    weft::train(recipe, registry, args);
  }
};

std::map<int64_t, json> read_metrics(const fs::path& path) {
  std::map<int64_t, json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    out[j.at("step").get<int64_t>()] = j;
  }
  return out;
}

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("weft-precision-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// `weft eval` of a checkpoint over a text file: its mean loss.
double eval_loss(const fs::path& checkpoint, const std::string& text) {
  const std::string cmd = std::string(WEFT_BUILD_ROOT) + "/weft eval --checkpoint " + checkpoint.string() +
                          " --text " + text + " 2>/dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) return NAN;
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) out += buf;
  ::pclose(pipe);
  return json::parse(out.substr(0, out.find('\n'))).at("loss").get<double>();
}

const std::vector<std::string> kTiny = {"log.interval=10", "batch.micro=8", "checkpoint.interval=0"};

// The acceptance run: 200 steps of gpt-tiny in each mode. bf16 and fp16 stay
// within 2% of the fp32 loss at every logged step after 20 and in the final
// eval loss on a held-out fortune file; fp16 never needs to skip at its
// default scale here; the mem_* figures follow the bytes-per-parameter table.
// "bf16-grads16" is bf16 with 16-bit gradients (accumulate_grads_in_fp32 =
// false) over 4 microbatches of 2, so they accumulate in bf16.
TEST(Precision, Bf16AndFp16FollowFp32OnGptTiny) {
  Trainer run;
  std::map<std::string, std::map<int64_t, json>> m;
  std::map<std::string, double> eval;
  const std::string held_out = "/usr/share/games/fortunes/debian";
  for (const std::string mode : {"fp32", "bf16", "fp16", "bf16-grads16"}) {
    fs::path out = temp_dir("curve-" + mode);
    auto o = kTiny;
    o.push_back("run.steps=200");
    if (mode == "bf16-grads16") {
      o.insert(o.end(), {"precision.plugin=bf16", "precision.accumulate_grads_in_fp32=false", "batch.micro=2"});
    } else {
      o.push_back("precision.plugin=" + mode);
    }
    run.train(o, out);
    m[mode] = read_metrics(out / "metrics.jsonl");
    eval[mode] = eval_loss(out / "checkpoints" / "step_200", held_out);
    fs::remove_all(out);
  }
  ASSERT_EQ(m["fp32"].size(), 20u);
  for (const std::string mode : {"bf16", "fp16", "bf16-grads16"}) {
    ASSERT_EQ(m[mode].size(), 20u) << mode;
    for (const auto& [step, rec] : m["fp32"]) {
      if (step <= 20) continue;
      const double want = rec["loss"].get<double>(), got = m[mode][step]["loss"].get<double>();
      EXPECT_LE(std::fabs(got - want), 0.02 * want) << mode << " step " << step << ": " << got << " vs fp32 " << want;
    }
    EXPECT_LE(std::fabs(eval[mode] - eval["fp32"]), 0.02 * eval["fp32"]) << mode << " eval " << eval[mode];
  }
  // The loss fell (the modes are not merely equally broken).
  EXPECT_LT(m["fp32"][200]["loss"].get<double>(), std::log(257.0) - 2.0);
  EXPECT_EQ(m["fp16"][200]["skipped"].get<double>(), 0);
  EXPECT_EQ(m["fp16"][200]["loss_scale"].get<double>(), 65536);
  EXPECT_FALSE(m["bf16"][200].contains("loss_scale"));

  // Bytes per parameter (docs/precision.md): N parameters = the fp32 grad bytes / 4.
  const double n = m["fp32"][10]["mem_grad_bytes"].get<double>() / 4;
  EXPECT_EQ(m["fp32"][10]["mem_param_bytes"].get<double>(), 4 * n);
  EXPECT_EQ(m["fp32"][10]["mem_optim_bytes"].get<double>(), 8 * n);
  for (const std::string mode : {"bf16", "fp16", "bf16-grads16"}) {
    EXPECT_EQ(m[mode][10]["mem_param_bytes"].get<double>(), 2 * n) << mode;
    EXPECT_EQ(m[mode][10]["mem_grad_bytes"].get<double>(), (mode == "bf16-grads16" ? 2 : 4) * n) << mode;
    EXPECT_EQ(m[mode][10]["mem_optim_bytes"].get<double>(), 12 * n) << mode;
  }
}

// zero1 over 4 ranks shards the fp32 masters with the moments: rank 0 keeps
// 12 bytes for each element it owns, ceil(N/4) of them (one bucket here);
// gradients take 4 bytes per parameter, 2 when they are 16-bit.
TEST(Precision, Bf16Zero1ShardsMastersAndMoments) {
  Trainer run;
  fs::path out = temp_dir("zero1");
  run.train({"run.steps=2", "log.interval=1", "batch.micro=2", "checkpoint.interval=0", "precision.plugin=bf16",
             "parallel.data=4", "parallel.world=4", "parallel.data_parallel.plugin=zero1"},
            out);
  auto m = read_metrics(out / "metrics.jsonl");
  const double n = m[1]["mem_grad_bytes"].get<double>() / 4;
  EXPECT_EQ(m[1]["mem_param_bytes"].get<double>(), 2 * n);
  EXPECT_EQ(m[1]["mem_optim_bytes"].get<double>(), 12 * std::ceil(n / 4));
  fs::remove_all(out);

  // 16-bit gradients: 2 bytes per parameter of them, the rest unchanged.
  run.train({"run.steps=2", "log.interval=1", "batch.micro=2", "checkpoint.interval=0", "precision.plugin=bf16",
             "precision.accumulate_grads_in_fp32=false", "parallel.data=4", "parallel.world=4",
             "parallel.data_parallel.plugin=zero1"},
            out);
  m = read_metrics(out / "metrics.jsonl");
  EXPECT_EQ(m[1]["mem_grad_bytes"].get<double>(), 2 * n);
  EXPECT_EQ(m[1]["mem_param_bytes"].get<double>(), 2 * n);
  EXPECT_EQ(m[1]["mem_optim_bytes"].get<double>(), 12 * std::ceil(n / 4));
  fs::remove_all(out);
}

// A bf16 checkpoint holds fp32 master weights (not bf16-rounded values), a
// bf16 run resumes bit for bit (with fp32 and with 16-bit gradients), and the checkpoint resumes in fp32 (and an
// fp32 one in bf16) with a loss close to the uninterrupted run.
TEST(Precision, Bf16CheckpointsKeepMastersResumeExactlyAndCrossModes) {
  Trainer run;
  fs::path a = temp_dir("bf16-full"), b = temp_dir("bf16-resumed"), c = temp_dir("as-fp32"), d = temp_dir("fp32"),
           e = temp_dir("fp32-as-bf16");
  std::vector<std::string> common = {"run.steps=8", "log.interval=1", "checkpoint.interval=4", "batch.micro=4"};
  auto with = [&](std::vector<std::string> extra) {
    auto o = common;
    o.insert(o.end(), extra.begin(), extra.end());
    return o;
  };
  // Trains 8 steps into `full`, resumes its step-4 checkpoint into `resumed`:
  // steps 5-8 repeat bit for bit (loss, gradient norm, the step-8 checkpoint).
  auto expect_resumes_exactly = [&](const std::vector<std::string>& mode, const fs::path& full_dir,
                                    const fs::path& resumed_dir, const std::string& what) {
    run.train(with(mode), full_dir);
    run.train(with(mode), resumed_dir, true, (full_dir / "checkpoints/step_4").string());
    auto full = read_metrics(full_dir / "metrics.jsonl"), resumed = read_metrics(resumed_dir / "metrics.jsonl");
    ASSERT_EQ(resumed.size(), 4u) << what;
    for (int s = 5; s <= 8; ++s)
      for (const char* key : {"loss", "grad_norm"})
        EXPECT_EQ(full[s][key].get<double>(), resumed[s][key].get<double>()) << what << " step " << s << " " << key;
    EXPECT_TRUE(file_bytes(full_dir / "checkpoints/step_8/model.safetensors") ==
                file_bytes(resumed_dir / "checkpoints/step_8/model.safetensors"))
        << what;
  };
  expect_resumes_exactly({"precision.plugin=bf16"}, a, b, "bf16");
  auto full = read_metrics(a / "metrics.jsonl");
  // 16-bit gradients (2 microbatches a step accumulate in bf16) resume bit for bit as well.
  const fs::path g = temp_dir("bf16-grads16-full"), h = temp_dir("bf16-grads16-resumed");
  expect_resumes_exactly({"precision.plugin=bf16", "precision.accumulate_grads_in_fp32=false", "batch.micro=2",
                          "batch.global=4"},
                         g, h, "bf16, 16-bit gradients");
  fs::remove_all(g);
  fs::remove_all(h);

  // Masters: after 4 AdamW steps most weights are not bf16 values (low 16 bits set).
  weft::SafetensorsReader model((a / "checkpoints/step_4/model.safetensors").string());
  std::vector<float> w = model.read("blocks.0.mlp.fc.weight");
  size_t not_bf16 = 0;
  for (float x : w) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    not_bf16 += (u & 0xffffu) != 0;
  }
  EXPECT_GT(not_bf16, w.size() / 2);

  // Across modes: the next steps' losses within 2% of the run that stayed in its mode.
  run.train(with({"precision.plugin=fp32"}), c, true, (a / "checkpoints/step_4").string());
  auto as_fp32 = read_metrics(c / "metrics.jsonl");
  run.train(with({"precision.plugin=fp32"}), d);
  run.train(with({"precision.plugin=bf16"}), e, true, (d / "checkpoints/step_4").string());
  auto fp32 = read_metrics(d / "metrics.jsonl"), as_bf16 = read_metrics(e / "metrics.jsonl");
  for (int s = 5; s <= 8; ++s) {
    const double want = full[s]["loss"].get<double>(), got = as_fp32[s]["loss"].get<double>();
    EXPECT_LE(std::fabs(got - want), 0.02 * want) << "bf16 -> fp32, step " << s;
    const double want32 = fp32[s]["loss"].get<double>(), got16 = as_bf16[s]["loss"].get<double>();
    EXPECT_LE(std::fabs(got16 - want32), 0.02 * want32) << "fp32 -> bf16, step " << s;
  }
  for (const fs::path& p : {a, b, c, d, e}) fs::remove_all(p);
}

// A planted overflow: an initial loss scale of 2^40 makes the first steps'
// f16 gradients overflow. With hysteresis 1 each such step is skipped, the
// scale halves and the skip is counted, until the scale fits; training then
// goes on. A skipped step updates nothing: after them the checkpoint's AdamW
// moments are all zero and its weights are the initial ones (those of one
// fp32 step at a learning rate of 1e-30, far below half an ulp of any weight).
TEST(Precision, Fp16OverflowSkipsTheStepAndBacksOff) {
  Trainer run;
  fs::path out = temp_dir("overflow");
  const std::vector<std::string> fp16 = {"precision.plugin=fp16", "precision.initial_scale=1099511627776",
                                         "precision.hysteresis=1", "log.interval=1", "batch.micro=8"};
  auto o = fp16;
  o.push_back("run.steps=40");
  o.push_back("checkpoint.interval=0");
  run.train(o, out);
  auto m = read_metrics(out / "metrics.jsonl");
  ASSERT_EQ(m.size(), 40u);
  double scale = std::ldexp(1.0, 40), skipped = 0;
  int64_t first_trained = 0;
  for (const auto& [step, rec] : m) {
    // An overflowed step's gradient norm is inf or NaN (null in JSON).
    const bool skip = !rec["grad_norm"].is_number() || !std::isfinite(rec["grad_norm"].get<double>());
    if (skip) {
      scale /= 2, skipped += 1;
    } else if (first_trained == 0) {
      first_trained = step;
    }
    EXPECT_EQ(rec["loss_scale"].get<double>(), scale) << "step " << step;
    EXPECT_EQ(rec["skipped"].get<double>(), skipped) << "step " << step;
  }
  ASSERT_GT(skipped, 0);
  ASSERT_GT(first_trained, 1);
  EXPECT_LT(m[40]["loss"].get<double>(), m[first_trained]["loss"].get<double>() - 0.5);  // it trains on
  fs::remove_all(out);

  // Only the skipped steps: nothing moved.
  fs::path skipped_only = temp_dir("skipped-only"), lr0 = temp_dir("lr0");
  o = fp16;
  o.push_back("run.steps=" + std::to_string(first_trained - 1));
  run.train(o, skipped_only);
  run.train({"run.steps=1", "optimizer.lr=1e-30", "lr_schedule.plugin=constant", "batch.micro=8"}, lr0);
  const fs::path ck = skipped_only / "checkpoints" / ("step_" + std::to_string(first_trained - 1));
  weft::SafetensorsReader opt((ck / "optimizer.safetensors").string());
  weft::SafetensorsReader got((ck / "model.safetensors").string());
  weft::SafetensorsReader init((lr0 / "checkpoints/step_1/model.safetensors").string());
  for (const char* name : {"wte.weight", "blocks.1.attn.qkv.weight", "lnf.weight"}) {
    for (int slot = 0; slot < 2; ++slot)
      for (float v : opt.read(std::string(name) + ".slot" + std::to_string(slot))) ASSERT_EQ(v, 0.f) << name;
    EXPECT_TRUE(got.read(name) == init.read(name)) << name;
  }
  fs::remove_all(skipped_only);
  fs::remove_all(lr0);
}

// fp16 resumes bit for bit: the loss scale, its trackers and the skip count
// travel in meta.json (growth every 2 steps, and a skipped first step, so
// every part of the state matters).
TEST(Precision, Fp16ResumeRepeatsTheUninterruptedRun) {
  Trainer run;
  fs::path a = temp_dir("fp16-full"), b = temp_dir("fp16-resumed");
  const std::vector<std::string> o = {"precision.plugin=fp16", "precision.initial_scale=67108864",
                                      "precision.growth_interval=3", "precision.hysteresis=1", "run.steps=30",
                                      "log.interval=1", "checkpoint.interval=15", "batch.micro=8"};
  run.train(o, a);
  run.train(o, b, true, (a / "checkpoints/step_15").string());
  auto full = read_metrics(a / "metrics.jsonl"), resumed = read_metrics(b / "metrics.jsonl");
  ASSERT_EQ(resumed.size(), 15u);
  EXPECT_GT(full[30]["skipped"].get<double>(), 0);
  for (int s = 16; s <= 30; ++s)
    for (const char* key : {"loss", "grad_norm", "loss_scale", "skipped"})  // grad_norm null when skipped
      EXPECT_EQ(full[s][key].dump(), resumed[s][key].dump()) << "step " << s << " " << key;
  EXPECT_TRUE(file_bytes(a / "checkpoints/step_30/model.safetensors") ==
              file_bytes(b / "checkpoints/step_30/model.safetensors"));
  fs::remove_all(a);
  fs::remove_all(b);
}

// A backend that computes in fp32 only (a stand-in for one without 16-bit
// kernels): the precision is refused naming the plugin and the backend.
class Fp32OnlyBackend final : public StubBackend {
 public:
  std::string name() const override { return "fp32-only"; }
  bool supports_compute_dtype(weft::DType d) const override { return d == weft::DType::F32; }
};

TEST(Precision, RefusedWhenTheBackendCannotComputeInItsDtype) {
  Trainer run;
  Fp32OnlyBackend backend;
  for (const std::string mode : {"bf16", "fp16"}) {
    weft::Recipe recipe = weft::load_recipe_for_run(std::string(WEFT_SOURCE_ROOT) + "/examples/gpt-tiny.toml",
                                                    {"precision.plugin=" + mode}, run.registry, run.scan);
    try {
      weft::make_precision(recipe, run.registry, backend);
      ADD_FAILURE() << mode << " accepted";
    } catch (const weft::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("precision.plugin = \"" + mode + "\""), std::string::npos) << msg;
      EXPECT_NE(msg.find("fp32-only backend"), std::string::npos) << msg;
    }
  }
  weft::Recipe fp32 = weft::load_recipe_for_run(std::string(WEFT_SOURCE_ROOT) + "/examples/gpt-tiny.toml", {},
                                                run.registry, run.scan);
  EXPECT_EQ(weft::make_precision(fp32, run.registry, backend)->compute_dtype(), weft::DType::F32);
}

// The scaler's rules as written (Megatron's DynamicGradScaler).
TEST(LossScaler, BacksOffAfterHysteresisOverflowsAndGrowsAfterTheInterval) {
  weft::LossScalerConfig c;
  c.initial_scale = 1024, c.growth_factor = 2, c.growth_interval = 3, c.backoff_factor = 0.5, c.hysteresis = 2;
  c.min_scale = 256;
  weft::LossScaler s(c);
  EXPECT_TRUE(s.update(true));  // first overflow: skipped, hysteresis absorbs it
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_TRUE(s.update(true));  // second: backs off
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.update(true));  // hysteresis used up: every further overflow backs off
  EXPECT_EQ(s.scale(), 256);
  EXPECT_TRUE(s.update(true));  // but never below min_scale
  EXPECT_EQ(s.scale(), 256);
  EXPECT_EQ(s.skipped(), 4);
  EXPECT_FALSE(s.update(false));
  EXPECT_FALSE(s.update(false));
  EXPECT_EQ(s.scale(), 256);
  EXPECT_FALSE(s.update(false));  // third clean step in a row: grows, hysteresis restored
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 512);  // restored hysteresis absorbs one overflow again
  // The state round-trips, and a bad one is refused naming the key.
  weft::LossScaler t(c);
  t.load_state(s.state());
  EXPECT_EQ(t.state(), s.state());
  auto bad = s.state();
  bad.erase("growth_tracker");
  try {
    t.load_state(bad);
    ADD_FAILURE() << "no error";
  } catch (const weft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("growth_tracker"), std::string::npos) << e.what();
  }
}

}  // namespace
