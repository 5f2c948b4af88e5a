// Checkpoints (docs/checkpoints.md): run.out_dir/checkpoints/step_N/
// with model.safetensors (params by logical name, global shape),
// optimizer.safetensors ("<param>.slot<k>"), meta.json and the resolved
// recipe.toml. Written into a temporary folder and renamed; `latest` moves
// after every rank finished.
#pragma once

#include <cstdint>
#include <string>

#include "weft/comm.hpp"
#include "weft/grad_sync.hpp"
#include "weft/recipe.hpp"

namespace weft {

struct CheckpointMeta {
  int64_t step = 0;
  int64_t samples_consumed = 0;  // data position: samples of the seeded order used so far
  uint64_t seed = 0;
};

// Every rank calls it (optimizer state sharded over dp and tensors sharded
// over tp are gathered collectively: tensors are saved whole, by logical
// name); only the `writer` writes files. `tp` may be null for one rank. The
// caller holds a barrier before `publish_latest`. Returns the step folder.
std::string write_checkpoint(const std::string& out_dir, const CheckpointMeta& meta, const Recipe& recipe,
                             FlatParams& flat, DataParallel* dp, int state_slots, Backend& backend, bool writer,
                             Communicator* tp = nullptr);
// Points checkpoints/latest at step_N and removes the oldest beyond `keep` (0 = keep all).
void publish_latest(const std::string& out_dir, int64_t step, int64_t keep);

// A step folder, a checkpoints/ folder or a run's out_dir -> the step folder
// (the latest one for the last two). Throws weft::Error naming the path.
std::string resolve_checkpoint_dir(const std::string& path);

// Loads params (and optimizer state when dp is given) by logical name, each
// rank taking its shard of the logical tensor, so any layout loads any other.
// Logical shapes must match, except a padded vocabulary (Param::vocab_rows):
// the common rows load, rows the file lacks start at 0.
CheckpointMeta read_checkpoint(const std::string& step_dir, FlatParams& flat, DataParallel* dp, int state_slots,
                               Backend& backend);

}  // namespace weft
