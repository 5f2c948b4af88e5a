#include "jsonl_sink.hpp"

static void register_jsonl(weft::Registry& r) {
  r.add<weft::MetricsSink>("jsonl", {}, "appends one JSON object per logged step to <out_dir>/metrics.jsonl (rank 0)",
                           [](const weft::Options&, const weft::MetricsEnv& env) -> std::unique_ptr<weft::MetricsSink> {
                             return std::make_unique<weft::JsonlSink>(env);
                           });
}

WEFT_PLUGIN("metrics_sink", "jsonl", "0.1.0", register_jsonl)
