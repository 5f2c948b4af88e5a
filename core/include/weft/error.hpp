// Errors: user/recipe/data problems throw weft::Error (the CLI prints its one-line
// message and exits 2); broken internal invariants use WEFT_ASSERT (exit 1).
#pragma once

#include <stdexcept>
#include <string>

namespace weft {

// A refusal of user input. what() is one line that names the place
// (recipe file:line:col, plugin file, data file offset) and the problem.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// An internal invariant broke: a bug in weft or a plugin, not bad input.
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& message) : std::logic_error(message) {}
};

[[noreturn]] void assertion_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace weft

#define WEFT_ASSERT(cond, msg)                                         \
  do {                                                                 \
    if (!(cond)) ::weft::assertion_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
