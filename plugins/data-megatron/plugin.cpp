#include "megatron_dataset.hpp"

static void register_megatron(weft::Registry& r) {
  r.add<weft::Dataset>("megatron", weft::megatron::MegatronDataset::schema(),
                       "Megatron-LM indexed datasets (PREFIX.bin/.idx), GPT samples, blends and splits",
                       [](const weft::Options& options, const weft::DatasetEnv& env) -> std::unique_ptr<weft::Dataset> {
                         return std::make_unique<weft::megatron::MegatronDataset>(options, env);
                       });
}

WEFT_PLUGIN("dataset", "megatron", "0.1.0", register_megatron)
