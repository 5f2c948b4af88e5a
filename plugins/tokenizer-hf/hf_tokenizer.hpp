// Tokenizer "hf": a Hugging Face tokenizer.json with a byte-level BPE model
// (GPT-2, Llama 3, Qwen2/2.5/3 and the like): added tokens are cut out of
// the text first (with their lstrip, rstrip and single_word flags) and map
// to their ids, the rest is NFC-normalised when the
// file asks for it (utf8proc), split by the file's regex (PCRE2) and
// encoded by byte-level BPE. Other model types and pipeline parts are
// refused, naming the JSON path of the part.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "byte_bpe.hpp"
#include "weft/options.hpp"
#include "weft/tokenizer.hpp"

namespace weft {

class HfTokenizer final : public Tokenizer {
 public:
  static OptionSchema schema();
  // eot: the end-of-text token's text; "" picks the first present of
  // <|endoftext|>, <|end_of_text|>, </s>, <eos>.
  explicit HfTokenizer(const std::string& path, const std::string& eot = "");

  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int32_t eot() const override { return eot_; }

 private:
  struct Added {
    std::string content;
    int32_t id;
    bool lstrip = false;       // the match takes the whitespace before it
    bool rstrip = false;       // and after it
    bool single_word = false;  // matches only where no word character touches it
  };
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;

  std::string path_;
  std::unique_ptr<bpe::Model> model_;
  std::unique_ptr<bpe::Splitter> splitter_;  // null: the whole text is one piece
  bool nfc_ = false;
  bool prefix_space_ = false;
  std::vector<Added> added_;                           // longest content first
  std::vector<std::pair<int32_t, std::string>> added_by_id_;  // for decoding, sorted by id
  int64_t vocab_size_ = 0;
  int32_t eot_ = 0;
};

}  // namespace weft
