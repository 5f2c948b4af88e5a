// Hostile inputs and data loss (docs/reliability.md): only exact step_N
// folders count as checkpoints, corrupt safetensors and meta.json are
// refused naming the tensor or key, FIFOs and devices are refused without
// blocking, a run's folder is never mixed with another run's, and an
// abandoned branch is moved aside, not deleted.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>

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

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const weft::Error& e) {
    return e.what();
  }
  return "";
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
