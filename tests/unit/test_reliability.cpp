// Hostile inputs and data loss (docs/reliability.md): only exact step_N
// folders count as checkpoints, corrupt safetensors and meta.json are
// refused naming the tensor or key, FIFOs and devices are refused without
// blocking, a run's folder is never mixed with another run's, and an
// abandoned branch is moved aside, not deleted.
#include <gtest/gtest.h>

#include <functional>

#include "weft/error.hpp"
#include "weft/plugin.hpp"
#include "weft/tokenizer.hpp"

namespace {

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
