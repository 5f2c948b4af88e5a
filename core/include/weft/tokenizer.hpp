// Tokenizer (family tokenizer: byte, gpt2-bpe, hf).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/options.hpp"
#include "weft/plugin.hpp"

namespace weft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t eot() const = 0;  // end-of-text token between documents
};

template <>
struct FamilyTraits<Tokenizer> {
  static constexpr const char* kName = "tokenizer";
  using Factory = std::function<std::unique_ptr<Tokenizer>(const Options&)>;
};

}  // namespace weft
