#include "one_f_one_b.hpp"
#include "weft/plugin.hpp"

namespace {

void register_schedules(weft::Registry& registry) {
  registry.add<weft::PipelineSchedule>(
      "1f1b", {}, "one-forward-one-backward pipeline schedule (pipeline = 1 in this build)",
      [](const weft::Options& o, const weft::ParallelEnv& env) -> std::unique_ptr<weft::PipelineSchedule> {
        int pp = env.topology ? env.topology->sizes.pp : 1;
        if (pp != 1)
          o.fail("plugin", "pipeline parallelism across " + std::to_string(pp) +
                               " stages is not available in this build (pipeline = 1 only)");
        return std::make_unique<weft::OneFOneB>();
      });
}

}  // namespace

WEFT_PLUGIN("pipeline_schedule", "1f1b", "0.1.0", register_schedules)
