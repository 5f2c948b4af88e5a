// Small string helpers of the core (not part of the plugin ABI).
#pragma once

#include <string>
#include <vector>

namespace weft {

std::string join(const std::vector<std::string>& parts, const std::string& sep);
size_t edit_distance(const std::string& a, const std::string& b);
// The closest candidate within a small edit distance, or "".
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace weft
