#include "tensorboard_sink.hpp"

static void register_tensorboard(weft::Registry& r) {
  r.add<weft::MetricsSink>("tensorboard", {},
                           "every metrics.jsonl scalar as TensorBoard event files in <out_dir>/tensorboard (rank 0)",
                           [](const weft::Options&, const weft::MetricsEnv& env) -> std::unique_ptr<weft::MetricsSink> {
                             return std::make_unique<weft::TensorboardSink>(env);
                           });
}

WEFT_PLUGIN("metrics_sink", "tensorboard", "0.1.0", register_tensorboard)
