// Byte-level tokenizer: ids 0..255 are the bytes of the text, 256 is the
// end-of-text token (written "<|endoftext|>" in text).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "weft/tokenizer.hpp"

namespace weft {

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kEot = 256;
  static constexpr int64_t kVocab = 257;
  static constexpr const char* kEotText = "<|endoftext|>";

  // Every byte maps to its value; the literal "<|endoftext|>" maps to kEot.
  std::vector<int32_t> encode(const std::string& text) const override;
  // Inverse of encode; an id outside [0, 257) throws weft::Error.
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return kVocab; }
  int32_t eot() const override { return kEot; }
};

}  // namespace weft
