#include "byte_tokenizer.hpp"

#include <cstring>

#include "weft/error.hpp"

namespace weft {

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
  const size_t marker_len = std::strlen(kEotText);
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '<' && text.compare(i, marker_len, kEotText) == 0) {
      ids.push_back(kEot);
      i += marker_len;
      continue;
    }
    ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(text[i])));
    ++i;
  }
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id == kEot) {
      text += kEotText;
    } else if (id >= 0 && id < 256) {
      text += static_cast<char>(static_cast<unsigned char>(id));
    } else {
      throw Error("byte tokenizer: token id " + std::to_string(id) + " at position " +
                  std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(kVocab) + ")");
    }
  }
  return text;
}

}  // namespace weft
