// Recipe loading (core/src/recipe.cpp): includes, --set overrides typed by the
// schema, validation messages with the exact file:line:col, cross-section
// checks, and the resolved recipe reading back to itself.
//
// The registry holds the real built-in plugins of this build tree plus the
// fixture plugin (tokenizer "fixture-tok", metrics_sink "fixture-sink"); any
// built-in a test relies on that is not built yet is stood in for by a fake
// with the real plugin's schema.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "weft/loader.hpp"
#include "weft/backend.hpp"
#include "weft/comm.hpp"
#include "weft/dataset.hpp"
#include "weft/error.hpp"
#include "weft/expert.hpp"
#include "weft/grad_sync.hpp"
#include "weft/layers.hpp"
#include "weft/metrics.hpp"
#include "weft/model.hpp"
#include "weft/optimizer.hpp"
#include "weft/precision.hpp"
#include "weft/recipe.hpp"
#include "weft/schedule.hpp"
#include "weft/tokenizer.hpp"

namespace fs = std::filesystem;
using weft::OptionSchema;

namespace {

template <class I>
void fake(weft::Registry& r, const std::string& name, OptionSchema schema) {
  if (r.find(weft::FamilyTraits<I>::kName, name)) return;
  r.add<I>(name, std::move(schema), "test stand-in", [](const auto&...) -> std::unique_ptr<I> { return nullptr; });
}

// Real plugins of the build tree (one folder per plugin under these roots),
// the fixture plugin, and stand-ins for whatever is not built.
weft::Registry& registry() {
  static weft::Registry* reg = [] {
    auto* r = new weft::Registry;
    std::vector<std::string> dirs = weft::build_tree_plugin_dirs(WEFT_BUILD_ROOT);
    dirs.push_back(std::string(WEFT_BUILD_ROOT) + "/tests/fixtures/good");
    weft::PluginScan scan;
    weft::load_plugin_dirs(*r, dirs, scan);
    using weft::opt_bool, weft::opt_float, weft::opt_int, weft::opt_string, weft::opt_paths;
    fake<weft::Model>(*r, "gpt",
                      {opt_int("layers", 2, "", 1), opt_int("hidden", 128, "", 1), opt_int("heads", 4, "", 1),
                       opt_int("seq_length", 64, "", 1), opt_int("vocab_pad_multiple", 64, "", 1),
                       opt_float("init_std", 0.02, "", 0.0)});
    fake<weft::Tokenizer>(*r, "byte", {});
    fake<weft::Dataset>(*r, "synthetic", {opt_int("vocab", 0, "", 0), opt_int("size", int64_t{1} << 20, "", 1)});
    fake<weft::Dataset>(*r, "megatron",
                        {weft::weighted_table(weft::required(weft::opt_strings("paths", {}, "prefixes or a blend"))),
                         opt_string("split", "969,30,1", ""), opt_string("part", "train", "", {"train", "valid", "test"})});
    fake<weft::Dataset>(*r, "text",
                        {weft::required(opt_paths("files", {}, "text files to train on (relative to the recipe file)")),
                         opt_string("documents", "file", "", {"file", "blank-line", "percent-line"}),
                         opt_int("max_bytes", 0, "", 0)});
    fake<weft::Optimizer>(*r, "adamw",
                          {opt_float("lr", 6e-4, "", 0.0), opt_float("beta1", 0.9, "", 0.0, 1.0),
                           opt_float("beta2", 0.95, "", 0.0, 1.0), opt_float("eps", 1e-8, "", 0.0),
                           opt_float("weight_decay", 0.1, "", 0.0), opt_float("clip_grad_norm", 1.0, "", 0.0)});
    fake<weft::Optimizer>(*r, "sgd",
                          {opt_float("lr", 1e-3, "", 0.0), opt_float("momentum", 0.9, "", 0.0, 1.0),
                           opt_float("weight_decay", 0.0, "", 0.0), opt_bool("nesterov", false, ""),
                           opt_float("clip_grad_norm", 0.0, "", 0.0)});
    OptionSchema lr = {opt_int("warmup_steps", 0, "", 0), opt_float("min_lr", 0.0, "", 0.0),
                       opt_int("decay_steps", 0, "", 0)};
    for (const char* n : {"constant", "linear", "cosine"}) fake<weft::LrSchedule>(*r, n, lr);
    fake<weft::Precision>(*r, "fp32", {});
    fake<weft::Backend>(*r, "cpu", {opt_int("threads", 0, "", 0, 1024)});
    fake<weft::CommLauncher>(*r, "local", {opt_float("timeout_s", 300.0, "", 0.0)});
    fake<weft::CommLauncher>(*r, "mpi", {opt_float("timeout_s", 300.0, "", 0.0)});
    fake<weft::LayerProvider>(*r, "megatron", {opt_bool("sequence_parallel", false, "")});
    fake<weft::PipelineSchedule>(*r, "gpipe", {});
    fake<weft::PipelineSchedule>(*r, "1f1b", {});
    fake<weft::DataParallel>(*r, "ddp", {opt_float("bucket_mb", 25.0, "", 0.0)});
    fake<weft::MetricsSink>(*r, "console", {});
    fake<weft::MetricsSink>(*r, "jsonl", {});
    return r;
  }();
  return *reg;
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "weft-recipe-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  // Writes `text` to path/rel (creating folders) and returns the full path.
  std::string write(const std::string& rel, const std::string& text) const {
    fs::path p = fs::path(path) / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
};

const std::string kModel =
    "[model]\n"
    "plugin = \"gpt\"\n"
    "layers = 1\n"
    "hidden = 32\n"
    "heads = 2\n"
    "seq_length = 16\n";
const std::string kData = "[data]\nplugin = \"synthetic\"\n";
const std::string kMinimal = kModel + "\n" + kData + "\n[run]\nsteps = 2\n";  // 12 lines

weft::Recipe load(const std::string& path, const std::vector<std::string>& overrides = {}, weft::RecipeEnv env = {}) {
  return weft::load_recipe(path, overrides, registry(), {}, env);
}

// The message of the weft::Error load_recipe throws; checks it is one line.
std::string error_of(const std::string& path, const std::vector<std::string>& overrides = {},
                     weft::RecipeEnv env = {}) {
  try {
    load(path, overrides, env);
  } catch (const weft::Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    EXPECT_EQ(msg.find('\r'), std::string::npos) << "not one line: " << msg;
    return msg;
  }
  ADD_FAILURE() << "expected a weft::Error for " << path;
  return "";
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

// ---- a valid recipe -------------------------------------------------------------------------

TEST(Recipe, MinimalRecipeResolves) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  weft::Recipe r = load(p);
  EXPECT_EQ(r.path, p);
  EXPECT_EQ(r.world, 1);
  EXPECT_EQ(r.sizes.tp, 1);
  EXPECT_EQ(r.sizes.pp, 1);
  EXPECT_EQ(r.sizes.dp, 1);
  EXPECT_EQ(r.sizes.ep, 1);
  EXPECT_EQ(r.grad_accum, 1);
  EXPECT_EQ(r.plugin("model"), "gpt");
  EXPECT_EQ(r.plugin("data"), "synthetic");
  EXPECT_EQ(r.plugin("tokenizer"), "byte");
  EXPECT_EQ(r.plugin("optimizer"), "adamw");
  EXPECT_EQ(r.plugin("comm"), "local");  // "auto" without a launcher
  EXPECT_EQ(r.plugin("parallel.data_parallel"), "ddp");
  EXPECT_EQ(r.options("model").get_int("layers"), 1);
  EXPECT_EQ(r.options("model").get_int("vocab_pad_multiple"), 64);  // default filled in
  EXPECT_EQ(r.options("model").where("hidden").str(), p + ":4:10");
  EXPECT_FALSE(r.options("model").where("vocab_pad_multiple").known());
  EXPECT_EQ(r.options("run").get_int("steps"), 2);
  EXPECT_EQ(r.options("run").get_int("seed"), 1234);
  EXPECT_EQ(r.options("batch").get_int("global"), 1);  // auto = micro * data
  EXPECT_EQ(r.options("parallel").get_int("data"), 1);
  EXPECT_EQ(r.options("parallel").get_int("world"), 1);
  EXPECT_EQ(r.options("log").get_strings("sinks"), (std::vector<std::string>{"console", "jsonl"}));
  EXPECT_TRUE(r.has("log.console"));
  EXPECT_TRUE(r.has("log.jsonl"));
  EXPECT_FALSE(r.has("log.fixture-sink"));
  EXPECT_EQ(r.section("log.jsonl").family, "metrics_sink");
  EXPECT_TRUE(r.section("run").family.empty());
  EXPECT_THROW(r.section("nope"), weft::InternalError);
}

TEST(Recipe, LayoutAndBatchResolution) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal +
                                        "[parallel]\ntensor = 1\npipeline = 2\ndata = \"auto\"\nworld = 8\n"
                                        "[batch]\nmicro = 2\nglobal = 32\n");
  weft::Recipe r = load(p);
  EXPECT_EQ(r.world, 8);
  EXPECT_EQ(r.sizes.pp, 2);
  EXPECT_EQ(r.sizes.dp, 4);
  EXPECT_EQ(r.grad_accum, 4);  // 32 / (2 * 4)
  EXPECT_EQ(r.options("parallel").get_int("data"), 4);
  // Data given, world auto: world = tensor * pipeline * data.
  p = d.write("r2.toml", kMinimal + "[parallel]\npipeline = 2\ndata = 3\n[batch]\nmicro = 2\n");
  r = load(p);
  EXPECT_EQ(r.world, 6);
  EXPECT_EQ(r.sizes.dp, 3);
  EXPECT_EQ(r.options("batch").get_int("global"), 6);
  EXPECT_EQ(r.grad_accum, 1);
}

TEST(Recipe, LauncherWorld) {
  TempDir d;
  weft::RecipeEnv env;
  env.launcher_world = 4;
  std::string p = d.write("r.toml", kMinimal + "[parallel]\ntensor = 2\n");
  weft::Recipe r = load(p, {}, env);
  EXPECT_EQ(r.world, 4);
  EXPECT_EQ(r.sizes.dp, 2);
  EXPECT_EQ(r.plugin("comm"), "mpi");  // "auto" under a launcher
  p = d.write("r2.toml", kMinimal + "[parallel]\nworld = 2\n");
  EXPECT_EQ(error_of(p, {}, env), p + ":14:9: parallel.world: the recipe says 2 ranks but the launcher started 4");
}

// ---- includes -------------------------------------------------------------------------------

TEST(RecipeInclude, RelativeToIncludingFileLaterWins) {
  TempDir d;
  d.write("common/c.toml", "[run]\nname = \"from-c\"\nseed = 7\nsteps = 10\n");
  d.write("base/a.toml", "include = \"../common/c.toml\"\n[run]\nsteps = 20\n" + kModel);
  d.write("base/b.toml", "[run]\nsteps = 30\n[model]\nlayers = 3\n");
  std::string top = d.write("top.toml", "include = [\"base/a.toml\", \"base/b.toml\"]\n" + kData +
                                           "[model]\nhidden = 64\n");
  weft::Recipe r = load(top);
  const weft::Options& run = r.options("run");
  EXPECT_EQ(run.get_string("name"), "from-c");  // only c sets it
  EXPECT_EQ(run.get_int("seed"), 7);
  EXPECT_EQ(run.get_int("steps"), 30);          // b comes after a, a after c
  EXPECT_EQ(run.where("steps").str(), d.path + "/base/b.toml:2:9");
  // The place names the included file (spelled through the including file's folder or not).
  std::string where_name = run.where("name").str();
  EXPECT_TRUE(where_name == d.path + "/common/c.toml:2:8" || where_name == d.path + "/base/../common/c.toml:2:8")
      << where_name;
  const weft::Options& model = r.options("model");
  EXPECT_EQ(model.get_int("layers"), 3);   // b over a
  EXPECT_EQ(model.get_int("hidden"), 64);  // the including file over everything it includes
  EXPECT_EQ(model.get_int("heads"), 2);    // tables merge key by key
  EXPECT_EQ(model.where("hidden").str(), top + ":5:10");
  EXPECT_EQ(model.where("heads").str(), d.path + "/base/a.toml:8:9");
}

TEST(RecipeInclude, NestedAndDiamond) {
  TempDir d;
  d.write("d.toml", kModel + kData);
  d.write("left/l.toml", "include = [\"../d.toml\"]\n[run]\nname = \"left\"\n");
  d.write("right/r.toml", "include = [\"../d.toml\"]\n[run]\nsteps = 5\n");
  d.write("mid.toml", "include = [\"left/l.toml\", \"right/r.toml\"]\n");
  std::string top = d.write("top.toml", "include = [\"mid.toml\"]\n");
  weft::Recipe r = load(top);
  EXPECT_EQ(r.options("run").get_string("name"), "left");
  EXPECT_EQ(r.options("run").get_int("steps"), 5);
  EXPECT_EQ(r.options("model").get_int("hidden"), 32);
}

TEST(RecipeInclude, ValuePathsAreRelativeToTheirOwnFile) {
  TempDir d;
  d.write("base/data.toml", "[data]\nplugin = \"text\"\nfiles = [\"corpus/a.txt\", \"/abs/b.txt\"]\n");
  fs::create_directories(d.path + "/base/corpus");
  std::string top = d.write("sub/top.toml", "include = \"../base/data.toml\"\n" + kModel);
  weft::Recipe r = load(top);
  EXPECT_EQ(r.options("data").get_strings("files"),
            (std::vector<std::string>{d.path + "/base/corpus/a.txt", "/abs/b.txt"}));
  // A path from --set is relative to the working directory.
  r = load(top, {"data.files=[x.txt]"});
  EXPECT_EQ(r.options("data").get_strings("files"), (std::vector<std::string>{(fs::current_path() / "x.txt").string()}));
}

TEST(RecipeInclude, CycleIsRefusedWithTheChain) {
  TempDir d;
  std::string a = d.write("a.toml", "include = [\"b.toml\"]\n" + kMinimal);
  std::string b = d.write("b.toml", "# b\ninclude = [\"c.toml\"]\n");
  std::string c = d.write("c.toml", "include = [\"x.toml\", \"a.toml\"]\n");
  d.write("x.toml", "");
  EXPECT_EQ(error_of(a), c + ":1:22: include cycle: a.toml -> b.toml -> c.toml -> a.toml");
  std::string self = d.write("self.toml", "\n\ninclude = \"self.toml\"\n");
  EXPECT_EQ(error_of(self), self + ":3:11: include cycle: self.toml -> self.toml");
  // Spelled differently, still the same file.
  std::string self2 = d.write("sub/self2.toml", "include = \"../sub/./self2.toml\"\n");
  EXPECT_EQ(error_of(self2), self2 + ":1:11: include cycle: self2.toml -> self2.toml");
}

TEST(RecipeInclude, MissingIncludeNamesTheEntry) {
  TempDir d;
  std::string p = d.write("r.toml", "include = [\n  \"base.toml\",\n  \"nope.toml\",\n]\n" + kMinimal);
  d.write("base.toml", "");
  EXPECT_EQ(error_of(p), p + ":3:3: include 'nope.toml' not found (looked for " + d.path + "/nope.toml)");
}

TEST(RecipeInclude, MalformedIncludes) {
  TempDir d;
  std::string p = d.write("r.toml", "include = 3\n");
  EXPECT_EQ(error_of(p), p + ":1:11: include: expected a string or an array of strings");
  d.write("empty.toml", "");
  p = d.write("r2.toml", "include = [\"empty.toml\", true]\n");
  EXPECT_EQ(error_of(p), p + ":1:26: include: expected a string (a recipe path)");
  fs::create_directory(d.path + "/folder.toml");
  p = d.write("r3.toml", "include = \"folder.toml\"\n");
  EXPECT_EQ(error_of(p), p + ":1:11: recipe '" + d.path + "/folder.toml' is a directory");
  // A syntax error inside an included file names that file.
  std::string bad = d.write("bad.toml", "[run]\nsteps = 2\nname = \n");
  p = d.write("r4.toml", "include = \"bad.toml\"\n");
  EXPECT_TRUE(starts_with(error_of(p), bad + ":3:8: syntax error: ")) << error_of(p);
  // And a validation error in an included value names the included file.
  std::string val = d.write("val.toml", "[model]\n\nlayers = \"many\"\n");
  p = d.write("r5.toml", "include = \"val.toml\"\n" + kData);
  EXPECT_EQ(error_of(p), val + ":3:10: model.layers: expected integer, got string");
}

TEST(RecipeInclude, DeepChainIsRefused) {
  TempDir d;
  auto name = [](int i) {
    std::string n = std::to_string(i);
    n.insert(0, 1, 'f');
    n.append(".toml");
    return n;
  };
  for (int i = 0; i < 40; ++i) d.write(name(i), "include = \"" + name(i + 1) + "\"\n");
  d.write("f40.toml", kMinimal);
  std::string msg = error_of(d.path + "/f0.toml");
  EXPECT_EQ(msg, d.path + "/f31.toml:1:11: includes nested more than 32 deep");
}

// ---- --set overrides ------------------------------------------------------------------------

TEST(RecipeOverride, TypedBySchema) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal + "[optimizer]\nlr = 0.1\n");
  weft::Recipe r = load(p, {"run.steps=7", "optimizer.lr=2.5e-4", "optimizer.beta2=1", "checkpoint.resume=true",
                            "run.name=\"quoted name\"", "run.out_dir='single'", "log.level=debug",
                            "log.sinks=[console, 'jsonl']", "parallel.data=auto", "parallel.world=3",
                            "model.layers=4", "model.layers=5"});
  EXPECT_EQ(r.options("run").get_int("steps"), 7);
  EXPECT_EQ(r.options("run").where("steps").str(), "--set run.steps=7");
  EXPECT_EQ(r.options("optimizer").get_float("lr"), 2.5e-4);
  EXPECT_EQ(r.options("optimizer").get_float("beta2"), 1.0);  // an integer where a float is expected
  EXPECT_TRUE(r.options("checkpoint").get_bool("resume"));
  EXPECT_EQ(r.options("run").get_string("name"), "quoted name");
  EXPECT_EQ(r.options("run").get_string("out_dir"), "single");
  EXPECT_EQ(r.options("log").get_string("level"), "debug");
  EXPECT_EQ(r.options("log").get_strings("sinks"), (std::vector<std::string>{"console", "jsonl"}));
  EXPECT_EQ(r.world, 3);
  EXPECT_EQ(r.sizes.dp, 3);
  EXPECT_EQ(r.options("model").get_int("layers"), 5);  // the last --set wins
}

TEST(RecipeOverride, AllOptionTypesOfAPluginAndItsFactory) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  weft::Recipe r = load(p, {"tokenizer.plugin=fixture-tok", "tokenizer.offset=3", "tokenizer.case=upper",
                            "tokenizer.weight=0.25", "tokenizer.reverse=true", "tokenizer.specials=[<e>, <pad>]",
                            "log.sinks=fixture-sink", "log.fixture-sink.digits=3", "log.fixture-sink.format=comment"});
  EXPECT_EQ(r.plugin("tokenizer"), "fixture-tok");
  const weft::Options& t = r.options("tokenizer");
  EXPECT_EQ(t.get_int("offset"), 3);
  EXPECT_EQ(t.get_string("case"), "upper");
  EXPECT_EQ(t.get_float("weight"), 0.25);
  EXPECT_TRUE(t.get_bool("reverse"));
  EXPECT_EQ(t.get_strings("specials"), (std::vector<std::string>{"<e>", "<pad>"}));
  auto tok = registry().factory<weft::Tokenizer>("fixture-tok")(t);
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{3 + 'B', 3 + 'A'}));
  EXPECT_EQ(tok->vocab_size(), 3 + 256 + 2);
  ASSERT_TRUE(r.has("log.fixture-sink"));
  EXPECT_FALSE(r.has("log.console"));
  EXPECT_EQ(r.options("log.fixture-sink").get_int("digits"), 3);
  EXPECT_EQ(r.options("log.fixture-sink").get_string("format"), "comment");
}

TEST(RecipeOverride, PluginChoiceSwitchesTheSchema) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  weft::Recipe r = load(p, {"optimizer.plugin=sgd", "optimizer.nesterov=true", "optimizer.momentum=0.5"});
  EXPECT_EQ(r.plugin("optimizer"), "sgd");
  EXPECT_TRUE(r.options("optimizer").get_bool("nesterov"));
  EXPECT_EQ(r.options("optimizer").get_float("momentum"), 0.5);
  EXPECT_FALSE(r.options("optimizer").has("beta1"));
  // Without the switch, nesterov is not an adamw option.
  EXPECT_EQ(error_of(p, {"optimizer.nesterov=true"}),
            "--set optimizer.nesterov=true: optimizer.nesterov: unknown key");
  // The recipe's adamw keys that sgd lacks are dropped, with a note; shared keys keep their values.
  std::string q = d.write("q.toml", kMinimal + "[optimizer]\nbeta1 = 0.8\nlr = 0.5\n");
  weft::Recipe s = load(q, {"optimizer.plugin=sgd"});
  EXPECT_FALSE(s.options("optimizer").has("beta1"));
  EXPECT_EQ(s.options("optimizer").get_float("lr"), 0.5);
  EXPECT_EQ(s.notes, (std::vector<std::string>{"optimizer.plugin = \"sgd\" (--set) drops optimizer.beta1: options of "
                                               "'adamw' that 'sgd' does not have"}));
  // Without a switch the same key is refused, pointing at the file.
  std::string f = d.write("f.toml", kMinimal + "[optimizer]\nplugin = \"sgd\"\nbeta1 = 0.8\n");
  EXPECT_EQ(error_of(f),
            f + ":15:1: optimizer.beta1: unknown key; keys: lr, momentum, weight_decay, nesterov, clip_grad_norm");
  EXPECT_TRUE(load(q).notes.empty());
  // And a switch to a plugin that does not exist.
  EXPECT_TRUE(starts_with(error_of(p, {"optimizer.plugin=sdg"}),
                          "--set optimizer.plugin=sdg: optimizer.plugin: no optimizer plugin named 'sdg' "
                          "(did you mean 'sgd'?); available: "))
      << error_of(p, {"optimizer.plugin=sdg"});
}

// --unset removes a key of the merged recipe (includes too), so the default applies.
TEST(RecipeOverride, UnsetRestoresTheDefault) {
  TempDir d;
  d.write("base.toml", kMinimal + "seed = 7\n[optimizer]\nlr = 0.5\n");
  std::string p = d.write("r.toml", "include = \"base.toml\"\n[batch]\nmicro = 2\n");
  weft::RecipeEnv env;
  env.unsets = {"run.seed", "optimizer.lr", "batch.micro"};
  weft::Recipe r = load(p, {}, env);
  EXPECT_EQ(r.options("run").get_int("seed"), 1234);
  EXPECT_EQ(r.options("optimizer").get_float("lr"), 6e-4);
  EXPECT_EQ(r.options("batch").get_int("micro"), 1);
  // --set still applies after --unset.
  r = load(p, {"run.seed=9"}, env);
  EXPECT_EQ(r.options("run").get_int("seed"), 9);
  // Unsetting data.plugin leaves [data] without its required plugin.
  env.unsets = {"data.plugin"};
  EXPECT_EQ(error_of(p, {}, env), d.path + "/base.toml:8:1: missing required key data.plugin (which dataset plugin to use)");
  env.unsets = {"run.name"};
  EXPECT_EQ(error_of(p, {}, env), "--unset run.name: run.name is not set by the recipe; nothing to unset");
  env.unsets = {"steps"};
  EXPECT_EQ(error_of(p, {}, env), "--unset steps: expected section.key (the key needs its section, e.g. run.steps)");
}

// Keys spelt as other tools spell them find ours.
TEST(RecipeOverride, DidYouMeanOtherToolsNames) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  EXPECT_EQ(error_of(p, {"model.num_layers=3"}),
            "--set model.num_layers=3: model.num_layers: unknown key (did you mean 'layers'?)");
  EXPECT_EQ(error_of(p, {"model.n_head=3"}), "--set model.n_head=3: model.n_head: unknown key (did you mean 'heads'?)");
}

// A quoted list item keeps its commas and escapes, as the same list would in a recipe.
TEST(RecipeOverride, StringListItemsWithCommas) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  weft::Recipe r = load(p, {"tokenizer.plugin=fixture-tok", "tokenizer.specials=[\"x,y\", \"z\"]"});
  EXPECT_EQ(r.options("tokenizer").get_strings("specials"), (std::vector<std::string>{"x,y", "z"}));
  r = load(p, {"tokenizer.plugin=fixture-tok", "tokenizer.specials=['a, b', c]"});
  EXPECT_EQ(r.options("tokenizer").get_strings("specials"), (std::vector<std::string>{"a, b", "c"}));
}

// A weighted table {item = weight} reads as the list [weight, item, ...] in the
// file's order (not TOML++'s sorted order), inline or as its own section.
TEST(RecipeWeightedTable, ReadsAsTheWeightedListInFileOrder) {
  TempDir d;
  const std::string data = "[data]\nplugin = \"megatron\"\n";
  std::string p = d.write("r.toml", kModel + data + "paths = { \"zeta\" = 0.7, \"alpha\" = 0.3, mid = 2 }\n");
  EXPECT_EQ(load(p).options("data").get_strings("paths"),
            (std::vector<std::string>{"0.7", "zeta", "0.3", "alpha", "2", "mid"}));
  p = d.write("s.toml", kModel + data + "[data.paths]\n\"b\" = 1e-3\n\"a\" = 0\n");
  EXPECT_EQ(load(p).options("data").get_strings("paths"), (std::vector<std::string>{"0.001", "b", "0", "a"}));
  p = d.write("l.toml", kModel + data + "paths = [\"0.3\", \"a\", \"0.7\", \"b\"]\n");  // the list as before
  EXPECT_EQ(load(p).options("data").get_strings("paths"), (std::vector<std::string>{"0.3", "a", "0.7", "b"}));
  p = d.write("e.toml", kModel + data + "paths = {}\n");  // empty: the plugin says "no prefixes"
  EXPECT_TRUE(load(p).options("data").get_strings("paths").empty());
}

TEST(RecipeWeightedTable, Refusals) {
  TempDir d;
  // Line 10 holds paths; column 17 is the weight's first character.
  const std::string head = kModel + "\n[data]\nplugin = \"megatron\"\n";
  const std::pair<std::string, std::string> cases[] = {
      {"paths = { \"a\" = \"0.3\" }", ":10:17: data.paths[\"a\"]: the weight must be a number >= 0, found a string"},
      {"paths = { \"a\" = -0.5 }", ":10:17: data.paths[\"a\"]: the weight must be a number >= 0, found -0.5"},
      {"paths = { \"a\" = -2 }", ":10:17: data.paths[\"a\"]: the weight must be a number >= 0, found -2"},
      {"paths = { \"a\" = nan }", ":10:17: data.paths[\"a\"]: the weight must be a number >= 0, found nan"},
      {"paths = { \"a\" = [1] }", ":10:17: data.paths[\"a\"]: the weight must be a number >= 0, found an array"},
      {"paths = 3", ":10:9: data.paths: expected array of strings or a table of weights, got integer"},
  };
  int i = 0;
  for (const auto& [line, expected] : cases) {
    SCOPED_TRACE(line);
    std::string p = d.write("bad" + std::to_string(i++) + ".toml", head + line + "\n");
    EXPECT_EQ(error_of(p), p + expected);
  }
  // Without the flag a table is still refused as a list's wrong type.
  std::string p = d.write("tok.toml", kMinimal + "[tokenizer]\nplugin = \"fixture-tok\"\nspecials = { a = 1 }\n");
  EXPECT_EQ(error_of(p), p + ":15:12: tokenizer.specials: expected array of strings, got table");
}

// `plugin` is not a key of a core section: the refusal says so, not that the
// section is missing from the recipe.
TEST(RecipeOverride, PluginKeyOfACoreSection) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  std::string msg = error_of(p, {"run.plugin=x"});
  EXPECT_TRUE(starts_with(msg, "--set run.plugin=x: run.plugin: unknown key")) << msg;
  // The same key in the file is refused that way already.
  std::string q = d.write("q.toml", kMinimal + "plugin = \"x\"\n");
  EXPECT_EQ(error_of(q), q + ":13:1: run.plugin: unknown key; keys: name, seed, steps, out_dir, on_nan, stop_signals, "
                           "exit_interval, exit_duration_mins");
}

struct OverrideCase {
  const char* name;
  std::vector<std::string> overrides;
  std::string expected;  // exact message
};

TEST(RecipeOverride, Refusals) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  const OverrideCase cases[] = {
      {"unknown key with hint", {"model.layer=3"}, "--set model.layer=3: model.layer: unknown key (did you mean 'layers'?)"},
      {"unknown section with hint", {"modle.layers=3"}, "--set modle.layers=3: unknown section [modle] (did you mean [model]?)"},
      {"unknown section", {"zzz.a=1"}, "--set zzz.a=1: unknown section [zzz]"},
      {"no equals sign", {"run.steps"}, "--set run.steps: expected section.key=value"},
      {"empty key", {"=3"}, "--set =3: expected section.key=value"},
      {"no section", {"steps=3"}, "--set steps=3: expected section.key=value (the key needs its section, e.g. run.steps=10)"},
      {"trailing dot", {"run.=3"}, "--set run.=3: expected section.key=value (the key needs its section, e.g. run.steps=10)"},
      {"integer overflow", {"run.steps=99999999999999999999"},
       "--set run.steps=99999999999999999999: run.steps: integer overflow in '99999999999999999999'"},
      {"float for integer", {"run.steps=2.5"}, "--set run.steps=2.5: run.steps: '2.5' is not an integer"},
      {"empty integer", {"run.steps="}, "--set run.steps=: run.steps: '' is not an integer"},
      {"auto where not allowed", {"run.steps=auto"}, "--set run.steps=auto: run.steps: 'auto' is not an integer"},
      {"bad auto spelling", {"parallel.data=Auto"}, "--set parallel.data=Auto: parallel.data: 'Auto' is not an integer or \"auto\""},
      {"out of range", {"run.steps=0"}, "--set run.steps=0: run.steps: 0 is out of range (allowed 1 to 1000000000000)"},
      {"negative seed", {"run.seed=-1"}, "--set run.seed=-1: run.seed: -1 is out of range (allowed 0 to 9000000000000000000)"},
      {"float overflow", {"optimizer.lr=1e999"}, "--set optimizer.lr=1e999: optimizer.lr: '1e999' overflows a double"},
      {"not a number", {"optimizer.lr=fast"}, "--set optimizer.lr=fast: optimizer.lr: 'fast' is not a number"},
      {"nan", {"optimizer.lr=nan"}, "--set optimizer.lr=nan: optimizer.lr: nan is not a finite number"},
      {"float out of range", {"optimizer.beta1=1.5"},
       "--set optimizer.beta1=1.5: optimizer.beta1: 1.5 is out of range (allowed 0.0 to 1.0)"},
      {"bool", {"checkpoint.resume=yes"}, "--set checkpoint.resume=yes: checkpoint.resume: 'yes' is not a boolean (true or false)"},
      {"choice with hint", {"log.level=eror"},
       "--set log.level=eror: log.level: 'eror' is not one of trace, debug, info, warn, error (did you mean 'error'?)"},
      {"unknown sink", {"log.sinks=[console, jsnol]"},
       "--set log.sinks=[console, jsnol]: log.sinks: no metrics_sink plugin named 'jsnol' (did you mean 'jsonl'?); available: "},
      {"sink twice", {"log.sinks=console,console"}, "--set log.sinks=console,console: log.sinks: 'console' is listed twice"},
      {"option of an unlisted sink", {"log.fixture-sink.digits=3"},
       "--set log.fixture-sink.digits=3: [log.fixture-sink] is not part of this recipe"},
      {"layout", {"parallel.tensor=2", "parallel.data=3", "parallel.world=8"},
       "--set parallel.data=3: parallel.data: tensor 2 x pipeline 1 x data 3 = 6 ranks, but world is 8"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string msg = error_of(p, c.overrides);
    if (c.expected.back() == ' ') {
      EXPECT_TRUE(starts_with(msg, c.expected)) << msg;
    } else {
      EXPECT_EQ(msg, c.expected);
    }
  }
}

// ---- malformed recipes: exact place and message ----------------------------------------

struct BadRecipe {
  const char* name;
  std::string text;
  // "@" stands for the recipe's path, "$" for its folder. Ends in "..." or ":": a prefix.
  std::string expected;
  // Where the column comes from the TOML parser: expected = "@:LINE:", then the
  // column, then ": " + after, and the message contains `contains`.
  std::string after = "";
  std::string contains = "";
};

TEST(RecipeRefusal, Table) {
  const std::string deep_array = "[run]\nname = " + std::string(20, '[') + "\"x\"" + std::string(20, ']') + "\n";
  std::string deep_tables = "[run";
  for (int i = 0; i < 20; ++i) deep_tables += ".t" + std::to_string(i);
  deep_tables += "]\nx = 1\n";
  const std::string deep_inline = "[run]\nx = " + [] {
    std::string s;
    for (int i = 0; i < 20; ++i) s += "{a = ";
    s += "1";
    for (int i = 0; i < 20; ++i) s += "}";
    return s;
  }() + "\n";
  const std::string absurd_array = "[run]\nname = " + std::string(100000, '[') + std::string(100000, ']') + "\n";

  const BadRecipe cases[] = {
      {"syntax error", kMinimal + "[batch]\nmicro = = 2\n", "@:14:9: syntax error: ..."},
      {"unterminated string", "[run]\nname = \"abc\n", "@:2:12: syntax error: ..."},
      {"duplicate key", "[run]\nsteps = 1\nsteps = 2\n", "@:3:", "syntax error: ", "'steps'"},
      {"unknown section with hint", kMinimal + "\n[modle]\nlayers = 2\n", "@:14:2: unknown section [modle] (did you mean [model]?)"},
      {"unknown top-level key", "stpes = 3\n" + kMinimal, "@:1:1: unknown section [stpes]"},
      {"unknown key with hint", kMinimal + "[batch]\nmicor = 2\n", "@:14:1: batch.micor: unknown key (did you mean 'micro'?)"},
      {"unknown key listing keys", kMinimal + "[checkpoint]\nfrequency = 2\n",
       "@:14:1: checkpoint.frequency: unknown key; keys: interval, keep, resume, async"},
      {"unknown key of a plugin", kModel + "dropout = 0.1\n" + kData, "@:7:1: model.dropout: unknown key..."},
      {"key of an option-less plugin", kMinimal + "[precision]\nplugin = \"fp32\"\nloss_scale = 2\n",
       "@:15:1: precision.loss_scale: unknown key; this section takes no options"},
      {"unknown table under parallel", kMinimal + "[parallel.sharding]\nplugin = \"x\"\n",
       "@:13:11: parallel.sharding: unknown key..."},
      {"wrong type", kMinimal + "[batch]\nmicro = \"2\"\n", "@:14:9: batch.micro: expected integer, got string"},
      {"bool for int", kMinimal + "[batch]\nmicro = true\n", "@:14:9: batch.micro: expected integer, got boolean"},
      {"table for int", kMinimal + "[batch]\nmicro = { a = 1 }\n", "@:14:9: batch.micro: expected integer, got table"},
      {"date for int", kMinimal + "[checkpoint]\ninterval = 1979-05-27\n",
       "@:14:12: checkpoint.interval: expected integer, got date/time"},
      {"string for bool", kMinimal + "[checkpoint]\nresume = \"yes\"\n", "@:14:10: checkpoint.resume: expected boolean, got string"},
      {"string for list", kMinimal + "[log]\nsinks = \"console\"\n", "@:14:9: log.sinks: expected array of strings, got string"},
      {"number in a list", kMinimal + "[log]\nsinks = [\"console\", 3]\n",
       "@:14:21: log.sinks: expected an array of strings, found an integer"},
      {"auto misspelt", kMinimal + "[parallel]\ndata = \"atuo\"\n", "@:14:8: parallel.data: expected integer or \"auto\", got string"},
      {"out of range", kMinimal + "[batch]\nmicro = 0\n", "@:14:9: batch.micro: 0 is out of range (allowed 1 to 1048576)"},
      {"out of range, plugin", kModel + "init_std = -0.5\n" + kData,
       "@:7:12: model.init_std: -0.5 is out of range (minimum 0.0)"},
      {"float out of range", kMinimal + "[optimizer]\nbeta2 = 1.5\n",
       "@:14:9: optimizer.beta2: 1.5 is out of range (allowed 0.0 to 1.0)"},
      {"not finite", kMinimal + "[optimizer]\nlr = inf\n", "@:14:6: optimizer.lr: inf is not a finite number"},
      {"nan", kMinimal + "[optimizer]\nlr = nan\n", "@:14:6: optimizer.lr: nan is not a finite number"},
      {"choice", kMinimal + "[log]\nlevel = \"inf\"\n",
       "@:14:9: log.level: 'inf' is not one of trace, debug, info, warn, error (did you mean 'info'?)"},
      {"integer literal overflow", kMinimal + "[checkpoint]\ninterval = 99999999999999999999\n",
       "@:14:", "syntax error: ", "99999999999999999999"},
      {"float where int expected", kMinimal + "[batch]\nmicro = 2.0\n", "@:14:9: batch.micro: expected integer, got float"},
      {"missing data.plugin", kModel + "\n[data]\nvocab = 10\n", "@:8:1: missing required key data.plugin (which dataset plugin to use)"},
      {"missing [data]", kModel, "@: missing required key data.plugin (which dataset plugin to use)"},
      {"missing data.files", kModel + "[data]\nplugin = \"text\"\n",
       "@:7:1: missing required key data.files (text files to train on (relative to the recipe file))"},
      {"layout does not multiply", kMinimal + "[parallel]\ntensor = 2\npipeline = 2\ndata = 3\nworld = 8\n",
       "@:16:8: parallel.data: tensor 2 x pipeline 2 x data 3 = 12 ranks, but world is 8"},
      {"world not divisible", kMinimal + "[parallel]\ntensor = 4\nworld = 6\n",
       "@:15:9: parallel.world: world 6 is not divisible by tensor 4 x pipeline 1"},
      {"global not divisible", kMinimal + "[parallel]\ndata = 2\n[batch]\nmicro = 3\nglobal = 10\n",
       "@:17:10: batch.global: global batch 10 is not divisible by micro 3 x data 2 = 6"},
      {"rampup start not below global",
       kMinimal + "[batch]\nglobal = 8\nrampup_start = 8\nrampup_increment = 2\nrampup_samples = 10\n",
       "@:15:16: batch.rampup_start: rampup_start 8 is not below batch.global 8"},
      {"rampup increments miss global",
       kMinimal + "[batch]\nglobal = 8\nrampup_start = 2\nrampup_increment = 4\nrampup_samples = 10\n",
       "@:16:20: batch.rampup_increment: global 8 - rampup_start 2 = 6 is not a multiple of rampup_increment 4"},
      {"rampup batch not whole microbatches",
       kMinimal + "[parallel]\ndata = 2\n[batch]\nglobal = 8\nrampup_start = 3\nrampup_increment = 5\nrampup_samples = 10\n",
       "@:17:16: batch.rampup_start: rampup_start 3 and rampup_increment 5 must be multiples of micro x data = 2"},
      {"rampup samples without start", kMinimal + "[batch]\nrampup_samples = 10\n",
       "@:14:18: batch.rampup_samples: needs rampup_start (0 = no ramp-up)"},
      {"expert does not divide data", kMinimal + "[parallel]\ndata = 4\nexpert = 3\n",
       "@:15:10: parallel.expert: expert 3 does not divide data 4"},
      {"non-UTF-8 in a string", kModel + kData + "[run]\nname = \"caf\xe9\"\n", "@:10:", "syntax error: ", "utf-8"},
      {"non-UTF-8 in a comment", "# \xff\xfe\n" + kMinimal, "@:1:", "syntax error: ", "utf-8"},
      {"NUL byte", kMinimal + std::string("\0", 1) + "\n", "@:13:1: syntax error: ..."},
      {"nested arrays", deep_array, "@:2:23: ..."},
      {"nested tables", deep_tables, "@:1:1: ..."},
      {"nested inline tables", deep_inline, "@:2:80: ..."},
      {"absurdly nested arrays", absurd_array, "@:2:", "syntax error: ", "nested"},
      {"section not a table", "model = \"gpt\"\n" + kData, "@:1:1: [model] must be a table, found a string"},
      {"run not a table", "run = 3\n" + kModel + kData, "@:1:1: [run] must be a table, found an integer"},
      {"plugin subsection not a table", kMinimal + "[parallel]\ndata_parallel = \"zero1\"\n",
       "@:14:17: [parallel.data_parallel] must be a table, found a string"},
      {"plugin not a string", kMinimal + "[backend]\nplugin = 1\n", "@:14:10: backend.plugin: expected string, got integer"},
      {"unknown plugin with hint", "[model]\nplugin = \"gtp\"\n" + kData,
       "@:2:10: model.plugin: no model plugin named 'gtp' (did you mean 'gpt'?); available: ..."},
      {"unknown dataset plugin", kModel + "[data]\nplugin = \"synthtic\"\n",
       "@:8:10: data.plugin: no dataset plugin named 'synthtic' (did you mean 'synthetic'?); available: ..."},
      {"unknown sink", kMinimal + "[log]\nsinks = [\"console\", \"jsnol\"]\n",
       "@:14:9: log.sinks: no metrics_sink plugin named 'jsnol' (did you mean 'jsonl'?); available: ..."},
      {"sink listed twice", kMinimal + "[log]\nsinks = [\"jsonl\", \"jsonl\"]\n", "@:14:9: log.sinks: 'jsonl' is listed twice"},
      {"options of an unlisted sink", kMinimal + "[log]\nsinks = [\"console\"]\n[log.jsonl]\n",
       "@:15:1: [log.jsonl] configures a sink that log.sinks does not list"},
      {"unknown sink option", kMinimal + "[log]\nsinks = [\"fixture-sink\"]\n[log.fixture-sink]\ndigit = 3\n",
       "@:16:1: log.fixture-sink.digit: unknown key (did you mean 'digits'?)"},
      {"sink option out of range", kMinimal + "[log]\nsinks = [\"fixture-sink\"]\n[log.fixture-sink]\ndigits = 30\n",
       "@:16:10: log.fixture-sink.digits: 30 is out of range (allowed 1 to 17)"},
      {"plugin folder missing", kMinimal + "[plugins]\npaths = [\"no-such-folder\"]\n",
       "@:14:9: plugins.paths: '$/no-such-folder' is not a directory"},
  };
  TempDir d;
  int i = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = d.write("case" + std::to_string(i++) + ".toml", c.text);
    std::string expected = c.expected;
    for (size_t at; (at = expected.find('@')) != std::string::npos;) expected.replace(at, 1, path);
    for (size_t at; (at = expected.find('$')) != std::string::npos;) expected.replace(at, 1, d.path);
    std::string msg = error_of(path);
    if (!c.after.empty()) {
      ASSERT_TRUE(starts_with(msg, expected)) << "message:  " << msg << "\nexpected: " << expected << "COL: " << c.after;
      size_t at = expected.size();
      size_t digits = at;
      while (digits < msg.size() && std::isdigit(static_cast<unsigned char>(msg[digits]))) ++digits;
      EXPECT_GT(digits, at) << msg;
      EXPECT_EQ(msg.substr(digits, 2 + c.after.size()), ": " + c.after) << msg;
      EXPECT_NE(msg.find(c.contains), std::string::npos) << msg;
      continue;
    }
    if (expected.size() > 3 && expected.substr(expected.size() - 3) == "...") {
      expected.resize(expected.size() - 3);
      EXPECT_TRUE(starts_with(msg, expected)) << "message:  " << msg << "\nexpected: " << expected << "...";
    } else if (expected.back() == ':') {
      EXPECT_TRUE(starts_with(msg, expected)) << "message:  " << msg << "\nexpected: " << expected << "...";
    } else {
      EXPECT_EQ(msg, expected);
    }
    EXPECT_LT(msg.size(), 400u) << msg;
  }
}

TEST(RecipeRefusal, NestingMessages) {
  TempDir d;
  std::string p = d.write("r.toml", "[run]\nname = " + std::string(20, '[') + "\"x\"" + std::string(20, ']') + "\n");
  std::string msg = error_of(p);
  EXPECT_NE(msg.find("nested more than 16 deep"), std::string::npos) << msg;
  p = d.write("r2.toml", "[run]\nname = " + std::string(100000, '[') + std::string(100000, ']') + "\n");
  msg = error_of(p);
  EXPECT_TRUE(starts_with(msg, p + ":2:")) << msg.substr(0, 300);
  EXPECT_NE(msg.find("nest"), std::string::npos) << msg.substr(0, 300);
}

TEST(RecipeRefusal, RecipeFileItself) {
  TempDir d;
  EXPECT_EQ(error_of(d.path + "/none.toml"), "recipe file '" + d.path + "/none.toml' not found");
  EXPECT_EQ(error_of(d.path), "recipe '" + d.path + "' is a directory");
  std::string bin;
  for (int i = 0; i < 256; ++i) bin += static_cast<char>((i * 37 + 11) & 0xff);
  std::string p = d.write("binary.toml", bin);
  EXPECT_TRUE(starts_with(error_of(p), p + ":1:")) << error_of(p);
  std::string big = d.write("big.toml", "# " + std::string(17u << 20, 'x') + "\n");
  EXPECT_EQ(error_of(big), "recipe file '" + big + "' is larger than 16 MiB");
  std::string empty = d.write("empty.toml", "");
  EXPECT_EQ(error_of(empty), empty + ": missing required key data.plugin (which dataset plugin to use)");
}

// A literal 0 is below the minimum of 1 of parallel.data/world and batch.global;
// only the string "auto" stands for "work it out".
TEST(RecipeRefusal, LiteralZeroIsNotAuto) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal + "[parallel]\ndata = 0\n");
  EXPECT_EQ(error_of(p), p + ":14:8: parallel.data: 0 is out of range (allowed 1 to 1048576)");
  p = d.write("r2.toml", kMinimal + "[batch]\nglobal = 0\n");
  EXPECT_EQ(error_of(p), p + ":14:10: batch.global: 0 is out of range (allowed 1 to 1073741824)");
}

// ---- the resolved recipe reads back to itself -------------------------------------------

namespace {

void expect_round_trip(const TempDir& d, const std::string& path, const std::vector<std::string>& overrides = {}) {
  weft::Recipe first = load(path, overrides);
  std::string text = first.to_toml();
  std::string again_path = d.write("resolved-" + fs::path(path).filename().string(), text);
  weft::Recipe second;
  try {
    second = load(again_path);
  } catch (const weft::Error& e) {
    ADD_FAILURE() << "resolved recipe does not read back: " << e.what() << "\n" << text;
    return;
  }
  EXPECT_EQ(second.to_toml(), text);
  EXPECT_EQ(second.world, first.world);
  EXPECT_EQ(second.grad_accum, first.grad_accum);
  EXPECT_EQ(second.sizes.dp, first.sizes.dp);
  ASSERT_EQ(second.sections.size(), first.sections.size());
  for (size_t i = 0; i < first.sections.size(); ++i) {
    EXPECT_EQ(second.sections[i].name, first.sections[i].name);
    EXPECT_EQ(second.sections[i].plugin, first.sections[i].plugin);
    for (const auto& [key, entry] : first.sections[i].options.entries())
      EXPECT_EQ(second.sections[i].options.entries().at(key).value, entry.value) << first.sections[i].name << "." << key;
  }
}

}  // namespace

TEST(RecipeRoundTrip, ResolvedRecipeReadsBack) {
  TempDir d;
  fs::create_directories(d.path + "/data");
  d.write("base.toml", kModel + "[optimizer]\nlr = 0.1\nweight_decay = 0.05\n[lr_schedule]\nplugin = \"cosine\"\nmin_lr = 1e-7\n");
  std::string p = d.write("r.toml", "include = \"base.toml\"\n" + kData +
                                        "[run]\nname = \"a \\\"quoted\\\" \\\\ name\\twith\\ttabs\"\nsteps = 3\n"
                                        "[parallel]\npipeline = 2\ndata = \"auto\"\nworld = 4\n"
                                        "[batch]\nmicro = 3\nglobal = \"auto\"\n"
                                        "[log]\nsinks = [\"console\", \"fixture-sink\"]\n[log.fixture-sink]\nscale = 0.3\n"
                                        "[plugins]\npaths = [\"data\"]\n");
  expect_round_trip(d, p);
  expect_round_trip(d, p, {"optimizer.plugin=sgd", "optimizer.lr=0.30000000000000004", "run.seed=0",
                           "tokenizer.plugin=fixture-tok", "tokenizer.specials=[\"a\\\\b\", \"q\"]",
                           "run.name=line\nbreak \x01 ctrl"});
  d.write("text.toml", kModel + "[data]\nplugin = \"text\"\nfiles = [\"data/a.txt\", \"../b.txt\"]\n");
  expect_round_trip(d, d.path + "/text.toml");
}

// Whatever bytes a --set value carries, the resolved recipe must read back
// (or the value must be refused up front with a one-line message).
TEST(RecipeRoundTrip, NonUtf8OverrideValue) {
  TempDir d;
  std::string p = d.write("r.toml", kMinimal);
  std::vector<std::string> overrides = {"run.name=caf\xe9"};
  try {
    load(p, overrides);
  } catch (const weft::Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    return;  // refused: fine
  }
  expect_round_trip(d, p, overrides);
}

// recipe_option answers what load_recipe would accept, for a tool (weft
// import) that must write only keys this build takes.
TEST(RecipeOption, KnowsCoreAndPluginKeysAndNothingElse) {
  const weft::Registry& r = registry();
  const weft::OptionSpec* tensor = weft::recipe_option(r, "parallel", "", "tensor");
  ASSERT_NE(tensor, nullptr);
  EXPECT_EQ(tensor->type, weft::OptType::Int);
  EXPECT_NE(weft::recipe_option(r, "model", "", "layers"), nullptr);            // default plugin gpt
  // A Hugging Face folder to start from (a path), in both model plugins; llama's SwiGLU experts.
  for (const char* model : {"gpt", "llama"}) {
    const weft::OptionSpec* init_from = weft::recipe_option(r, "model", model, "init_from");
    ASSERT_NE(init_from, nullptr) << model;
    EXPECT_TRUE(init_from->is_path) << model;
    for (const char* key : {"moe_experts", "moe_top_k", "moe_every", "moe_capacity_factor", "moe_aux_loss_coef",
                            "moe_z_loss_coef"})
      EXPECT_NE(weft::recipe_option(r, "model", model, key), nullptr) << model << " " << key;
  }
  EXPECT_NE(weft::recipe_option(r, "lr_schedule", "cosine", "min_lr"), nullptr);
  EXPECT_NE(weft::recipe_option(r, "parallel.data_parallel", "zero1", "bucket_mb"), nullptr);
  EXPECT_EQ(weft::recipe_option(r, "model", "", "no_such_key"), nullptr);
  EXPECT_EQ(weft::recipe_option(r, "optimizer", "sgd", "beta2"), nullptr);    // adamw's, not sgd's
  EXPECT_EQ(weft::recipe_option(r, "data", "", "paths"), nullptr);            // data has no default plugin
  EXPECT_NE(weft::recipe_option(r, "data", "megatron", "paths"), nullptr);
  EXPECT_EQ(weft::recipe_option(r, "precision", "no-such-plugin", "x"), nullptr);
  EXPECT_EQ(weft::recipe_option(r, "no_section", "", "x"), nullptr);
  EXPECT_EQ(weft::section_family("data"), "dataset");
  EXPECT_EQ(weft::section_family("parallel.pipeline_schedule"), "pipeline_schedule");
  EXPECT_EQ(weft::section_family("run"), "");
}
