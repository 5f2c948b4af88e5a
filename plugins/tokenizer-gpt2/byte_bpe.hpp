// Byte-level BPE, the scheme of GPT-2 and of Hugging Face tokenizers with a
// ByteLevel pre-tokenizer: text is cut into pieces by a Unicode regex (PCRE2),
// each piece's bytes are written as printable characters (bytes_to_unicode),
// and adjacent symbols merge by rank until no ranked pair is left.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace weft::bpe {

// GPT-2's split pattern.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The printable character (UTF-8) standing for each byte, and back.
struct ByteAlphabet {
  ByteAlphabet();
  std::string to_text[256];
  std::unordered_map<std::string, uint8_t> to_byte;
};

// A compiled Unicode regex; split() cuts text into the matches and the bytes
// between them (invalid UTF-8 never matches but is kept), so the pieces
// always concatenate back to the text.
class Splitter {
 public:
  // Throws weft::Error "<where>: cannot compile the pattern: ... at offset N".
  Splitter(const std::string& pattern, const std::string& where);
  ~Splitter();
  Splitter(const Splitter&) = delete;
  Splitter& operator=(const Splitter&) = delete;
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  pcre2_code* code_ = nullptr;
};

// The vocabulary and merge ranks of one byte-level BPE model.
class Model {
 public:
  // vocab: token text (in the byte alphabet) -> id; merges: pairs in rank order.
  // Throws weft::Error naming `where` and the merge's position when a merge
  // names a token the vocabulary lacks.
  // ignore_merges: a piece that is itself a token is taken whole (Llama 3).
  Model(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
        const std::string& where, bool ignore_merges = false);

  // Appends the ids of one pre-tokenized piece (raw bytes).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  // The bytes of token `id`, or false when no token has that id.
  bool token_bytes(int32_t id, std::string& out) const;
  int64_t max_id() const { return static_cast<int64_t>(id_to_bytes_.size()) - 1; }
  const std::unordered_map<std::string, int32_t>& vocab() const { return vocab_; }
  const ByteAlphabet& alphabet() const { return alphabet_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }
  void merge_symbols(std::vector<int32_t>& symbols) const;

  ByteAlphabet alphabet_;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_id_[256];                  // the id of each single byte's token (-1: none)
  std::vector<std::string> id_to_bytes_;  // raw bytes of each id
  std::vector<bool> has_id_;

  // Pieces seen before: most words repeat, and BPE is the costly part.
  // Looked up by string_view, so a hit allocates nothing.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> cache_;
};

}  // namespace weft::bpe
