#include <algorithm>

#include "schedules.hpp"

namespace weft::pp {

OptionSpec layers_per_stage_option() {
  return opt_ints("layers_per_stage", {},
                  "transformer blocks of each stage, one entry per stage ([] = an even split; the first "
                  "stages take one more when it does not divide)");
}

namespace {

PipelineOp forward(int mb, int chunk = 0) { return {OpKind::Forward, mb, chunk}; }
PipelineOp backward(int mb, int chunk = 0) { return {OpKind::Backward, mb, chunk}; }

}  // namespace

std::vector<PipelineOp> GPipe::ops(int /*stage*/, int /*stages*/, int microbatches) const {
  std::vector<PipelineOp> out;
  for (int mb = 0; mb < microbatches; ++mb) out.push_back(forward(mb));
  for (int mb = 0; mb < microbatches; ++mb) out.push_back(backward(mb));
  return out;
}

int GPipe::in_flight(int, int, int microbatches) const { return microbatches; }

std::vector<PipelineOp> OneFOneB::ops(int stage, int stages, int microbatches) const {
  const int warmup = std::min(stages - stage - 1, microbatches);
  std::vector<PipelineOp> out;
  for (int mb = 0; mb < warmup; ++mb) out.push_back(forward(mb));
  for (int i = 0; i + warmup < microbatches; ++i) {
    out.push_back(forward(warmup + i));
    out.push_back(backward(i));
  }
  for (int mb = microbatches - warmup; mb < microbatches; ++mb) out.push_back(backward(mb));
  return out;
}

int OneFOneB::in_flight(int stage, int stages, int microbatches) const {
  return std::min(stages - stage, microbatches);
}

// Megatron's order: forward op k runs chunk (k / S) % v of microbatch
// (k / (S v)) S + k % S, so S microbatches pass through a chunk before the
// next chunk starts; backward op k the same microbatch in chunk v - 1 - (k / S) % v.
std::vector<PipelineOp> Interleaved::ops(int stage, int stages, int microbatches) const {
  const int v = virtual_stages_, total = microbatches * v;
  if (microbatches % stages != 0)
    throw PlanError{"virtual_stages", "the interleaved schedule runs microbatches in groups of pipeline " +
                                          std::to_string(stages) + ": " + std::to_string(microbatches) +
                                          " microbatches per step (global / (micro x data)) is not a multiple of it"};
  auto chunk_of = [&](int k, bool fwd) { return fwd ? (k / stages) % v : v - 1 - (k / stages) % v; };
  auto mb_of = [&](int k) { return (k / (stages * v)) * stages + k % stages; };
  const int warmup = microbatches == stages ? total : std::min(total, (stages - stage - 1) * 2 + (v - 1) * stages);
  std::vector<PipelineOp> out;
  for (int k = 0; k < warmup; ++k) out.push_back(forward(mb_of(k), chunk_of(k, true)));
  for (int k = 0; k + warmup < total; ++k) {
    out.push_back(forward(mb_of(warmup + k), chunk_of(warmup + k, true)));
    out.push_back(backward(mb_of(k), chunk_of(k, false)));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(backward(mb_of(k), chunk_of(k, false)));
  return out;
}

int Interleaved::in_flight(int stage, int stages, int microbatches) const {
  const int v = virtual_stages_, total = microbatches * v;
  const int warmup = microbatches == stages ? total : std::min(total, (stages - stage - 1) * 2 + (v - 1) * stages);
  return std::min(microbatches, (warmup + 1 + v - 1) / v);  // microbatch-chunks alive, as whole microbatches
}

}  // namespace weft::pp
