// Failure behaviour with comm-local (ranks as threads): a rank that throws, or
// stops calling collectives, makes every other rank stop with a weft::Error
// naming the collective and the missing rank, within the timeout; never a hang
// (meson runs this under a timeout as well).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unistd.h>

#include "weft/loader.hpp"
#include "local_comm.hpp"
#include "runtime.hpp"
#include "trainer.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

weft::Tensor host_floats(std::vector<float>& v) {
  auto storage = std::make_shared<weft::Storage>();
  storage->data = v.data();
  storage->bytes = v.size() * sizeof(float);
  return weft::Tensor(storage, 0, {static_cast<int64_t>(v.size())}, weft::DType::F32);
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Runs 4 ranks: one all_reduce every rank joins, then `misbehave` on rank 2,
// then a second all_reduce. Returns each rank's error text ("" = none).
std::vector<std::string> run_four(double timeout_s, const std::function<void()>& misbehave, double* elapsed) {
  weft::LocalLauncher launcher(timeout_s);
  std::vector<std::string> errors(4);
  std::mutex mu;
  auto t0 = Clock::now();
  try {
    launcher.run(4, [&](weft::Communicator& comm, const weft::LaunchInfo&) {
      try {
        std::vector<float> v = {1.0f};
        comm.all_reduce(host_floats(v), weft::ReduceOp::Sum)->wait();
        EXPECT_EQ(v[0], 4.0f);
        if (comm.rank() == 2) {
          misbehave();
          return;
        }
        comm.all_reduce(host_floats(v), weft::ReduceOp::Sum)->wait();
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors[comm.rank()] = e.what();
        throw;
      }
    });
  } catch (const weft::Error&) {
  }
  *elapsed = seconds_since(t0);
  return errors;
}

TEST(LocalFailure, ARankThatThrowsStopsTheOthersNamingTheCollectiveAndTheRank) {
  double elapsed = 0;
  // Rank 2 fails while the others wait in the second all_reduce.
  auto errors = run_four(5.0, [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    throw weft::Error("injected failure on rank 2");
  }, &elapsed);
  EXPECT_EQ(errors[2], "injected failure on rank 2");
  for (int r : {0, 1, 3}) {
    EXPECT_TRUE(contains(errors[r], "all_reduce")) << "rank " << r << ": " << errors[r];
    EXPECT_TRUE(contains(errors[r], "missing ranks [2]")) << "rank " << r << ": " << errors[r];
    EXPECT_TRUE(contains(errors[r], "injected failure on rank 2")) << "rank " << r << ": " << errors[r];
  }
  EXPECT_LT(elapsed, 5.0) << "the others must stop at once, not at the timeout";
}

TEST(LocalFailure, ARankThatStopsCallingMakesTheOthersTimeOutNamingIt) {
  double elapsed = 0;
  auto errors = run_four(2.0, [] {}, &elapsed);  // rank 2 returns early
  EXPECT_EQ(errors[2], "");
  for (int r : {0, 1, 3}) {
    EXPECT_TRUE(contains(errors[r], "all_reduce")) << "rank " << r << ": " << errors[r];
    EXPECT_TRUE(contains(errors[r], "missing ranks [2]")) << "rank " << r << ": " << errors[r];
  }
  EXPECT_GE(elapsed, 1.9);
  EXPECT_LT(elapsed, 10.0);
}

// The same through the trainer: the fail-at fixture sink acts on rank 2 at step 2.
struct Trainer {
  weft::Registry registry;
  weft::PluginScan scan;
  Trainer() {
    std::vector<std::string> dirs = {MULTIRANK_FIXTURE_DIR};
    for (const char* root : {"plugins", "parallel", "models", "optim"}) {
      fs::path base = fs::path(WEFT_BUILD_ROOT) / root;
      if (!fs::is_directory(base)) continue;
      for (const auto& entry : fs::directory_iterator(base))
        if (entry.is_directory()) dirs.push_back(entry.path().string());
    }
    weft::load_plugin_dirs(registry, dirs, scan);
  }
  // Returns the error weft::train ended with ("" = none).
  // `layout` overrides the 4 data-parallel ranks (e.g. 2 stages x 2).
  std::string train(const std::string& dp_plugin, const std::string& action, double timeout_s, double* elapsed,
                    const std::vector<std::string>& layout = {"parallel.data=4"}) {
    fs::path out = fs::temp_directory_path() / ("weft-multirank-fail-" + action + "-" + std::to_string(::getpid()));
    std::vector<std::string> sets = {"run.steps=4", "log.interval=1", "batch.global=8",
                                     "parallel.data_parallel.plugin=" + dp_plugin, "comm.plugin=local",
                                     "comm.timeout_s=" + std::to_string(timeout_s), "log.sinks=jsonl,fail-at",
                                     "log.fail-at.rank=2", "log.fail-at.step=2", "log.fail-at.action=" + action,
                                     "log.fail-at.seconds=6", "run.out_dir=" + out.string()};
    sets.insert(sets.end(), layout.begin(), layout.end());
    weft::Recipe recipe = weft::load_recipe_for_run(std::string(WEFT_SOURCE_ROOT) + "/examples/gpt-tiny.toml", sets,
                                                    registry, scan);
    auto t0 = Clock::now();
    std::string error;
    try {
      weft::train(recipe, registry, weft::TrainArgs{});
    } catch (const weft::Error& e) {
      error = e.what();
    }
    *elapsed = seconds_since(t0);
    fs::remove_all(out);
    return error;
  }
};

TEST(LocalFailure, TrainingStopsWhenARankThrows) {
  Trainer t;
  double elapsed = 0;
  std::string error = t.train("zero1", "throw", 30.0, &elapsed);
  EXPECT_EQ(error, "fail-at: injected failure on rank 2 at step 2");
  EXPECT_LT(elapsed, 30.0) << "the other ranks must stop before their timeout";
}

TEST(LocalFailure, TrainingStopsWhenARankStalls) {
  // Rank 2 sleeps 6 s at step 2; the others wait 1.5 s in step 3's gradient
  // all-reduce, then fail naming it. (The run ends when rank 2 wakes: threads
  // cannot be killed.)
  Trainer t;
  double elapsed = 0;
  std::string error = t.train("ddp", "stall", 1.5, &elapsed);
  EXPECT_TRUE(contains(error, "all_reduce")) << error;
  EXPECT_TRUE(contains(error, "missing ranks [2]")) << error;
  EXPECT_LT(elapsed, 30.0);
}

TEST(LocalFailure, PipelineStopsWhenAStageStalls) {
  // 2 stages x 2 data ranks: rank 2 is stage 1 of the first pipeline. Its
  // stage-0 peer waits for the gradient it would send back (a recv), its data
  // peer in the gradient all-reduce; both give up after 1.5 s naming rank 2.
  Trainer t;
  double elapsed = 0;
  std::string error = t.train("ddp", "stall", 1.5, &elapsed, {"parallel.pipeline=2", "parallel.data=2"});
  EXPECT_TRUE(contains(error, "recv") || contains(error, "all_reduce")) << error;
  EXPECT_TRUE(contains(error, "missing ranks [2]")) << error;
  EXPECT_LT(elapsed, 30.0);
}

}  // namespace
