// Tokenizer "gpt2": GPT-2's byte-level BPE from Megatron's two files,
// vocab_file (encoder.json: token -> id) and merge_file (vocab.bpe: one
// merge "a b" per line, in rank order, after a "#version" line). Text is
// encoded as written: "<|endoftext|>" in a document is ordinary text, as in
// GPT-2's and Megatron's encoders; documents are joined with the id.
#pragma once

#include <memory>
#include <string>

#include "byte_bpe.hpp"
#include "weft/options.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

class Gpt2Tokenizer final : public Tokenizer {
 public:
  static OptionSchema schema();
  // Throws weft::Error naming the file and the place of a fault.
  Gpt2Tokenizer(const std::string& vocab_file, const std::string& merge_file);

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eot() const override { return eot_; }

 private:
  std::unique_ptr<bpe::Model> model_;
  std::unique_ptr<bpe::Splitter> splitter_;
  int64_t vocab_size_ = 0;
  int32_t eot_ = 0;
};

// Reads an encoder.json / vocab-like JSON object of token -> id; `path` names the file in errors.
std::unordered_map<std::string, int32_t> read_vocab_json(const std::string& path);
// Reads vocab.bpe: merges in rank order.
std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path);

}  // namespace weft
