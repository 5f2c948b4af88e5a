#include "weft/error.hpp"

namespace weft {

void assertion_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(std::string("internal error: ") + expr + " failed at " + file + ":" +
                      std::to_string(line) + (msg.empty() ? "" : ": " + msg));
}

}  // namespace weft
