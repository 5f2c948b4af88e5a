#include "gpt2_tokenizer.hpp"

#include <nlohmann/json.hpp>

#include "weft/error.hpp"
#include "weft/file.hpp"

namespace weft {

namespace {

constexpr uint64_t kMaxFileBytes = uint64_t(1) << 30;  // vocabularies are megabytes; more is not one

}  // namespace

std::unordered_map<std::string, int32_t> read_vocab_json(const std::string& path) {
  const std::string text = read_input_file(path, kMaxFileBytes);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(path + ": not JSON (byte " + std::to_string(e.byte) + ")");
  } catch (const nlohmann::json::exception&) {  // a number past the range of double (1e999)
    throw Error(path + ": not JSON (a number out of range)");
  }
  if (!doc.is_object()) throw Error(path + ": expected a JSON object of token -> id at $");
  std::unordered_map<std::string, int32_t> vocab;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    const auto& v = it.value();
    // Ids index a table of vocab_size entries: 2^24 bounds it far above any real vocabulary.
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t(1) << 24))
      throw Error(path + ": " + nlohmann::json(it.key()).dump() + " at $[" + nlohmann::json(it.key()).dump() +
                  "]: expected a token id (an integer in [0, 2^24))");
    vocab.emplace(it.key(), v.get<int32_t>());
  }
  return vocab;
}

std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path) {
  const std::string text = read_input_file(path, kMaxFileBytes);
  std::vector<std::pair<std::string, std::string>> merges;
  size_t at = 0;
  int64_t line_no = 0;
  while (at < text.size()) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(at, nl - at);
    at = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 >= line.size() ||
        line.find(' ', space + 1) != std::string::npos)
      throw Error(path + ":" + std::to_string(line_no) + ": expected a merge of two tokens \"a b\"");
    merges.emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return merges;
}

OptionSchema Gpt2Tokenizer::schema() {
  return {
      required(opt_path("vocab_file", "", "GPT-2's encoder.json (token -> id), as Megatron's --vocab-file")),
      required(opt_path("merge_file", "", "GPT-2's vocab.bpe (merges in rank order), as Megatron's --merge-file")),
  };
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& vocab_file, const std::string& merge_file) {
  auto vocab = read_vocab_json(vocab_file);
  auto it = vocab.find("<|endoftext|>");
  if (it == vocab.end()) throw Error(vocab_file + ": no \"<|endoftext|>\" token (the end-of-text id)");
  eot_ = it->second;
  model_ = std::make_unique<bpe::Model>(std::move(vocab), read_merges(merge_file), merge_file);
  vocab_size_ = model_->max_id() + 1;
  splitter_ = std::make_unique<bpe::Splitter>(bpe::kGpt2Pattern, "gpt2 pre-tokenizer");
}

std::vector<int32_t> Gpt2Tokenizer::encode(const std::string& text) const {
  std::vector<std::string_view> pieces;
  splitter_->split(text, pieces);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  for (std::string_view piece : pieces) model_->encode_piece(piece, ids);
  return ids;
}

std::string Gpt2Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  for (size_t i = 0; i < ids.size(); ++i)
    if (!model_->token_bytes(ids[i], text))
      throw Error("gpt2 tokenizer: token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                  " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
  return text;
}

}  // namespace weft
