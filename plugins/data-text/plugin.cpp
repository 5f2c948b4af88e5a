#include "text_dataset.hpp"

static void register_text(weft::Registry& r) {
  r.add<weft::Dataset>("text", weft::TextDataset::schema(),
                       "plain-text files, tokenized and cut into seq_length+1 token samples, shuffled per epoch",
                       [](const weft::Options& options, const weft::DatasetEnv& env) -> std::unique_ptr<weft::Dataset> {
                         return std::make_unique<weft::TextDataset>(options, env);
                       });
}

WEFT_PLUGIN("dataset", "text", "0.1.0", register_text)
