#include "hf_tokenizer.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "weft/error.hpp"
#include "weft/file.hpp"

namespace weft {

namespace {

using Json = nlohmann::json;
constexpr uint64_t kMaxFileBytes = uint64_t(1) << 30;

// Throws "<file>: <path>: <message>" so a fault names where in the JSON it is.
struct Where {
  const std::string& file;
  [[noreturn]] void fail(const std::string& path, const std::string& message) const {
    throw Error(file + ": " + path + ": " + message);
  }
  const Json& member(const Json& object, const std::string& path, const char* key) const {
    if (!object.is_object()) fail(path, "expected an object");
    auto it = object.find(key);
    if (it == object.end()) fail(path, std::string("missing \"") + key + "\"");
    return *it;
  }
  std::string string_at(const Json& v, const std::string& path) const {
    if (!v.is_string()) fail(path, "expected a string");
    return v.get<std::string>();
  }
  bool bool_or(const Json& object, const std::string& path, const char* key, bool def) const {
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return def;
    if (!it->is_boolean()) fail(path + "." + key, "expected true or false");
    return it->get<bool>();
  }
  int32_t id_at(const Json& v, const std::string& path) const {
    // Ids index a table of vocab_size entries: 2^24 bounds it far above any real vocabulary
    // (found by the fuzz suite: an id near 2^31 allocated gigabytes).
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t(1) << 24))
      fail(path, "expected a token id (an integer in [0, 2^24))");
    return v.get<int32_t>();
  }
};

std::string quoted(const std::string& key) { return "[" + Json(key).dump() + "]"; }

// NFC of valid UTF-8; text that is not valid UTF-8 is left as it is.
std::string nfc(std::string_view text) {
  bool ascii = true;
  for (unsigned char c : text) ascii = ascii && c < 0x80;
  if (ascii) return std::string(text);  // NFC leaves ASCII alone
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return std::string(text);
  std::string s(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return s;
}

// The patterns of a Split pre-tokenizer: {"Regex": "..."} or a literal {"String": "..."}.
std::string split_pattern(const Json& split, const std::string& path, const Where& w) {
  const Json& pattern = w.member(split, path, "pattern");
  if (pattern.contains("Regex")) return w.string_at(pattern["Regex"], path + ".pattern.Regex");
  if (pattern.contains("String")) return "\\Q" + w.string_at(pattern["String"], path + ".pattern.String") + "\\E";
  w.fail(path + ".pattern", "expected {\"Regex\": ...} or {\"String\": ...}");
}

// The code point that starts at byte i (-1: not valid UTF-8 there), and its length in *n.
utf8proc_int32_t code_point_at(std::string_view s, size_t i, size_t* n) {
  utf8proc_int32_t c = -1;
  const utf8proc_ssize_t k = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                              static_cast<utf8proc_ssize_t>(s.size() - i), &c);
  *n = k > 0 ? static_cast<size_t>(k) : 1;
  return k > 0 ? c : -1;
}

// The start of the code point that ends at byte i (i > 0).
size_t code_point_before(std::string_view s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && i - j < 4 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
  size_t n = 0;
  return code_point_at(s, j, &n) >= 0 && j + n == i ? j : i - 1;
}

// Unicode's White_Space: the separators Zs, Zl, Zp, the controls \t..\r and NEL.
bool is_space(utf8proc_int32_t c) {
  if (c < 0) return false;
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  const utf8proc_category_t g = utf8proc_category(c);
  return g == UTF8PROC_CATEGORY_ZS || g == UTF8PROC_CATEGORY_ZL || g == UTF8PROC_CATEGORY_ZP;
}

// A word character as Hugging Face's single_word test reads \w: letters, marks,
// decimal and letter numbers, connector punctuation, the two joiners.
bool is_word(utf8proc_int32_t c) {
  if (c < 0) return false;
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

bool word_before(std::string_view s, size_t i) {
  if (i == 0) return false;
  size_t n = 0;
  return is_word(code_point_at(s, code_point_before(s, i), &n));
}

bool word_after(std::string_view s, size_t i) {
  size_t n = 0;
  return i < s.size() && is_word(code_point_at(s, i, &n));
}

// The start of the whitespace run that ends at byte i.
size_t space_run_start(std::string_view s, size_t i) {
  size_t n = 0;
  while (i > 0) {
    const size_t j = code_point_before(s, i);
    if (!is_space(code_point_at(s, j, &n))) break;
    i = j;
  }
  return i;
}

// The end of the whitespace run that starts at byte i.
size_t space_run_end(std::string_view s, size_t i) {
  size_t n = 0;
  while (i < s.size() && is_space(code_point_at(s, i, &n))) i += n;
  return i;
}

}  // namespace

OptionSchema HfTokenizer::schema() {
  return {
      required(opt_path("file", "", "a Hugging Face tokenizer.json (byte-level BPE: GPT-2, Llama 3, Qwen2)")),
      opt_string("eot", "", "the end-of-text token between documents; \"\" = the first present of "
                            "<|endoftext|>, <|end_of_text|>, </s>, <eos>"),
  };
}

HfTokenizer::HfTokenizer(const std::string& path, const std::string& eot) : path_(path) {
  const std::string text = read_input_file(path, kMaxFileBytes);
  Json doc;
  try {
    doc = Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw Error(path + ": not JSON (byte " + std::to_string(e.byte) + ")");
  } catch (const Json::exception&) {  // a number past the range of double (1e999)
    throw Error(path + ": not JSON (a number out of range)");
  }
  const Where w{path_};
  if (!doc.is_object()) w.fail("$", "expected an object");

  // The model: byte-level BPE only.
  const Json& model = w.member(doc, "$", "model");
  const std::string type = model.contains("type") ? w.string_at(model["type"], "$.model.type") : "BPE";
  if (type != "BPE")
    w.fail("$.model.type", "model type \"" + type + "\" is not supported (weft reads byte-level BPE)");
  if (w.bool_or(model, "$.model", "byte_fallback", false))
    w.fail("$.model.byte_fallback", "byte-fallback BPE (SentencePiece style) is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null() && model[key] != "")
      w.fail(std::string("$.model.") + key, "is not supported (byte-level BPE has none)");
  const Json& vocab_json = w.member(model, "$.model", "vocab");
  if (!vocab_json.is_object()) w.fail("$.model.vocab", "expected an object of token -> id");
  std::unordered_map<std::string, int32_t> vocab;
  int64_t top = -1;
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    vocab.emplace(it.key(), w.id_at(it.value(), "$.model.vocab" + quoted(it.key())));
    top = std::max<int64_t>(top, it.value().get<int64_t>());
  }
  const Json& merges_json = w.member(model, "$.model", "merges");
  if (!merges_json.is_array()) w.fail("$.model.merges", "expected an array");
  std::vector<std::pair<std::string, std::string>> merges;
  for (size_t k = 0; k < merges_json.size(); ++k) {
    const Json& m = merges_json[k];
    const std::string at = "$.model.merges[" + std::to_string(k) + "]";
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        w.fail(at, "expected \"a b\" (two tokens and one space)");
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2) {
      merges.emplace_back(w.string_at(m[0], at + "[0]"), w.string_at(m[1], at + "[1]"));
    } else {
      w.fail(at, "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  model_ = std::make_unique<bpe::Model>(std::move(vocab), merges, path + ": $.model.merges",
                                        w.bool_or(model, "$.model", "ignore_merges", false));

  // Normalizer: none, NFC, or a sequence of those.
  if (doc.contains("normalizer") && !doc["normalizer"].is_null()) {
    std::vector<std::pair<const Json*, std::string>> parts{{&doc["normalizer"], "$.normalizer"}};
    if (doc["normalizer"].value("type", "") == "Sequence") {
      parts.clear();
      const Json& list = w.member(doc["normalizer"], "$.normalizer", "normalizers");
      for (size_t k = 0; k < list.size(); ++k) parts.push_back({&list[k], "$.normalizer.normalizers[" + std::to_string(k) + "]"});
    }
    for (const auto& [n, at] : parts) {
      const std::string t = w.string_at(w.member(*n, at, "type"), at + ".type");
      if (t != "NFC") w.fail(at + ".type", "normalizer \"" + t + "\" is not supported (weft applies NFC)");
      nfc_ = true;
    }
  }

  // Pre-tokenizer: ByteLevel (GPT-2's regex), or Split(regex) followed by ByteLevel(use_regex = false).
  std::vector<std::string> patterns;
  if (doc.contains("pre_tokenizer") && !doc["pre_tokenizer"].is_null()) {
    std::vector<std::pair<const Json*, std::string>> parts{{&doc["pre_tokenizer"], "$.pre_tokenizer"}};
    if (doc["pre_tokenizer"].value("type", "") == "Sequence") {
      parts.clear();
      const Json& list = w.member(doc["pre_tokenizer"], "$.pre_tokenizer", "pretokenizers");
      for (size_t k = 0; k < list.size(); ++k)
        parts.push_back({&list[k], "$.pre_tokenizer.pretokenizers[" + std::to_string(k) + "]"});
    }
    for (const auto& [p, at] : parts) {
      const std::string t = w.string_at(w.member(*p, at, "type"), at + ".type");
      if (t == "ByteLevel") {
        prefix_space_ = w.bool_or(*p, at, "add_prefix_space", false);
        if (w.bool_or(*p, at, "use_regex", true)) patterns.push_back(bpe::kGpt2Pattern);
      } else if (t == "Split") {
        const std::string behavior = p->value("behavior", "Isolated");
        if (behavior != "Isolated") w.fail(at + ".behavior", "Split behaviour \"" + behavior + "\" is not supported (weft reads Isolated)");
        if (w.bool_or(*p, at, "invert", false)) w.fail(at + ".invert", "an inverted Split is not supported");
        patterns.push_back(split_pattern(*p, at, w));
      } else {
        w.fail(at + ".type", "pre-tokenizer \"" + t + "\" is not supported (weft reads ByteLevel and Split)");
      }
    }
  }
  if (patterns.size() > 1) w.fail("$.pre_tokenizer", "more than one regex split is not supported");
  if (!patterns.empty()) splitter_ = std::make_unique<bpe::Splitter>(patterns[0], path + ": $.pre_tokenizer");

  // Added tokens: cut out of the text before anything else.
  vocab_size_ = top + 1;
  if (doc.contains("added_tokens") && !doc["added_tokens"].is_null()) {
    const Json& list = doc["added_tokens"];
    if (!list.is_array()) w.fail("$.added_tokens", "expected an array");
    for (size_t k = 0; k < list.size(); ++k) {
      const std::string at = "$.added_tokens[" + std::to_string(k) + "]";
      Added a{w.string_at(w.member(list[k], at, "content"), at + ".content"), w.id_at(w.member(list[k], at, "id"), at + ".id"),
              w.bool_or(list[k], at, "lstrip", false), w.bool_or(list[k], at, "rstrip", false),
              w.bool_or(list[k], at, "single_word", false)};
      if (a.content.empty()) w.fail(at + ".content", "an added token cannot be empty");
      vocab_size_ = std::max<int64_t>(vocab_size_, int64_t(a.id) + 1);
      added_by_id_.emplace_back(a.id, a.content);
      added_.push_back(std::move(a));
    }
  }
  std::stable_sort(added_.begin(), added_.end(),
                   [](const Added& a, const Added& b) { return a.content.size() > b.content.size(); });
  std::sort(added_by_id_.begin(), added_by_id_.end());

  // The end-of-text token.
  const std::vector<std::string> candidates =
      eot.empty() ? std::vector<std::string>{"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}
                  : std::vector<std::string>{eot};
  for (const std::string& c : candidates) {
    for (const Added& a : added_)
      if (a.content == c) {
        eot_ = a.id;
        return;
      }
    auto it = model_->vocab().find(c);
    if (it != model_->vocab().end()) {
      eot_ = it->second;
      return;
    }
  }
  throw Error(path + ": no end-of-text token (" + (eot.empty() ? "tried <|endoftext|>, <|end_of_text|>, </s>, <eos>"
                                                               : "'" + eot + "'") +
              "); name one with tokenizer.eot");
}

void HfTokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string s = nfc_ ? nfc(text) : std::string(text);
  if (prefix_space_ && s.front() != ' ') s.insert(s.begin(), ' ');
  if (!splitter_) return model_->encode_piece(s, out);
  std::vector<std::string_view> pieces;
  splitter_->split(s, pieces);
  for (std::string_view piece : pieces) model_->encode_piece(piece, out);
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  // The next occurrence of each added token (npos: none left), refreshed as the scan passes it.
  std::vector<size_t> next(added_.size());
  for (size_t k = 0; k < added_.size(); ++k) next[k] = text.find(added_[k].content);
  size_t at = 0;    // the start of the text not yet encoded
  size_t scan = 0;  // where the search for the next added token goes on
  while (true) {
    size_t best = std::string::npos, which = 0;
    for (size_t k = 0; k < added_.size(); ++k) {
      if (next[k] != std::string::npos && next[k] < scan) next[k] = text.find(added_[k].content, scan);
      if (next[k] < best) {  // ties keep the longer token: added_ is sorted longest first
        best = next[k];
        which = k;
      }
    }
    if (best == std::string::npos) break;
    const Added& a = added_[which];
    size_t start = best, stop = best + a.content.size();
    // As Hugging Face's matcher: a refused single-word match is passed over
    // whole (the search goes on after it) and stays ordinary text.
    scan = stop;
    if (a.single_word && (word_before(text, start) || word_after(text, stop))) continue;
    if (a.lstrip) start = std::max(at, space_run_start(text, start));  // not into the previous token
    if (a.rstrip) stop = space_run_end(text, stop);
    encode_plain(std::string_view(text).substr(at, start - at), ids);
    ids.push_back(a.id);
    at = scan = stop;
  }
  encode_plain(std::string_view(text).substr(at), ids);
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = std::lower_bound(added_by_id_.begin(), added_by_id_.end(), std::make_pair(ids[i], std::string()));
    if (it != added_by_id_.end() && it->first == ids[i]) {
      text += it->second;
    } else if (!model_->token_bytes(ids[i], text)) {
      throw Error("hf tokenizer (" + path_ + "): token id " + std::to_string(ids[i]) + " at position " +
                  std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
    }
  }
  return text;
}

}  // namespace weft
