#include "synthetic_dataset.hpp"

static void register_synthetic(weft::Registry& r) {
  r.add<weft::Dataset>("synthetic", weft::SyntheticDataset::schema(),
                       "uniform random tokens from Philox keyed by (seed, sample index)",
                       [](const weft::Options& options, const weft::DatasetEnv& env) -> std::unique_ptr<weft::Dataset> {
                         return std::make_unique<weft::SyntheticDataset>(options, env);
                       });
}

WEFT_PLUGIN("dataset", "synthetic", "0.1.0", register_synthetic)
