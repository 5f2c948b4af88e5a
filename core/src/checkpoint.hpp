// Checkpoints (docs/checkpoints.md): run.out_dir/checkpoints/step_N/
// with model.safetensors (params by logical name, global shape),
// optimizer.safetensors ("<param>.slot<k>"), meta.json and the resolved
// recipe.toml. Written into a temporary folder and renamed; `latest` moves
// after every rank finished.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "weft/grad_sync.hpp"
#include "weft/recipe.hpp"

namespace weft {

struct CheckpointMeta {
  int64_t step = 0;
  int64_t samples_consumed = 0;  // data position: samples of the seeded order used so far
  uint64_t seed = 0;
};

// Every rank calls it (sharded optimizer state is gathered collectively); only
// the `writer` writes files. The caller holds a barrier before `publish_latest`.
// Returns the step folder.
std::string write_checkpoint(const std::string& out_dir, const CheckpointMeta& meta, const Recipe& recipe,
                             FlatParams& flat, DataParallel* dp, int state_slots, Backend& backend, bool writer);
// Points checkpoints/latest at step_N and removes the oldest beyond `keep` (0 = keep all).
// Only folders named exactly step_N count; anything else is left alone.
void publish_latest(const std::string& out_dir, int64_t step, int64_t keep);

// N for a folder name that is exactly "step_N" (decimal, no sign, no leading zero); nullopt otherwise.
std::optional<int64_t> parse_step_name(const std::string& name);
// The steps of the step_N folders in `root` (a checkpoints folder), ascending.
std::vector<int64_t> list_step_dirs(const std::string& root);

// A step folder, a checkpoints/ folder or a run's out_dir -> the step folder
// (the latest one for the last two). Throws weft::Error naming the path.
std::string resolve_checkpoint_dir(const std::string& path);

// Reads and validates step_dir/meta.json; throws weft::Error naming the file and the key.
CheckpointMeta read_checkpoint_meta(const std::string& step_dir);

// Loads params (and optimizer state when dp is given) by logical name; shapes must match.
CheckpointMeta read_checkpoint(const std::string& step_dir, FlatParams& flat, DataParallel* dp, int state_slots,
                               Backend& backend);

}  // namespace weft
