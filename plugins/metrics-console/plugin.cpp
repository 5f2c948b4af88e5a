#include "console_sink.hpp"

static void register_console(weft::Registry& r) {
  r.add<weft::MetricsSink>("console",
                           {weft::opt_float("spike_factor", 3.0,
                                            "warn when the loss exceeds this factor x the mean of the last 20 logged "
                                            "losses; 0 = never", 0.0)},
                           "progress line per logged step (loss, lr, grad norm, throughput, MFU, memory, ETA) on rank 0; "
                           "warnings for NaN losses and loss spikes",
                           [](const weft::Options& o, const weft::MetricsEnv& env) -> std::unique_ptr<weft::MetricsSink> {
                             return std::make_unique<weft::ConsoleSink>(env, o.get_float("spike_factor"));
                           });
}

WEFT_PLUGIN("metrics_sink", "console", "0.1.0", register_console)
