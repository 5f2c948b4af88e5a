// Registers the pipeline schedules "gpipe", "1f1b" and "interleaved".
#include "schedules.hpp"
#include "weft/plugin.hpp"

namespace {

using weft::Options;
using weft::ParallelEnv;
using weft::PipelineSchedule;

void register_schedules(weft::Registry& registry) {
  registry.add<PipelineSchedule>(
      "gpipe", {weft::pp::layers_per_stage_option()},
      "GPipe: every microbatch's forward, then every backward (all microbatches' activations in flight)",
      [](const Options& o, const ParallelEnv&) -> std::unique_ptr<PipelineSchedule> {
        return std::make_unique<weft::pp::GPipe>(o.get_ints("layers_per_stage"));
      });
  registry.add<PipelineSchedule>(
      "1f1b", {weft::pp::layers_per_stage_option()},
      "1F1B (PipeDream-flush): warm-up forwards, one forward and one backward in turn, cool-down backwards",
      [](const Options& o, const ParallelEnv&) -> std::unique_ptr<PipelineSchedule> {
        return std::make_unique<weft::pp::OneFOneB>(o.get_ints("layers_per_stage"));
      });
  registry.add<PipelineSchedule>(
      "interleaved",
      {weft::pp::layers_per_stage_option(),
       weft::opt_int("virtual_stages", 2, "model chunks per stage (Megatron's virtual pipeline size)", 1, 64)},
      "interleaved 1F1B over virtual_stages model chunks per stage (Megatron); microbatches a multiple of pipeline",
      [](const Options& o, const ParallelEnv&) -> std::unique_ptr<PipelineSchedule> {
        return std::make_unique<weft::pp::Interleaved>(o.get_ints("layers_per_stage"),
                                                       static_cast<int>(o.get_int("virtual_stages")));
      });
}

}  // namespace

WEFT_PLUGIN("pipeline_schedule", "1f1b", "0.2.0", register_schedules)
