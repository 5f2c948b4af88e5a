// Metrics sink "tensorboard": every scalar of a metrics record (the fields of
// metrics.jsonl) as a TensorBoard scalar at the record's step, in
// <out_dir>/tensorboard/events.out.tfevents.<seconds>.<host>.<pid> (rank 0).
// A resumed run appends without duplicated steps: a run that starts at step
// S first rewrites the folder's earlier event files into its own file,
// keeping only the events before S (those after are the abandoned branch
// that metrics.jsonl also drops).
#pragma once

#include <cstdio>
#include <string>

#include "weft/metrics.hpp"

namespace weft {

class TensorboardSink final : public MetricsSink {
 public:
  explicit TensorboardSink(const MetricsEnv& env);
  ~TensorboardSink() override;
  void write(const MetricsRecord& record) override;
  void flush() override;

 private:
  void append(const std::string& event);
  void carry_over_earlier_files(int64_t first_step);

  std::string dir_, path_;
  std::FILE* file_ = nullptr;
};

}  // namespace weft
