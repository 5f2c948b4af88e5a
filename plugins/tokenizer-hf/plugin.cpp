#include "hf_tokenizer.hpp"

static void register_hf(weft::Registry& r) {
  r.add<weft::Tokenizer>("hf", weft::HfTokenizer::schema(),
                         "a Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, Llama 3, Qwen2)",
                         [](const weft::Options& options) -> std::unique_ptr<weft::Tokenizer> {
                           return std::make_unique<weft::HfTokenizer>(options.get_string("file"),
                                                                      options.get_string("eot"));
                         });
}

WEFT_PLUGIN("tokenizer", "hf", "0.1.0", register_hf)
