// End-to-end training through the library: the loss falls on the quick-start
// corpus, a resumed run repeats the uninterrupted run bit for bit, and
// checkpoints are complete and atomic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "batch_rampup.hpp"
#include "checkpoint.hpp"
#include "weft/loader.hpp"
#include "runtime.hpp"
#include "trainer.hpp"
#include "weft/metrics.hpp"

namespace fs = std::filesystem;

namespace {

struct Trainer {
  weft::Registry registry;
  weft::PluginScan scan;
  Trainer() { weft::load_plugin_dirs(registry, weft::build_tree_plugin_dirs(WEFT_BUILD_ROOT), scan); }
  void train(const std::vector<std::string>& overrides, bool resume = false, const std::string& from = "") {
    weft::Recipe recipe = weft::load_recipe_for_run(std::string(WEFT_SOURCE_ROOT) + "/examples/gpt-tiny.toml",
                                                    overrides, registry, scan);
    weft::TrainArgs args;
    args.resume = resume;
    args.resume_from = from;
    weft::train(recipe, registry, args);
  }
};

// step -> the record's JSON text with timing fields removed
std::map<int64_t, nlohmann::json> read_metrics(const fs::path& path) {
  std::map<int64_t, nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    out[j.at("step").get<int64_t>()] = j;
  }
  return out;
}

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("weft-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  return dir;
}

TEST(Training, LossFallsOnQuickStartCorpus) {
  fs::path out = temp_dir("falls");
  Trainer run;
  run.train({"run.steps=40", "log.interval=1", "run.out_dir=" + out.string()});
  auto m = read_metrics(out / "metrics.jsonl");
  ASSERT_EQ(m.size(), 40u);
  double first = m[1]["loss"].get<double>();
  double last5 = 0;
  for (int s = 36; s <= 40; ++s) last5 += m[s]["loss"].get<double>() / 5;
  // Uniform over 257 bytes is ln 257 = 5.55; a model that learned byte
  // frequencies and common words is well below 4.
  EXPECT_NEAR(first, std::log(257.0), 0.3);
  EXPECT_LT(last5, 3.8);
  EXPECT_LT(last5, first - 1.5);
  for (const char* key : {"lr", "grad_norm", "tokens_per_s", "step_ms", "mem_param_bytes", "mem_grad_bytes",
                          "mem_optim_bytes", "mem_act_bytes", "comm_bytes"})
    EXPECT_TRUE(m[1].contains(key)) << key;
  // AdamW keeps two fp32 moments per parameter.
  EXPECT_EQ(m[1]["mem_optim_bytes"].get<double>(), 2 * m[1]["mem_param_bytes"].get<double>());
  fs::remove_all(out);
}

TEST(Training, ResumeRepeatsTheUninterruptedRunBitForBit) {
  fs::path a = temp_dir("full"), b = temp_dir("resumed");
  std::vector<std::string> common = {"run.steps=8", "log.interval=1", "checkpoint.interval=4",
                                     "batch.global=16", "batch.micro=8"};  // 2 microbatches: accumulation too
  Trainer run;
  auto with = [&](const fs::path& dir) {
    auto o = common;
    o.push_back("run.out_dir=" + dir.string());
    return o;
  };
  run.train(with(a));
  run.train(with(b), true, (a / "checkpoints" / "step_4").string());
  auto full = read_metrics(a / "metrics.jsonl"), resumed = read_metrics(b / "metrics.jsonl");
  ASSERT_EQ(resumed.size(), 4u);
  for (int s = 5; s <= 8; ++s) {
    for (const char* key : {"loss", "grad_norm", "lr"})
      EXPECT_EQ(full[s][key].get<double>(), resumed[s][key].get<double>()) << "step " << s << " " << key;
  }
  // The final parameters agree bit for bit too.
  std::ifstream fa(a / "checkpoints/step_8/model.safetensors", std::ios::binary);
  std::ifstream fb(b / "checkpoints/step_8/model.safetensors", std::ios::binary);
  std::string da((std::istreambuf_iterator<char>(fa)), {}), db((std::istreambuf_iterator<char>(fb)), {});
  EXPECT_FALSE(da.empty());
  EXPECT_TRUE(da == db);

  // Resuming a finished run in place is not an error (a requeued job that already finished)
  // and changes nothing: no step is trained, no record written.
  auto before = read_metrics(a / "metrics.jsonl");
  EXPECT_NO_THROW(run.train(with(a), true));
  EXPECT_EQ(read_metrics(a / "metrics.jsonl"), before);
  fs::remove_all(a);
  fs::remove_all(b);
}

// Batch-size ramp-up: Megatron's increases, written out by hand.
TEST(BatchRampup, MegatronsIncreases) {
  const weft::BatchRampup r{4, 4, 48, 16};  // 4 -> 16 in 3 increases, one every 48 / 3 = 16 samples
  for (auto [consumed, g] : std::vector<std::pair<int64_t, int64_t>>{
           {0, 4}, {15, 4}, {16, 8}, {31, 8}, {32, 12}, {47, 12}, {48, 16}, {49, 16}, {1000, 16}})
    EXPECT_EQ(r.global_at(consumed), g) << consumed;
  EXPECT_EQ(r.sizes(), (std::vector<int64_t>{4, 8, 12, 16}));
  // 0 4 8 12 | 16 24 | 32 44 | 56 -> 72: 9 steps to consume 64 samples.
  EXPECT_EQ(r.steps_for(64), 9);
  EXPECT_EQ((weft::BatchRampup{0, 0, 0, 16}).steps_for(64), 4);
}

// A run with a ramp-up resumed from a checkpoint taken during the ramp-up
// repeats the uninterrupted run (the data position and batch follow the samples consumed).
TEST(Training, RampupResumeRepeatsTheUninterruptedRun) {
  fs::path a = temp_dir("ramp-full"), b = temp_dir("ramp-resumed");
  std::vector<std::string> common = {"run.steps=3", "log.interval=1", "checkpoint.interval=2", "batch.global=8",
                                     "batch.micro=2", "batch.rampup_start=2", "batch.rampup_increment=2",
                                     "batch.rampup_samples=12"};
  Trainer run;
  auto with = [&](const fs::path& dir) {
    auto o = common;
    o.push_back("run.out_dir=" + dir.string());
    return o;
  };
  run.train(with(a));
  auto full = read_metrics(a / "metrics.jsonl");
  // 24 samples: batches 2 2 (4 consumed) 4 (8) 6 (14) 8 (22) 8 (30): 6 steps.
  ASSERT_EQ(full.size(), 6u);
  std::vector<double> sizes;
  for (auto& [s, r] : full) sizes.push_back(r["global_batch"].get<double>());
  EXPECT_EQ(sizes, (std::vector<double>{2, 2, 4, 6, 8, 8}));
  run.train(with(b), true, (a / "checkpoints" / "step_2").string());
  auto resumed = read_metrics(b / "metrics.jsonl");
  ASSERT_EQ(resumed.size(), 4u);
  for (int s = 3; s <= 6; ++s)
    for (const char* key : {"loss", "grad_norm", "lr", "global_batch"})
      EXPECT_EQ(full[s][key].get<double>(), resumed[s][key].get<double>()) << "step " << s << " " << key;
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST(Training, CheckpointsAreCompleteAndLatestPointsAtTheNewest) {
  fs::path out = temp_dir("ckpt");
  Trainer run;
  run.train({"run.steps=6", "checkpoint.interval=2", "checkpoint.keep=2", "run.out_dir=" + out.string()});
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out / "checkpoints")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step_4", "step_6"}));
  std::ifstream latest(out / "checkpoints/latest");
  std::string line;
  std::getline(latest, line);
  EXPECT_EQ(line, "step_6");
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "meta.json", "recipe.toml"})
    EXPECT_TRUE(fs::exists(out / "checkpoints/step_6" / f)) << f;
  auto meta = nlohmann::json::parse(std::ifstream(out / "checkpoints/step_6/meta.json"));
  EXPECT_EQ(meta["step"].get<int>(), 6);
  EXPECT_EQ(meta["samples_consumed"].get<int>(), 6 * 8);
  EXPECT_EQ(weft::resolve_checkpoint_dir(out.string()), (out / "checkpoints" / "step_6").string());
  fs::remove_all(out);
}

TEST(Training, DataParallelThreadsMatchOneRank) {
  // Four ranks as threads (comm-local, ddp) give the single-rank losses.
  fs::path one = temp_dir("dp1"), four = temp_dir("dp4");
  Trainer run;
  run.train({"run.steps=4", "log.interval=1", "batch.global=8", "batch.micro=2", "run.out_dir=" + one.string()});
  run.train({"run.steps=4", "log.interval=1", "batch.global=8", "batch.micro=2", "parallel.data=4",
             "run.out_dir=" + four.string()});
  auto a = read_metrics(one / "metrics.jsonl"), b = read_metrics(four / "metrics.jsonl");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (int s = 1; s <= 4; ++s)
    EXPECT_NEAR(b[s]["loss"].get<double>(), a[s]["loss"].get<double>(), 1e-5 * a[s]["loss"].get<double>()) << s;
  fs::remove_all(one);
  fs::remove_all(four);
}

}  // namespace

TEST(MetricsRecord, GetFindsValuesByName) {
  weft::MetricsRecord r;
  r.values = {{"loss", 2.5}, {"lr", 1e-3}};
  EXPECT_EQ(r.get("loss"), 2.5);
  EXPECT_EQ(r.get("lr"), 1e-3);
  EXPECT_TRUE(std::isnan(r.get("missing")));
}
