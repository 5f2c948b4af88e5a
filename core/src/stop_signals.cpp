#include "stop_signals.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <map>

#include "weft/error.hpp"

namespace weft {

namespace {

// A signal handler can only reach the program through a static: this one
// holds the first signal received (0 = none).
std::atomic<int> first_signal{0};
std::map<int, struct sigaction> previous;

void on_signal(int signo) {
  int none = 0;
  if (!first_signal.compare_exchange_strong(none, signo)) _exit(128 + signo);  // the second one: at once
}

const std::map<std::string, int>& known() {
  static const std::map<std::string, int> k = {
      {"SIGTERM", SIGTERM}, {"SIGUSR1", SIGUSR1}, {"SIGUSR2", SIGUSR2}, {"SIGINT", SIGINT}};
  return k;
}

}  // namespace

StopSignals::StopSignals(const std::vector<std::string>& names) {
  for (const std::string& n : names) {
    auto it = known().find(n);
    if (it == known().end())
      throw Error("run.stop_signals: '" + n + "' is not one of SIGTERM, SIGUSR1, SIGUSR2, SIGINT");
    signals_.push_back(it->second);
  }
  first_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : signals_) sigaction(s, &sa, &previous[s]);
}

StopSignals::~StopSignals() {
  for (int s : signals_) sigaction(s, &previous[s], nullptr);
}

int StopSignals::received() const { return first_signal.load(); }

std::string StopSignals::name(int signo) {
  for (const auto& [n, s] : known())
    if (s == signo) return n;
  return "signal " + std::to_string(signo);
}

}  // namespace weft
