// Seeded mutation fuzzing of the readers of files other tools write
// (docs/reliability.md): the recipe parser (with includes), the safetensors
// reader and checkpoint meta.json. Each target starts from the committed
// seed corpus (tests/fuzz/corpus/) and runs a fixed number of mutants —
// bit flips, byte changes, inserted and deleted runs, truncations, splices of
// two seeds, and numbers replaced by extreme ones — so every CI run checks the
// same inputs. Every mutant must be accepted or refused with weft::Error;
// anything else (another exception, a crash, a hang under meson's timeout)
// is a finding. The count of refused and accepted mutants is printed.
//
// usage: fuzz_inputs [ITERATIONS per target]   (default 3000)
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "runtime.hpp"
#include "safetensors.hpp"
#include "weft/error.hpp"
#include "weft/loader.hpp"
#include "weft/recipe.hpp"

namespace fs = std::filesystem;

namespace {

int g_iterations = 3000;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// One mutant of `seed` (another seed may be spliced in).
std::string mutate(const std::string& seed, const std::string& other, std::mt19937_64& rng) {
  std::string s = seed;
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : static_cast<size_t>(rng() % n); };
  const char* extremes[] = {"0", "-1", "18446744073709551615", "9223372036854775807", "1e308", "nan", "-0",
                            "4294967296", "[]", "{}", "\"\"", "true"};
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1 << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng() % 256);
        break;
      case 2:  // delete a run
        if (!s.empty()) {
          size_t at = pick(s.size());
          s.erase(at, 1 + pick(std::min<size_t>(64, s.size() - at)));
        }
        break;
      case 3:  // insert a run of one byte
        s.insert(pick(s.size() + 1), 1 + pick(32), static_cast<char>(rng() % 256));
        break;
      case 4:  // truncate
        s.resize(pick(s.size() + 1));
        break;
      case 5: {  // splice: this seed's head, the other's tail
        size_t a = pick(s.size() + 1), b = pick(other.size() + 1);
        s = s.substr(0, a) + other.substr(b);
        break;
      }
      default: {  // a number becomes an extreme one
        size_t at = s.find_first_of("0123456789", pick(s.size() + 1));
        if (at == std::string::npos) break;
        size_t end = s.find_first_not_of("0123456789.e-", at);
        s.replace(at, (end == std::string::npos ? s.size() : end) - at, extremes[pick(std::size(extremes))]);
      }
    }
  }
  return s;
}

struct Tally {
  int refused = 0, accepted = 0;
  std::vector<std::string> findings;
};

// Runs `target` on every mutant of the seeds; returns what happened.
Tally fuzz(const std::string& name, const std::vector<std::string>& seeds,
           const std::function<void(const std::string& bytes)>& target) {
  std::mt19937_64 rng(0x5eed0000u + std::hash<std::string>{}(name) % 1000);
  Tally t;
  for (int i = 0; i < g_iterations; ++i) {
    const std::string& a = seeds[i % seeds.size()];
    const std::string& b = seeds[(i / seeds.size() + 1) % seeds.size()];
    const std::string input = i < static_cast<int>(seeds.size()) ? a : mutate(a, b, rng);
    try {
      target(input);
      ++t.accepted;
    } catch (const weft::Error&) {
      ++t.refused;
    } catch (const std::exception& e) {
      t.findings.push_back("mutant " + std::to_string(i) + ": " + typeid(e).name() + ": " + e.what());
    }
  }
  std::printf("%-12s %d mutants: %d refused with weft::Error, %d accepted, %zu findings\n", name.c_str(),
              g_iterations, t.refused, t.accepted, t.findings.size());
  return t;
}

std::vector<std::string> seeds(const std::vector<std::string>& files) {
  std::vector<std::string> out;
  for (const std::string& f : files) out.push_back(read_file(fs::path(FUZZ_CORPUS) / f));
  return out;
}

class Fuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("weft-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(Fuzz, RecipeParser) {
  weft::Registry registry;
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, weft::build_tree_plugin_dirs(WEFT_BUILD_ROOT), scan);
  // The include of recipe-3d stays a valid file, so mutants of both files are reached.
  write_file(dir_ / "recipe-tiny.toml", read_file(fs::path(FUZZ_CORPUS) / "recipe-tiny.toml"));
  Tally t = fuzz("recipe", seeds({"recipe-tiny.toml", "recipe-3d.toml"}), [&](const std::string& bytes) {
    write_file(dir_ / "r.toml", bytes);
    weft::PluginScan s;
    weft::load_recipe_for_run((dir_ / "r.toml").string(), {}, registry, s);
  });
  EXPECT_TRUE(t.findings.empty()) << t.findings.front();
  EXPECT_GT(t.refused, 0);
}

TEST_F(Fuzz, SafetensorsReader) {
  Tally t = fuzz("safetensors", seeds({"tiny.safetensors"}), [&](const std::string& bytes) {
    write_file(dir_ / "m.safetensors", bytes);
    weft::SafetensorsReader r((dir_ / "m.safetensors").string());
    for (const std::string& name : r.names()) r.read(name);
  });
  EXPECT_TRUE(t.findings.empty()) << t.findings.front();
  EXPECT_GT(t.refused, 0);
}

TEST_F(Fuzz, CheckpointMeta) {
  Tally t = fuzz("meta.json", seeds({"meta.json"}), [&](const std::string& bytes) {
    write_file(dir_ / "meta.json", bytes);
    weft::read_checkpoint_meta(dir_.string());
  });
  EXPECT_TRUE(t.findings.empty()) << t.findings.front();
  EXPECT_GT(t.refused, 0);
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) g_iterations = std::max(1, std::atoi(argv[1]));
  return RUN_ALL_TESTS();
}
