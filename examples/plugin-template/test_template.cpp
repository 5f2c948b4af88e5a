// Loads the built plugin as weft does (the SDK's loader) and checks what it
// registers: the model's parameters and the sink's file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "weft/loader.hpp"
#include "weft/metrics.hpp"
#include "weft/model.hpp"

namespace {

const weft::FactoryRecord& record(const weft::Registry& registry, const std::string& family, const std::string& name) {
  const weft::FactoryRecord* r = registry.find(family, name);
  if (!r) throw std::runtime_error(family + "/" + name + " is not registered");
  return *r;
}

TEST(TemplatePlugin, RegistersAModelAndASink) {
  weft::Registry registry;
  weft::LoadedPlugin loaded = weft::load_plugin_file(registry, TEMPLATE_PLUGIN);
  EXPECT_EQ(loaded.family, "model");
  EXPECT_EQ(loaded.name, "template-gpt");

  // The model: embedding, 2 blocks, head; parameters by logical name.
  const weft::FactoryRecord& model_record = record(registry, "model", "template-gpt");
  weft::ModelEnv env;
  env.vocab_size = 257;
  auto model = registry.factory<weft::Model>("template-gpt")(
      weft::options_with_defaults(model_record.schema, "model", {{"hidden", int64_t{32}}}), env);
  EXPECT_EQ(model->layers().size(), 4u);
  auto params = model->params();
  ASSERT_FALSE(params.empty());
  EXPECT_EQ(params.front()->name, "wte.weight");
  EXPECT_EQ(params.front()->full_shape, (weft::Shape{320, 32}));  // 257 padded to a multiple of 64
  EXPECT_EQ(params.back()->name, "lnf.bias");
  EXPECT_EQ(model->summary().hidden, 32);

  // The sink: a header and one row per record.
  std::filesystem::path dir = std::filesystem::temp_directory_path() / "weft-template-test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const weft::FactoryRecord& sink_record = record(registry, "metrics_sink", "template-csv");
  {
    auto sink = registry.factory<weft::MetricsSink>("template-csv")(
        weft::options_with_defaults(sink_record.schema, "log.template-csv"), weft::MetricsEnv{dir.string(), 0, 1});
    weft::MetricsRecord r;
    r.step = 3;
    r.values = {{"loss", 2.5}, {"lr", 0.001}};
    sink->write(r);
    sink->flush();
  }
  std::ifstream in(dir / "metrics.csv");
  std::string header, row;
  std::getline(in, header);
  std::getline(in, row);
  EXPECT_EQ(header, "step,loss,lr");
  EXPECT_EQ(row, "3,2.5,0.001");
  std::filesystem::remove_all(dir);
}

}  // namespace
