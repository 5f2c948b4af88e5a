// Plugin loader (core/src/loader.cpp) and Registry (core/src/registry.cpp)
// against real fixture .so files built in tests/fixtures/ (one folder per case).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "weft/loader.hpp"
#include "weft/backend.hpp"
#include "weft/error.hpp"
#include "weft/metrics.hpp"
#include "weft/plugin.hpp"
#include "weft/tokenizer.hpp"

namespace fs = std::filesystem;

namespace {

const std::string kFixtures = std::string(WEFT_BUILD_ROOT) + "/tests/fixtures";

std::string fixture_dir(const std::string& name) { return kFixtures + "/" + name; }
std::string fixture(const std::string& name) {
  if (name == "not-elf") return fixture_dir(name) + "/not-a-library.so";
  return fixture_dir(name) + "/libfixture-" + name + ".so";
}
const std::string kCpuPlugin = std::string(WEFT_BUILD_ROOT) + "/plugins/backend-cpu/libweft-backend-cpu.so";

// The message of the weft::Error that `fn` throws; fails the test when it throws nothing.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const weft::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a weft::Error";
  return "";
}

std::string load_error(const std::string& path) {
  weft::Registry registry;
  return error_of([&] { weft::load_plugin_file(registry, path); });
}

// Options of `record`'s schema: the defaults, with `set` replacing some.
weft::Options options_for(const weft::FactoryRecord& record, const std::map<std::string, weft::OptValue>& set = {}) {
  std::map<std::string, weft::Options::Entry> entries;
  for (const auto& spec : record.schema) entries[spec.key] = {spec.default_value, {}};
  for (const auto& [key, value] : set) {
    EXPECT_TRUE(entries.count(key)) << key;
    entries[key] = {value, {"test.toml", 3, 5}};
  }
  return weft::Options(record.name, entries);
}

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "weft-loader-XXXXXX").string();
    path = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const weft::FactoryRecord& record_of(const weft::Registry& registry, const std::string& family, const std::string& name) {
  const weft::FactoryRecord* r = registry.find(family, name);
  EXPECT_NE(r, nullptr) << family << "/" << name;
  return *r;
}

}  // namespace

// ---- every refusal names the file and the specific cause -------------------------------

TEST(LoaderRefusal, NotElf) {
  EXPECT_EQ(load_error(fixture("not-elf")), fixture("not-elf") + ": not a shared library (no ELF header)");
}

TEST(LoaderRefusal, EmptyFileNamedSo) {
  TempDir tmp;
  std::string path = tmp.path + "/empty.so";
  std::ofstream(path).close();
  EXPECT_EQ(load_error(path), path + ": not a shared library (no ELF header)");
}

TEST(LoaderRefusal, MissingFileAndDirectory) {
  TempDir tmp;
  EXPECT_EQ(load_error(tmp.path + "/nothing.so"), tmp.path + "/nothing.so: not a regular file");
  fs::create_directory(tmp.path + "/dir.so");
  EXPECT_EQ(load_error(tmp.path + "/dir.so"), tmp.path + "/dir.so: not a regular file");
}

TEST(LoaderRefusal, MissingEntryPoint) {
  EXPECT_EQ(load_error(fixture("no-entry")),
            fixture("no-entry") + ": missing entry point 'weft_plugin_info' (not a weft plugin; use WEFT_PLUGIN)");
}

TEST(LoaderRefusal, WrongAbiVersion) {
  std::string expected = fixture("bad-abi") + ": ABI version " + std::to_string(weft::kAbiVersion + 1) +
                         ", this weft expects " + std::to_string(weft::kAbiVersion) +
                         " (rebuild the plugin against this SDK)";
  EXPECT_EQ(load_error(fixture("bad-abi")), expected);
}

TEST(LoaderRefusal, UnresolvedSymbol) {
  EXPECT_EQ(load_error(fixture("unresolved")), fixture("unresolved") + ": unresolved symbol: weft_fixture_missing_symbol");
}

TEST(LoaderRefusal, RegisterThrowsLeavesRegistryUntouched) {
  weft::Registry registry;
  std::string msg = error_of([&] { weft::load_plugin_file(registry, fixture("throws")); });
  EXPECT_EQ(msg, fixture("throws") + ": registration failed: fixture refuses to register (needs /dev/fixture)");
  // The factory added before the throw must not leak into the registry.
  EXPECT_TRUE(registry.records().empty());
  EXPECT_EQ(registry.find("tokenizer", "fixture-throws"), nullptr);
}

// Whatever the register function throws, the file is refused with its path;
// nothing escapes the loader (an escaping non-std exception ends `weft`).
TEST(LoaderRefusal, RegisterThrowsSomethingElse) {
  weft::Registry registry;
  std::string msg;
  try {
    weft::load_plugin_file(registry, fixture("throws-other"));
    ADD_FAILURE() << "loaded a plugin whose register function throws";
  } catch (const weft::Error& e) {
    msg = e.what();
  } catch (...) {
    ADD_FAILURE() << "a non-weft::Error escaped load_plugin_file";
  }
  EXPECT_TRUE(msg.rfind(fixture("throws-other") + ": registration failed", 0) == 0) << msg;
  EXPECT_TRUE(registry.records().empty());

  weft::PluginScan scan;
  try {
    weft::load_plugin_dirs(registry, {fixture_dir("throws-other"), fixture_dir("good")}, scan);
  } catch (...) {
    ADD_FAILURE() << "load_plugin_dirs let an exception escape";
  }
  ASSERT_EQ(scan.refused.size(), 1u);
  EXPECT_EQ(scan.refused[0].path, fixture("throws-other"));
  EXPECT_EQ(scan.loaded.size(), 1u);
}

TEST(LoaderRefusal, DuplicateOfCoreRegisteredName) {
  weft::Registry registry;
  registry.add<weft::Backend>("cpu", {}, "core-registered cpu",
                              [](const weft::Options&, const weft::BackendEnv&) -> std::unique_ptr<weft::Backend> {
                                return nullptr;
                              });
  std::string msg = error_of([&] { weft::load_plugin_file(registry, fixture("duplicate")); });
  EXPECT_EQ(msg, fixture("duplicate") + ": duplicate plugin name backend/cpu (already provided by the core)");
  // All or nothing: the fresh name of the same file is not registered either.
  EXPECT_EQ(registry.records().size(), 1u);
  EXPECT_EQ(registry.find("tokenizer", "fixture-dup-extra"), nullptr);
  EXPECT_EQ(registry.find("backend", "cpu")->doc, "core-registered cpu");
}

TEST(LoaderRefusal, DuplicateOfBuiltInPlugin) {
  if (!fs::exists(kCpuPlugin)) GTEST_SKIP() << "backend-cpu is not built: " << kCpuPlugin;
  weft::Registry registry;
  weft::load_plugin_file(registry, kCpuPlugin);
  std::string msg = error_of([&] { weft::load_plugin_file(registry, fixture("duplicate")); });
  EXPECT_EQ(msg, fixture("duplicate") + ": duplicate plugin name backend/cpu (already provided by " + kCpuPlugin + ")");
  EXPECT_EQ(registry.find("backend", "cpu")->plugin_file, kCpuPlugin);
}

TEST(LoaderRefusal, RelativePathIsNamedAsGiven) {
  std::string rel = fs::relative(fixture("not-elf"), fs::current_path()).string();
  ASSERT_FALSE(rel.empty());
  EXPECT_EQ(load_error(rel), rel + ": not a shared library (no ELF header)");
}

TEST(LoaderRefusal, MessagesAreOneLine) {
  for (const char* c : {"not-elf", "no-entry", "bad-abi", "unresolved", "throws"}) {
    std::string msg = load_error(fixture(c));
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(fixture(c) + ": ", 0), 0u) << msg;
  }
}

// ---- the two-family plugin ----------------------------------------------------------------

TEST(LoaderGood, RegistersBothFamiliesWithPluginFile) {
  weft::Registry registry;
  weft::LoadedPlugin loaded = weft::load_plugin_file(registry, fixture("good"));
  EXPECT_EQ(loaded.path, fixture("good"));
  EXPECT_EQ(loaded.family, "tokenizer");
  EXPECT_EQ(loaded.name, "fixture-two");
  EXPECT_EQ(loaded.version, "9.8.7");
  EXPECT_EQ(loaded.fingerprint, WEFT_BUILD_FINGERPRINT);

  ASSERT_EQ(registry.records().size(), 2u);
  const weft::FactoryRecord& tok = record_of(registry, "tokenizer", "fixture-tok");
  const weft::FactoryRecord& sink = record_of(registry, "metrics_sink", "fixture-sink");
  for (const weft::FactoryRecord* r : {&tok, &sink}) {
    EXPECT_EQ(r->plugin_file, fixture("good"));
    EXPECT_EQ(r->plugin_version, "9.8.7");
    EXPECT_NE(r->library, nullptr);
    EXPECT_NE(r->factory, nullptr);
  }
  EXPECT_EQ(tok.doc, "fixture tokenizer: shifted bytes");
  ASSERT_EQ(tok.schema.size(), 5u);
  EXPECT_EQ(tok.schema[0].key, "offset");
  EXPECT_EQ(tok.schema[0].type, weft::OptType::Int);
  EXPECT_EQ(*tok.schema[0].min, 0.0);
  EXPECT_EQ(*tok.schema[0].max, 1000.0);
  EXPECT_EQ(tok.schema[1].choices, (std::vector<std::string>{"keep", "lower", "upper"}));
  EXPECT_EQ(tok.schema[4].type, weft::OptType::StringList);

  EXPECT_EQ(registry.list("tokenizer").size(), 1u);
  EXPECT_EQ(registry.list("metrics_sink").size(), 1u);
  EXPECT_EQ(registry.list().size(), 2u);
  EXPECT_TRUE(registry.list("backend").empty());
}

TEST(LoaderGood, TokenizerFactoryWorks) {
  weft::Registry registry;
  weft::load_plugin_file(registry, fixture("good"));
  const weft::FactoryRecord& rec = record_of(registry, "tokenizer", "fixture-tok");

  auto plain = registry.factory<weft::Tokenizer>("fixture-tok")(options_for(rec));
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(plain->vocab_size(), 257);
  EXPECT_EQ(plain->eot(), 256);
  EXPECT_EQ(plain->encode("Ab"), (std::vector<int32_t>{65, 98}));
  EXPECT_EQ(plain->decode({65, 98, 256}), "Ab<eot>");

  auto shifted = registry.factory<weft::Tokenizer>("fixture-tok")(options_for(
      rec, {{"offset", int64_t{10}},
            {"case", std::string("upper")},
            {"reverse", true},
            {"specials", std::vector<std::string>{"<e>", "<pad>"}}}));
  EXPECT_EQ(shifted->vocab_size(), 10 + 256 + 2);
  EXPECT_EQ(shifted->eot(), 266);
  EXPECT_EQ(shifted->encode("Ab"), (std::vector<int32_t>{10 + 'B', 10 + 'A'}));
  EXPECT_EQ(shifted->decode(shifted->encode("xy")), "XY");
  EXPECT_EQ(shifted->decode({267, 10 + 'z'}), "z<pad>");

  // The plugin validates through Options::fail: the message names the option.
  std::string msg = error_of([&] {
    registry.factory<weft::Tokenizer>("fixture-tok")(options_for(rec, {{"specials", std::vector<std::string>{}}}));
  });
  EXPECT_EQ(msg, "test.toml:3:5: fixture-tok.specials: needs at least one entry (end-of-text)");
}

TEST(LoaderGood, MetricsSinkFactoryWorks) {
  weft::Registry registry;
  weft::load_plugin_file(registry, fixture("good"));
  const weft::FactoryRecord& rec = record_of(registry, "metrics_sink", "fixture-sink");
  TempDir tmp;
  weft::MetricsEnv env;
  env.out_dir = tmp.path;
  auto sink = registry.factory<weft::MetricsSink>("fixture-sink")(
      options_for(rec, {{"fields", std::vector<std::string>{"loss", "lr"}}, {"digits", int64_t{3}}}), env);
  ASSERT_NE(sink, nullptr);
  weft::MetricsRecord record;
  record.step = 7;
  record.values = {{"loss", 2.34567}, {"lr", 0.000123456}, {"grad_norm", 1.0}};
  sink->write(record);
  sink->flush();
  EXPECT_EQ(read_file(tmp.path + "/fixture-metrics.txt"), "step=7 loss=2.35 lr=0.000123\n");

  // Another rank writes nothing unless all_ranks is set.
  env.rank = 1;
  auto quiet = registry.factory<weft::MetricsSink>("fixture-sink")(options_for(rec, {{"file", std::string("r1.txt")}}), env);
  quiet->write(record);
  quiet->flush();
  EXPECT_FALSE(fs::exists(tmp.path + "/r1.txt"));
}

TEST(LoaderGood, ObjectsOutliveTheRegistry) {
  std::unique_ptr<weft::Tokenizer> tok;
  {
    weft::Registry registry;
    weft::load_plugin_file(registry, fixture("good"));
    tok = registry.factory<weft::Tokenizer>("fixture-tok")(options_for(record_of(registry, "tokenizer", "fixture-tok")));
  }
  EXPECT_EQ(tok->decode(tok->encode("still mapped")), "still mapped");
}

TEST(LoaderGood, SecondLoadIntoSameRegistryIsDuplicate) {
  weft::Registry registry;
  weft::load_plugin_file(registry, fixture("good"));
  std::string msg = error_of([&] { weft::load_plugin_file(registry, fixture("good")); });
  EXPECT_EQ(msg, fixture("good") + ": duplicate plugin name tokenizer/fixture-tok (already provided by " +
                     fixture("good") + ")");
  EXPECT_EQ(registry.records().size(), 2u);
}

// ---- Registry lookups -----------------------------------------------------------------------

TEST(Registry, UnknownNameHasDidYouMeanAndList) {
  weft::Registry registry;
  weft::load_plugin_file(registry, fixture("good"));
  std::string msg = error_of([&] { registry.factory<weft::Tokenizer>("fixture-tk"); });
  EXPECT_EQ(msg, "no tokenizer plugin named 'fixture-tk' (did you mean 'fixture-tok'?); available: fixture-tok");
  msg = error_of([&] { registry.factory<weft::Backend>("cpu"); });
  EXPECT_EQ(msg, "no backend plugin named 'cpu'; none is installed");
}

TEST(Registry, UnknownFamilyAndDuplicateAreRefused) {
  weft::Registry registry;
  weft::FactoryRecord r;
  r.family = "toaster";
  r.name = "x";
  EXPECT_EQ(error_of([&] { registry.add_record(r); }), "unknown plugin family 'toaster' for 'x'");
  registry.add<weft::Tokenizer>("t", {}, "", [](const weft::Options&) -> std::unique_ptr<weft::Tokenizer> {
    return nullptr;
  });
  EXPECT_EQ(error_of([&] {
              registry.add<weft::Tokenizer>("t", {}, "", [](const weft::Options&) -> std::unique_ptr<weft::Tokenizer> {
                return nullptr;
              });
            }),
            "duplicate plugin name tokenizer/t (already provided by the core)");
  EXPECT_EQ(weft::plugin_families().size(), 13u);
}

// ---- folders ----------------------------------------------------------------------------------

TEST(LoadPluginDirs, CollectsRefusalsWithoutThrowing) {
  weft::Registry registry;
  weft::PluginScan scan;
  std::vector<std::string> dirs;
  for (const char* c : {"good", "bad-abi", "no-entry", "unresolved", "throws", "duplicate", "not-elf"})
    dirs.push_back(fixture_dir(c));
  dirs.push_back(fixture_dir("no-such-folder"));
  ASSERT_NO_THROW(weft::load_plugin_dirs(registry, dirs, scan));

  // With no backend/cpu in this registry the duplicate fixture clashes with nothing: it loads.
  ASSERT_EQ(scan.loaded.size(), 2u);
  EXPECT_EQ(scan.loaded[0].path, fixture("good"));
  EXPECT_EQ(scan.loaded[0].name, "fixture-two");
  EXPECT_EQ(scan.loaded[1].path, fixture("duplicate"));

  std::map<std::string, std::string> causes;
  for (const auto& r : scan.refused) causes[r.path] = r.cause;
  // A folder that does not exist is reported, not ignored (a mistyped WEFT_PLUGIN_PATH entry).
  EXPECT_EQ(scan.refused.size(), 6u);
  EXPECT_EQ(causes[fixture_dir("no-such-folder")], "plugin folder not found");
  EXPECT_EQ(causes[fixture("bad-abi")], "ABI version " + std::to_string(weft::kAbiVersion + 1) + ", this weft expects " +
                                           std::to_string(weft::kAbiVersion) + " (rebuild the plugin against this SDK)");
  EXPECT_EQ(causes[fixture("no-entry")], "missing entry point 'weft_plugin_info' (not a weft plugin; use WEFT_PLUGIN)");
  EXPECT_EQ(causes[fixture("unresolved")], "unresolved symbol: weft_fixture_missing_symbol");
  EXPECT_EQ(causes[fixture("throws")], "registration failed: fixture refuses to register (needs /dev/fixture)");
  EXPECT_EQ(causes[fixture("not-elf")], "not a shared library (no ELF header)");
  for (const auto& r : scan.refused) EXPECT_EQ(r.str(), r.path + ": " + r.cause);
}

TEST(LoadPluginDirs, RefusalListsExactlyTheBadFiles) {
  // The duplicate fixture only clashes when a backend/cpu is already there.
  weft::Registry registry;
  registry.add<weft::Backend>("cpu", {}, "", [](const weft::Options&, const weft::BackendEnv&) -> std::unique_ptr<weft::Backend> {
    return nullptr;
  });
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, {fixture_dir("duplicate"), fixture_dir("good")}, scan);
  ASSERT_EQ(scan.refused.size(), 1u);
  EXPECT_EQ(scan.refused[0].str(),
            fixture("duplicate") + ": duplicate plugin name backend/cpu (already provided by the core)");
  ASSERT_EQ(scan.loaded.size(), 1u);
  EXPECT_NE(registry.find("metrics_sink", "fixture-sink"), nullptr);
}

TEST(LoadPluginDirs, SkipsFilesAlreadyLoadedOrRefused) {
  weft::Registry registry;
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, {fixture_dir("good"), fixture_dir("not-elf")}, scan);
  ASSERT_EQ(scan.loaded.size(), 1u);
  ASSERT_EQ(scan.refused.size(), 1u);

  // Same folders again, plus a folder with a symlink to the loaded file: nothing new, no duplicate refusal.
  TempDir tmp;
  fs::create_symlink(fixture("good"), tmp.path + "/link-to-good.so");
  fs::create_directory(tmp.path + "/folder.so");                     // a folder named *.so is no candidate
  std::ofstream(tmp.path + "/readme.txt") << "not a candidate\n";  // nor is a file without .so
  weft::load_plugin_dirs(registry, {fixture_dir("good"), fixture_dir("not-elf"), tmp.path, tmp.path + "/"}, scan);
  EXPECT_EQ(scan.loaded.size(), 1u);
  EXPECT_EQ(scan.refused.size(), 1u);
  EXPECT_EQ(registry.records().size(), 2u);

  // A copy at another path is a different file: it loads and clashes by name.
  fs::copy_file(fixture("good"), tmp.path + "/copy-of-good.so");
  weft::load_plugin_dirs(registry, {tmp.path}, scan);
  ASSERT_EQ(scan.refused.size(), 2u);
  EXPECT_EQ(scan.refused[1].str(), tmp.path + "/copy-of-good.so: duplicate plugin name tokenizer/fixture-tok "
                                              "(already provided by " + fixture("good") + ")");
}

TEST(LoadPluginDirs, FilesOfAFolderLoadInNameOrder) {
  TempDir tmp;
  for (const char* name : {"c.so", "a.so", "b.so"}) std::ofstream(tmp.path + "/" + name) << "text\n";
  weft::Registry registry;
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, {tmp.path}, scan);
  ASSERT_EQ(scan.refused.size(), 3u);
  EXPECT_EQ(scan.refused[0].path, tmp.path + "/a.so");
  EXPECT_EQ(scan.refused[1].path, tmp.path + "/b.so");
  EXPECT_EQ(scan.refused[2].path, tmp.path + "/c.so");
}

// ---- default search path ---------------------------------------------------------------

TEST(DefaultPluginDirs, HonoursWeftPluginPath) {
  const char* old = std::getenv("WEFT_PLUGIN_PATH");
  std::string saved = old ? old : "";
  unsetenv("WEFT_PLUGIN_PATH");
  std::vector<std::string> base = weft::default_plugin_dirs();

  setenv("WEFT_PLUGIN_PATH", "/opt/one:/opt/two::/opt/three:", 1);
  std::vector<std::string> with = weft::default_plugin_dirs();
  ASSERT_EQ(with.size(), base.size() + 3);
  EXPECT_TRUE(std::equal(base.begin(), base.end(), with.begin()));  // the user's folders come last
  EXPECT_EQ(with[base.size()], "/opt/one");
  EXPECT_EQ(with[base.size() + 1], "/opt/two");
  EXPECT_EQ(with[base.size() + 2], "/opt/three");

  setenv("WEFT_PLUGIN_PATH", ":", 1);
  EXPECT_EQ(weft::default_plugin_dirs(), base);
  setenv("WEFT_PLUGIN_PATH", "", 1);
  EXPECT_EQ(weft::default_plugin_dirs(), base);

  // Through the search path, a fixture folder is found and loaded.
  setenv("WEFT_PLUGIN_PATH", fixture_dir("good").c_str(), 1);
  weft::Registry registry;
  weft::PluginScan scan;
  weft::load_plugin_dirs(registry, weft::default_plugin_dirs(), scan);
  EXPECT_NE(registry.find("tokenizer", "fixture-tok"), nullptr);
  EXPECT_NE(registry.find("metrics_sink", "fixture-sink"), nullptr);

  if (old) {
    setenv("WEFT_PLUGIN_PATH", saved.c_str(), 1);
  } else {
    unsetenv("WEFT_PLUGIN_PATH");
  }
}
