#include "logging.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <unistd.h>

#include <cstdlib>

#include "runtime.hpp"
#include "weft/error.hpp"

namespace weft {

namespace {

// Colour only on a terminal of our own: under mpirun/srun stdout is often a
// pseudo-terminal even when the job's output goes to a file. NO_COLOR turns it off.
spdlog::color_mode colour_mode() {
  const char* no_color = std::getenv("NO_COLOR");
  bool colour = isatty(STDOUT_FILENO) && launcher_world_from_env() == 0 && !(no_color && *no_color);
  return colour ? spdlog::color_mode::always : spdlog::color_mode::never;
}

}  // namespace

void setup_logging(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw Error("--log-level: unknown level '" + level + "' (trace, debug, info, warn, error, off)");
  auto sink = std::make_shared<spdlog::sinks::stdout_color_sink_mt>(colour_mode());
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("weft", sink));
  spdlog::set_level(lvl);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
}

std::shared_ptr<spdlog::logger> rank_logger(int rank, int world) {
  // A sink of its own: a pattern is stored in the sinks, and ranks as threads
  // must not relabel each other's lines. Console sinks share one mutex, so
  // lines do not interleave.
  auto sink = std::make_shared<spdlog::sinks::stdout_color_sink_mt>(colour_mode());
  auto logger = std::make_shared<spdlog::logger>("rank" + std::to_string(rank), sink);
  logger->set_level(spdlog::get_level());
  if (world > 1)
    logger->set_pattern("[%H:%M:%S] %^%l%$ [rank " + std::to_string(rank) + "] %v");
  else
    logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  return logger;
}

}  // namespace weft
