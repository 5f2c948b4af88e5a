// Stop requests from signals: SIGTERM and SIGUSR1 are what Slurm (and most
// schedulers) send before a time limit or a preemption. The first one asks
// every rank to finish the current step, write a checkpoint and exit 0; a
// second one ends the process at once. Installed by the `weft train` command
// for the recipe's `run.stop_signals`, never by library code on its own.
#pragma once

#include <string>
#include <vector>

namespace weft {

class StopSignals {
 public:
  // Throws weft::Error for a name other than SIGTERM, SIGUSR1, SIGUSR2, SIGINT.
  explicit StopSignals(const std::vector<std::string>& names);
  ~StopSignals();  // restores the previous handlers
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The first signal received since construction (0 = none).
  int received() const;
  static std::string name(int signo);

 private:
  std::vector<int> signals_;
};

}  // namespace weft
