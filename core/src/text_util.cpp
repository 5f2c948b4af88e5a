#include "text_util.hpp"

#include <algorithm>

namespace weft {

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? sep : "") + parts[i];
  return out;
}

// Optimal string alignment distance: insertions, deletions, substitutions and
// swaps of two neighbouring letters each cost one ("gtp" is one edit from "gpt").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

namespace {

// The closest candidate to `word` within a small edit distance, or "".
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

}  // namespace

// Whole-word matches first; then the parts of a snake_case word, so the
// names other tools use ("num_layers", "hidden_size", "n_head") find ours.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best = closest(word, candidates);
  if (!best.empty()) return best;
  size_t begin = 0;
  while (begin <= word.size()) {
    size_t end = word.find('_', begin);
    if (end == std::string::npos) end = word.size();
    std::string part = word.substr(begin, end - begin);
    if (part.size() >= 3 && part.size() < word.size()) {
      best = closest(part, candidates);
      if (!best.empty()) return best;
    }
    begin = end + 1;
  }
  return "";
}

}  // namespace weft
