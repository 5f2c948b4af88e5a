// Seeded mutation fuzzing of the readers of files other tools write
// (docs/reliability.md): the recipe parser (with includes), the safetensors
// reader, checkpoint meta.json, a Hugging Face tokenizer.json (tokenizer hf:
// byte-level BPE with a split regex, NFC and an added token; encode and decode
// run on every accepted mutant) and a Megatron indexed dataset's .idx and .bin
// (data megatron: 8 documents of uint16 tokens written as tests/data/mmidx.py
// writes them; every accepted mutant's samples are read). Each target starts from the committed
// seed corpus (tests/fuzz/corpus/) and runs a fixed number of mutants —
// bit flips, byte changes, inserted and deleted runs, truncations, splices of
// two seeds, and numbers replaced by extreme ones — so every CI run checks the
// same inputs. Every mutant must be accepted or refused with weft::Error;
// anything else (another exception, a crash, a hang under meson's timeout)
// is a finding. The count of refused and accepted mutants is printed.
//
// usage: fuzz_inputs [ITERATIONS per target]   (default 3000)
// WEFT_FUZZ_FINDINGS=DIR keeps each finding's input as DIR/TARGET-INDEX.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "checkpoint.hpp"
#include "runtime.hpp"
#include "safetensors.hpp"
#include "weft/dataset.hpp"
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
      if (const char* keep = std::getenv("WEFT_FUZZ_FINDINGS"))  // a folder to keep findings in, to reproduce
        write_file(fs::path(keep) / (name + "-" + std::to_string(i)), input);
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
  for (const std::string& f : t.findings) ADD_FAILURE() << f;
  EXPECT_GT(t.refused, 0);
}

TEST_F(Fuzz, SafetensorsReader) {
  Tally t = fuzz("safetensors", seeds({"tiny.safetensors"}), [&](const std::string& bytes) {
    write_file(dir_ / "m.safetensors", bytes);
    weft::SafetensorsReader r((dir_ / "m.safetensors").string());
    for (const std::string& name : r.names()) r.read(name);
  });
  for (const std::string& f : t.findings) ADD_FAILURE() << f;
  EXPECT_GT(t.refused, 0);
}

TEST_F(Fuzz, CheckpointMeta) {
  Tally t = fuzz("meta.json", seeds({"meta.json"}), [&](const std::string& bytes) {
    write_file(dir_ / "meta.json", bytes);
    weft::read_checkpoint_meta(dir_.string());
  });
  for (const std::string& f : t.findings) ADD_FAILURE() << f;
  EXPECT_GT(t.refused, 0);
}

// A recipe for the tokenizer and data targets: the tiny recipe with its
// [tokenizer] or [data] section replaced (files relative to the recipe).
weft::Recipe recipe_with(const fs::path& dir, const std::string& section, const std::string& body,
                         weft::Registry& registry) {
  std::string text = read_file(fs::path(FUZZ_CORPUS) / "recipe-tiny.toml");
  const size_t at = text.find("[" + section + "]"), end = text.find("\n[", at + 1);
  text.replace(at, end - at, "[" + section + "]\n" + body + "\n");
  write_file(dir / "r.toml", text);
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, weft::build_tree_plugin_dirs(WEFT_BUILD_ROOT), scan);
  return weft::load_recipe_for_run((dir / "r.toml").string(), {}, registry, scan);
}

TEST_F(Fuzz, HfTokenizerJson) {
  weft::Registry registry;
  write_file(dir_ / "t.json", read_file(fs::path(FUZZ_CORPUS) / "tokenizer.json"));
  const weft::Recipe recipe = recipe_with(dir_, "tokenizer", "plugin = \"hf\"\nfile = \"t.json\"", registry);
  const std::string text = "Hello there, the hell's 42 \xc3\xa9t\xc3\xa9\n\n  <|endoftext|>tail \xf0\x9f\x98\x80";
  Tally t = fuzz("tokenizer", seeds({"tokenizer.json"}), [&](const std::string& bytes) {
    write_file(dir_ / "t.json", bytes);
    std::unique_ptr<weft::Tokenizer> tok = weft::make_tokenizer(recipe, registry);
    const std::vector<int32_t> ids = tok->encode(text);
    for (int32_t id : ids)
      if (id < 0 || id >= tok->vocab_size()) throw std::logic_error("token id " + std::to_string(id) + " outside the vocabulary");
    tok->decode(ids);
  });
  for (const std::string& f : t.findings) ADD_FAILURE() << f;
  EXPECT_GT(t.refused, 0);
}

// Mutants of `file` ("idx" or "bin") beside the other, intact, file.
void fuzz_indexed(const fs::path& dir, const std::string& file) {
  weft::Registry registry;
  write_file(dir / "d.idx", read_file(fs::path(FUZZ_CORPUS) / "tiny.idx"));
  write_file(dir / "d.bin", read_file(fs::path(FUZZ_CORPUS) / "tiny.bin"));
  const weft::Recipe recipe =
      recipe_with(dir, "data", "plugin = \"megatron\"\npaths = [\"d\"]\nsplit = \"1,0,0\"", registry);
  std::unique_ptr<weft::Tokenizer> tok = weft::make_tokenizer(recipe, registry);
  weft::DatasetEnv env;
  env.tokenizer = tok.get();
  env.seq_length = 64;
  env.vocab_size = 256;
  Tally t = fuzz("megatron ." + file, seeds({"tiny." + file}), [&](const std::string& bytes) {
    write_file(dir / ("d." + file), bytes);
    std::unique_ptr<weft::Dataset> data = registry.factory<weft::Dataset>("megatron")(recipe.options("data"), env);
    std::vector<int32_t> tokens(env.seq_length + 1);
    const int64_t n = data->size();
    for (int64_t i : {int64_t(0), n / 2, n - 1, n}) {  // n: the next epoch's first sample
      data->sample(i, tokens.data());
      for (int32_t id : tokens)
        if (id < 0 || id >= env.vocab_size) throw std::logic_error("token " + std::to_string(id) + " outside the vocabulary");
    }
  });
  for (const std::string& f : t.findings) ADD_FAILURE() << f;
  EXPECT_GT(t.refused, 0);
}

TEST_F(Fuzz, MegatronIdx) { fuzz_indexed(dir_, "idx"); }
TEST_F(Fuzz, MegatronBin) { fuzz_indexed(dir_, "bin"); }

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) g_iterations = std::max(1, std::atoi(argv[1]));
  return RUN_ALL_TESTS();
}
