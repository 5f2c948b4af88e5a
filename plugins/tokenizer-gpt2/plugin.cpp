#include "gpt2_tokenizer.hpp"

static void register_gpt2(weft::Registry& r) {
  r.add<weft::Tokenizer>("gpt2", weft::Gpt2Tokenizer::schema(),
                         "GPT-2 byte-level BPE from encoder.json and vocab.bpe (Megatron's --vocab-file, --merge-file)",
                         [](const weft::Options& options) -> std::unique_ptr<weft::Tokenizer> {
                           return std::make_unique<weft::Gpt2Tokenizer>(options.get_string("vocab_file"),
                                                                        options.get_string("merge_file"));
                         });
}

WEFT_PLUGIN("tokenizer", "gpt2", "0.1.0", register_gpt2)
