#include "byte_bpe.hpp"

#include <algorithm>
#include <climits>

#include "weft/error.hpp"

namespace weft::bpe {

namespace {

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Length of the UTF-8 sequence starting with byte c (1 for stray bytes).
size_t utf8_length(unsigned char c) { return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

}  // namespace

ByteAlphabet::ByteAlphabet() {
  // Printable Latin-1 bytes stand for themselves; the others take code points from 256 up, in byte order.
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    to_text[b] = utf8(printable ? static_cast<uint32_t>(b) : next++);
    to_byte[to_text[b]] = static_cast<uint8_t>(b);
  }
}

Splitter::Splitter(const std::string& pattern, const std::string& where) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
  if (!code_) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw Error(where + ": cannot compile the pattern: " + reinterpret_cast<const char*>(message) + " at offset " +
                std::to_string(offset));
  }
  pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is unavailable
}

Splitter::~Splitter() { pcre2_code_free(code_); }

void Splitter::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  pieces.clear();
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create_from_pattern(code_, nullptr), pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t at = 0, kept = 0;  // next search start; end of the text handed out so far
  while (at < text.size()) {
    const int rc = pcre2_match(code_, subject, text.size(), at, 0, match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;  // the rest is kept below
    if (rc < 0) {  // a matching or JIT stack limit: refuse rather than tokenize differently
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      throw Error("pre-tokenizer regex: " + std::string(reinterpret_cast<const char*>(message)) + " at byte " +
                  std::to_string(at) + " of a " + std::to_string(text.size()) + "-byte text");
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.get());
    if (ov[0] > kept) pieces.push_back(text.substr(kept, ov[0] - kept));  // bytes no match took (invalid UTF-8)
    if (ov[1] > ov[0]) pieces.push_back(text.substr(ov[0], ov[1] - ov[0]));
    kept = std::max<size_t>(kept, ov[1]);
    // An empty match moves on by one character, so the loop always ends.
    at = ov[1] > ov[0] ? ov[1] : ov[0] + utf8_length(static_cast<unsigned char>(text[ov[0]]));
  }
  if (kept < text.size()) pieces.push_back(text.substr(kept));
}

Model::Model(std::unordered_map<std::string, int32_t> vocab,
             const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where,
             bool ignore_merges)
    : ignore_merges_(ignore_merges), vocab_(std::move(vocab)) {
  int32_t top = -1;
  for (const auto& [text, id] : vocab_) {
    if (id < 0) throw Error(where + ": token '" + text + "' has negative id " + std::to_string(id));
    top = std::max(top, id);
  }
  id_to_bytes_.assign(static_cast<size_t>(top + 1), std::string());
  has_id_.assign(static_cast<size_t>(top + 1), false);
  for (const auto& [text, id] : vocab_) {
    // A token's text is bytes in the alphabet; one with other characters (a special token) is its own text.
    std::string bytes;
    bool in_alphabet = true;
    for (size_t i = 0; i < text.size() && in_alphabet;) {
      const size_t n = utf8_length(static_cast<unsigned char>(text[i]));
      auto it = alphabet_.to_byte.find(text.substr(i, n));
      if (it == alphabet_.to_byte.end()) in_alphabet = false;
      else bytes += static_cast<char>(it->second);
      i += n;
    }
    id_to_bytes_[static_cast<size_t>(id)] = in_alphabet ? bytes : text;
    has_id_[static_cast<size_t>(id)] = true;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(alphabet_.to_text[b]);
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
  for (size_t r = 0; r < merges.size(); ++r) {
    auto a = vocab_.find(merges[r].first), b = vocab_.find(merges[r].second),
         ab = vocab_.find(merges[r].first + merges[r].second);
    if (a == vocab_.end() || b == vocab_.end() || ab == vocab_.end())
      throw Error(where + ": merge " + std::to_string(r) + " ('" + merges[r].first + "' '" + merges[r].second +
                  "') names a token the vocabulary lacks");
    merges_.emplace(key(a->second, b->second), Merge{static_cast<int32_t>(r), ab->second});  // first rank wins
  }
}

void Model::merge_symbols(std::vector<int32_t>& symbols) const {
  while (symbols.size() > 1) {
    // The lowest-ranked adjacent pair; then every occurrence of it, left to right.
    int32_t best = INT32_MAX, a = -1, b = -1, result = -1;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges_.find(key(symbols[i], symbols[i + 1]));
      if (it != merges_.end() && it->second.rank < best) {
        best = it->second.rank;
        a = symbols[i];
        b = symbols[i + 1];
        result = it->second.result;
      }
    }
    if (result < 0) return;
    size_t out = 0;
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == a && symbols[i + 1] == b) {
        symbols[out++] = result;
        ++i;
      } else {
        symbols[out++] = symbols[i];
      }
    }
    symbols.resize(out);
  }
}

void Model::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  if (ignore_merges_) {
    std::string mapped;
    for (unsigned char c : piece) mapped += alphabet_.to_text[c];
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) symbols.push_back(it->second);
  }
  if (symbols.empty()) {
    for (unsigned char c : piece) {
      // Every byte-level vocabulary has all 256 byte tokens; Model refuses none, so check here.
      if (byte_id_[c] < 0) throw Error("byte-level BPE: the vocabulary has no token for byte " + std::to_string(c));
      symbols.push_back(byte_id_[c]);
    }
    merge_symbols(symbols);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  if (cache_.size() > (1u << 20)) cache_.clear();  // bounded: text of endless new words stays within memory
  if (piece.size() < 256) cache_.emplace(std::string(piece), std::move(symbols));
}

bool Model::token_bytes(int32_t id, std::string& out) const {
  if (id < 0 || static_cast<size_t>(id) >= has_id_.size() || !has_id_[static_cast<size_t>(id)]) return false;
  out += id_to_bytes_[static_cast<size_t>(id)];
  return true;
}

}  // namespace weft::bpe
