#include "weft/metrics.hpp"

#include <cmath>

namespace weft {

double MetricsRecord::get(const std::string& name) const {
  for (const auto& [key, value] : values)
    if (key == name) return value;
  return std::nan("");
}

}  // namespace weft
