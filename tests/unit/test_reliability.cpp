// Hostile inputs and data loss (docs/reliability.md): only exact step_N
// folders count as checkpoints, corrupt safetensors and meta.json are
// refused naming the key (safetensors: tests/unit/test_safetensors.cpp), FIFOs and devices are refused without
// blocking, a run's folder is never mixed with another run's, and an
// abandoned branch is moved aside, not deleted.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "checkpoint.hpp"
#include "run_dir.hpp"
#include "safetensors.hpp"
#include "weft/error.hpp"
#include "weft/file.hpp"
#include "weft/plugin.hpp"
#include "weft/tokenizer.hpp"

namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("weft-rel-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const weft::Error& e) {
    return e.what();
  }
  return "";
}

// A checkpoint folder with a meta.json at `step` (enough for resolve and meta reads).
void fake_checkpoint(const fs::path& root, int64_t step) {
  write_text(root / ("step_" + std::to_string(step)) / "meta.json",
             nlohmann::json{{"step", step}, {"samples_consumed", step * 8}, {"seed", 1}}.dump());
}

}  // namespace

// ---- what plugins hand the core ------------------------------------------------------------------

TEST(Registry, NullObjectsFromPluginsAreErrorsNamingThePlugin) {
  weft::Registry registry;
  registry.add<weft::Tokenizer>("nothing", {}, "", [](const weft::Options&) { return nullptr; });
  weft::Options options("tokenizer", {}, {});
  std::string err = error_of([&] { registry.factory<weft::Tokenizer>("nothing")(options); });
  EXPECT_NE(err.find("tokenizer/nothing"), std::string::npos) << err;
  EXPECT_NE(err.find("returned no object"), std::string::npos) << err;

  weft::FactoryRecord empty;
  empty.family = "tokenizer";
  empty.name = "empty";
  EXPECT_NE(error_of([&] { registry.add_record(empty); }).find("tokenizer/empty"), std::string::npos);
}

// ---- files that are not regular ----------------------------------------------------------------

TEST(InputFile, RefusesFifosDevicesAndDirectoriesWithoutBlocking) {
  fs::path dir = fresh_dir("fifo");
  fs::path fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { weft::read_input_file(fifo.string(), 100); }).find("FIFO"), std::string::npos);
  EXPECT_NE(error_of([&] { weft::read_input_file("/dev/zero", 100); }).find("character device"), std::string::npos);
  fs::create_directory_symlink("/dev", dir / "devlink");
  EXPECT_NE(error_of([&] { weft::read_input_file((dir / "devlink/zero").string(), 100); }).find("device"),
            std::string::npos);
  EXPECT_NE(error_of([&] { weft::read_input_file(dir.string(), 100); }).find("directory"), std::string::npos);
  write_text(dir / "big", std::string(101, 'x'));
  EXPECT_NE(error_of([&] { weft::read_input_file((dir / "big").string(), 100); }).find("more than"), std::string::npos);
  EXPECT_EQ(weft::read_input_file((dir / "big").string(), 101), std::string(101, 'x'));
  fs::remove_all(dir);
}

// ---- checkpoint.keep counts exact step_N folders only ------------------------------------------

TEST(StepNames, OnlyExactStepFolderNamesParse) {
  EXPECT_EQ(weft::parse_step_name("step_4"), 4);
  EXPECT_EQ(weft::parse_step_name("step_0"), 0);
  for (const char* bad : {"step_4_old", "step_abc", "step_", "step_04", "step_+4", "step_-4", "step_4.tmp.12",
                          "step_99999999999999999999", "Step_4", "xstep_4"})
    EXPECT_FALSE(weft::parse_step_name(bad)) << bad;
}

TEST(Keep, LeavesForeignFoldersAloneAndKeepsTheNewest) {
  fs::path out = fresh_dir("keep");
  fs::path root = out / "checkpoints";
  for (int s : {2, 4, 6}) fake_checkpoint(root, s);
  write_text(root / "step_4_old" / "notes.txt", "mine");
  write_text(root / "step_abc" / "notes.txt", "mine too");
  write_text(root / "step_1000.tmp.1" / "x", "partial");
  weft::publish_latest(out.string(), 6, 2);
  EXPECT_FALSE(fs::exists(root / "step_2"));
  EXPECT_TRUE(fs::exists(root / "step_4/meta.json"));  // before: step_4_old counted and step_4 went
  EXPECT_TRUE(fs::exists(root / "step_6/meta.json"));
  EXPECT_EQ(read_text(root / "step_4_old/notes.txt"), "mine");
  EXPECT_EQ(read_text(root / "step_abc/notes.txt"), "mine too");
  EXPECT_TRUE(fs::exists(root / "step_1000.tmp.1"));
  EXPECT_EQ(read_text(root / "latest"), "step_6\n");
  fs::remove_all(out);
}

TEST(Latest, MustNameAStepFolder) {
  fs::path out = fresh_dir("latest");
  fake_checkpoint(out / "checkpoints", 3);
  write_text(out / "checkpoints/latest", "../../etc\n");
  EXPECT_NE(error_of([&] { weft::resolve_checkpoint_dir(out.string()); }).find("which is not a checkpoint"),
            std::string::npos);
  fs::remove_all(out);
}

// ---- meta.json ---------------------------------------------------------------------------------

TEST(MetaJson, RefusesNegativeHugeAndMistypedPositions) {
  fs::path dir = fresh_dir("meta");
  struct Case {
    nlohmann::json meta;
    const char* key;
  };
  const std::vector<Case> cases = {
      {{{"step", -1}, {"samples_consumed", 0}, {"seed", 1}}, "'step'"},
      {{{"step", 9223372036854775807LL}, {"samples_consumed", 0}, {"seed", 1}}, "'step'"},
      {{{"step", 1}, {"samples_consumed", -8}, {"seed", 1}}, "'samples_consumed'"},
      {{{"step", 1}, {"samples_consumed", 18446744073709551615ULL}, {"seed", 1}}, "'samples_consumed'"},
      {{{"step", 1.5}, {"samples_consumed", 8}, {"seed", 1}}, "'step'"},
      {{{"step", "3"}, {"samples_consumed", 8}, {"seed", 1}}, "'step'"},
      {{{"samples_consumed", 8}, {"seed", 1}}, "'step'"},
      {{{"step", 1}, {"samples_consumed", 8}, {"seed", -1}}, "'seed'"},
  };
  for (const Case& c : cases) {
    write_text(dir / "meta.json", c.meta.dump());
    std::string err = error_of([&] { weft::read_checkpoint_meta(dir.string()); });
    EXPECT_NE(err.find((dir / "meta.json").string() + ": key " + c.key), std::string::npos) << c.meta << ": " << err;
  }
  fs::remove(dir / "meta.json");
  fs::create_directories(dir / "meta.json");
  EXPECT_NE(error_of([&] { weft::read_checkpoint_meta(dir.string()); }).find("is a directory"), std::string::npos);
  fs::remove_all(dir);
}

// ---- a run's folder ------------------------------------------------------------------------------

TEST(RunDir, FreshRunRefusesAFolderHoldingAnotherRun) {
  fs::path out = fresh_dir("used");
  EXPECT_EQ(error_of([&] { weft::refuse_used_out_dir(out.string()); }), "");  // empty: fine
  write_text(out / "recipe.toml", "x");
  write_text(out / "metrics.jsonl", "");
  EXPECT_EQ(error_of([&] { weft::refuse_used_out_dir(out.string()); }), "");  // a run that never logged
  write_text(out / "metrics.jsonl", "{\"step\": 1, \"loss\": 2}\n");
  EXPECT_NE(error_of([&] { weft::refuse_used_out_dir(out.string()); }).find("metrics.jsonl"), std::string::npos);
  fs::remove(out / "metrics.jsonl");
  fake_checkpoint(out / "checkpoints", 5);
  std::string err = error_of([&] { weft::refuse_used_out_dir(out.string()); });
  EXPECT_NE(err.find(out.string()), std::string::npos) << err;
  EXPECT_NE(err.find("--resume"), std::string::npos) << err;
  EXPECT_NE(err.find("--overwrite"), std::string::npos) << err;
  write_text(out / "file", "x");
  EXPECT_NE(error_of([&] { weft::refuse_used_out_dir((out / "file").string()); }).find("not a folder"),
            std::string::npos);
  EXPECT_NE(error_of([&] { weft::prepare_out_dir((out / "file/sub").string(), false); }).find("file/sub"),
            std::string::npos);
  fs::remove_all(out);
}

TEST(RunDir, ResumeStartsFromScratchOnlyWhenNoCheckpointAndNotRequired) {
  fs::path out = fresh_dir("resume");
  using weft::ResumeMode;
  EXPECT_EQ(weft::find_resume_checkpoint((out / "new").string(), "", ResumeMode::IfAny), "");
  EXPECT_NE(error_of([&] { weft::find_resume_checkpoint((out / "new").string(), "", ResumeMode::Require); })
                .find("checkpoint not found"),
            std::string::npos);
  // A step folder renamed into place before `latest` moved is still found.
  fake_checkpoint(out / "checkpoints", 4);
  EXPECT_EQ(weft::find_resume_checkpoint(out.string(), "", ResumeMode::IfAny), (out / "checkpoints/step_4").string());
  // An explicit folder elsewhere must hold a checkpoint.
  EXPECT_NE(error_of([&] { weft::find_resume_checkpoint(out.string(), (out / "nope").string(), ResumeMode::IfAny); }),
            "");
  fs::remove_all(out);
}

TEST(RunDir, ResumingFromAnOlderCheckpointMovesTheLaterBranchAside) {
  fs::path out = fresh_dir("branch");
  fs::path root = out / "checkpoints";
  for (int s : {600, 650, 700}) fake_checkpoint(root, s);
  write_text(root / "latest", "step_700\n");
  std::string metrics;
  for (int s = 598; s <= 700; ++s) metrics += "{\"step\": " + std::to_string(s) + ", \"loss\": 1.5}\n";
  write_text(out / "metrics.jsonl", metrics);

  std::string line = weft::start_branch(out.string(), 600);
  EXPECT_EQ(weft::list_step_dirs(root.string()), std::vector<int64_t>{600});
  EXPECT_TRUE(fs::exists(root / "abandoned_after_step_600/step_650/meta.json"));
  EXPECT_TRUE(fs::exists(root / "abandoned_after_step_600/step_700/meta.json"));
  EXPECT_EQ(read_text(root / "latest"), "step_600\n");
  EXPECT_EQ(read_text(out / "metrics.jsonl"), "{\"step\": 598, \"loss\": 1.5}\n{\"step\": 599, \"loss\": 1.5}\n"
                                              "{\"step\": 600, \"loss\": 1.5}\n");
  std::string moved = read_text(root / "abandoned_after_step_600/metrics.jsonl");
  EXPECT_EQ(std::count(moved.begin(), moved.end(), '\n'), 100);
  EXPECT_NE(line.find("step_650, step_700"), std::string::npos) << line;
  EXPECT_NE(line.find("after step 600"), std::string::npos) << line;

  // A second branch from the same step does not overwrite the first one's folder.
  fake_checkpoint(root, 610);
  weft::start_branch(out.string(), 600);
  EXPECT_TRUE(fs::exists(root / "abandoned_after_step_600_2/step_610"));
  EXPECT_TRUE(fs::exists(root / "abandoned_after_step_600/step_700"));
  // keep counts the current branch only.
  fake_checkpoint(root, 620);
  weft::publish_latest(out.string(), 620, 2);
  EXPECT_EQ(weft::list_step_dirs(root.string()), (std::vector<int64_t>{600, 620}));
  fs::remove_all(out);
}

TEST(RunDir, MalformedMetricsLineIsRefusedWithItsLineNumber) {
  fs::path out = fresh_dir("metrics");
  write_text(out / "metrics.jsonl", "{\"step\": 1, \"loss\": 2}\ngarbage\n");
  std::string err = error_of([&] { weft::start_branch(out.string(), 0); });
  EXPECT_NE(err.find((out / "metrics.jsonl").string() + ":2:"), std::string::npos) << err;
  EXPECT_EQ(read_text(out / "metrics.jsonl"), "{\"step\": 1, \"loss\": 2}\ngarbage\n");  // untouched
  fs::remove_all(out);
}
