#include "logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "weft/error.hpp"

namespace weft {

void setup_logging(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw Error("--log-level: unknown level '" + level + "' (trace, debug, info, warn, error, off)");
  spdlog::set_level(lvl);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
}

std::shared_ptr<spdlog::logger> rank_logger(int rank, int world) {
  // A sink of its own: a pattern is stored in the sinks, and ranks as threads
  // must not relabel each other's lines. Console sinks share one mutex, so
  // lines do not interleave.
  auto sink = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("rank" + std::to_string(rank), sink);
  logger->set_level(spdlog::get_level());
  if (world > 1)
    logger->set_pattern("[%H:%M:%S] %^%l%$ [rank " + std::to_string(rank) + "] %v");
  else
    logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  return logger;
}

}  // namespace weft
