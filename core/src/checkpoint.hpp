// Checkpoints (docs/checkpoints.md): run.out_dir/checkpoints/step_N/
// with model.safetensors (params by logical name, global shape),
// optimizer.safetensors ("<param>.slot<k>"), meta.json and the resolved
// recipe.toml. Written into a temporary folder and renamed; `latest` moves
// after every rank finished.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "durable_file.hpp"
#include "weft/comm.hpp"
#include "weft/grad_sync.hpp"
#include "weft/recipe.hpp"

namespace weft {

struct CheckpointMeta {
  int64_t step = 0;
  int64_t samples_consumed = 0;  // data position: samples of the seeded order used so far
  uint64_t seed = 0;
  int64_t global_batch = 0;  // samples per step when saved (0: not recorded, an older checkpoint)
  std::map<std::string, std::string> schedule;  // LrSchedule::settings() when saved (empty: not recorded)
  // The precision's scaler state (fp16: loss scale, trackers, steps skipped),
  // meta.json "precision_state"; empty for fp32 and bf16.
  std::map<std::string, double> precision_state;
};

// How a rank's tensors reach the writer: shards are all-gathered over tp, and
// pipeline stages other than the writer's send theirs over pp. Default: one rank.
struct CheckpointGroups {
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
  int stage = 0;                  // this rank's pipeline stage (= its pp rank)
  bool collects = true;           // in the writer's pp group (tp 0, dp 0): sends to / receives from it
  std::vector<Param*> all_params; // every parameter of the model, logical order; empty = flat.params
  std::vector<int> owner_stage;   // the stage that saves all_params[i]
  // Expert parallelism: an expert's param (Param::ep_owner) first travels over
  // the ep group to ep rank 0 among the ranks at tp 0 of the first
  // expert-data-parallel group (`ep_collects`).
  Communicator* ep = nullptr;
  int ep_rank = 0;
  bool ep_collects = false;
};

// Every rank calls it (optimizer state sharded over dp, tensors sharded over
// tp and the stages' tensors are collected collectively: tensors are saved
// whole, once, by logical name); only the `writer` (global rank 0) writes
// files. The caller holds a barrier before `publish_latest`. Returns the step folder.
// `buffers`: host buffers kept from one save to the next (the writer's; may be null).
std::string write_checkpoint(const std::string& out_dir, const CheckpointMeta& meta, const Recipe& recipe,
                             FlatParams& flat, DataParallel* dp, int state_slots, Backend& backend, bool writer,
                             const CheckpointGroups& groups = {}, std::shared_ptr<AlignedBytesPool> buffers = nullptr);

// The same in two halves, for saves written while training goes on
// (checkpoint.async): every rank calls collect_checkpoint (collective); the
// writer gets a commit function that writes the files from memory, renames
// the folder into place and returns it — safe to run on another thread. Other
// ranks get an empty function. Memory: the writer holds the whole checkpoint
// until commit ends.
std::function<std::string()> collect_checkpoint(const std::string& out_dir, const CheckpointMeta& meta,
                                                const Recipe& recipe, FlatParams& flat, DataParallel* dp,
                                                int state_slots, Backend& backend, bool writer,
                                                const CheckpointGroups& groups, bool buffered,
                                                std::shared_ptr<AlignedBytesPool> buffers = nullptr);
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

// Model tensors are the fp32 (master) weights in every precision mode: read
// through dp->read_master, so a bf16 or fp16 run saves its fp32 masters.
// Loads params (and optimizer state when dp is given) by logical name, each
// rank taking its shard of the logical tensor, so any layout loads any other.
// Logical shapes must match, except a padded vocabulary (Param::vocab_rows):
// the common rows load, rows the file lacks start at 0.
// A logical tensor of `saved` shape (fp32, row-major) as this rank's shard of
// `p`; a padded vocabulary of another size keeps the rows both have (the rest
// 0). Throws weft::Error "<what> has shape [..], the model expects [..]".
std::vector<float> logical_to_shard(const Param& p, const Shape& saved, std::vector<float> full,
                                    const std::string& what);

CheckpointMeta read_checkpoint(const std::string& step_dir, FlatParams& flat, DataParallel* dp, int state_slots,
                               Backend& backend);

}  // namespace weft
