// spdlog set-up: one logger per rank, named so each line shows the rank when
// there are several.
#pragma once

#include <memory>
#include <spdlog/spdlog.h>
#include <string>

namespace weft {

// Sets the level and pattern of the default logger; throws weft::Error for an unknown level.
void setup_logging(const std::string& level);

// A logger whose lines start with "[rank R]" when world > 1.
std::shared_ptr<spdlog::logger> rank_logger(int rank, int world);

}  // namespace weft
