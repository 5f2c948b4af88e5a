// A run's output folder across starts and restarts (docs/reliability.md):
// which checkpoint a run continues from, refusing to mix a fresh run into a
// folder that holds another one, and moving an abandoned branch aside.
#pragma once

#include <cstdint>
#include <string>

namespace weft {

enum class ResumeMode {
  Off,      // a fresh run
  IfAny,    // --resume, checkpoint.resume = true: from scratch when there is no checkpoint yet
  Require,  // --resume=require: refuse when there is none
};

// The step folder a run continues from, or "" to start from scratch. `from`
// is --resume's DIR ("" = the run's own out_dir); an explicit DIR elsewhere
// must hold a checkpoint. Throws weft::Error naming the path.
std::string find_resume_checkpoint(const std::string& out_dir, const std::string& from, ResumeMode mode);

// Throws weft::Error when a fresh run would mix into out_dir: it holds
// checkpoints or metrics of an earlier run, or is not a folder.
void refuse_used_out_dir(const std::string& out_dir);

// Creates out_dir (weft::Error when it is a file or cannot be created); with
// `overwrite`, removes an earlier run's checkpoints/ and metrics.jsonl first.
void prepare_out_dir(const std::string& out_dir, bool overwrite);

// The run continues after `step`: out_dir's checkpoints of later steps move
// into checkpoints/abandoned_after_step_<step>[_k]/ together with the
// metrics.jsonl records after `step`, and `latest` names the newest remaining
// checkpoint. Returns one line saying what moved or was dropped ("" = nothing).
std::string start_branch(const std::string& out_dir, int64_t step);

// The line a resume of a run that already reached run.steps prints.
std::string finished_message(const std::string& checkpoint, int64_t step, int64_t steps);

}  // namespace weft
