#include "byte_tokenizer.hpp"

static void register_byte(weft::Registry& r) {
  r.add<weft::Tokenizer>("byte", {}, "bytes 0..255 plus end-of-text 256 (vocab 257)",
                         [](const weft::Options&) -> std::unique_ptr<weft::Tokenizer> {
                           return std::make_unique<weft::ByteTokenizer>();
                         });
}

WEFT_PLUGIN("tokenizer", "byte", "0.1.0", register_byte)
