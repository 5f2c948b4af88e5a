#include "console_sink.hpp"

static void register_console(weft::Registry& r) {
  r.add<weft::MetricsSink>("console", {}, "progress line per logged step (loss, lr, grad norm, throughput, ETA) on rank 0",
                           [](const weft::Options&, const weft::MetricsEnv& env) -> std::unique_ptr<weft::MetricsSink> {
                             return std::make_unique<weft::ConsoleSink>(env);
                           });
}

WEFT_PLUGIN("metrics_sink", "console", "0.1.0", register_console)
