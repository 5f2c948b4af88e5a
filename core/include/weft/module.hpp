// Modules with explicit forward/backward, and the parameters they own.
// Activations are saved per microbatch in a Context, so several microbatches
// can be in flight under pipeline parallelism.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "weft/backend.hpp"
#include "weft/tensor.hpp"

namespace weft {

// Which slice of the logical tensor this rank holds. Dim `dim` is viewed as
// `blocks` equal consecutive blocks (a fused q | k | v weight has 3), each cut
// into `count` parts; this rank holds part `index` of every block, so its
// shard is again q | k | v, each with its own heads.
struct ShardSpec {
  int dim = -1;  // -1: the whole tensor
  int index = 0;
  int count = 1;
  int blocks = 1;
};

enum class InitKind { Normal, Zeros, Ones };

struct Param {
  std::string name;     // logical, e.g. "blocks.3.attn.qkv.weight"
  Shape full_shape;     // logical full shape
  Shape shape;          // this rank's shard
  ShardSpec shard;
  InitKind init = InitKind::Normal;
  float init_std = 0.02f;
  bool weight_decay = true;   // false for biases and norm weights
  bool tp_replicated = true;  // same values on every tp rank (false: a tp shard; see LayerProvider)
  bool expert = false;        // an expert's: split over the ep group, reduced over expert-data-parallel
  int ep_owner = 0;           // for an expert's param: the ep rank that holds it
  // > 0: dim 0 is a padded vocabulary of which the first vocab_rows rows are
  // real; a checkpoint padded differently (another tensor size) still loads.
  int64_t vocab_rows = 0;
  // This rank holds the parameter only because one of its layers reads it
  // while another pipeline stage owns it (the tied embedding on the last
  // stage): its gradient is summed with the owner's, and it is neither counted
  // in the gradient norm nor saved from here.
  bool tied_copy = false;
  Tensor data;  // [shape], view into the flat param buffer
  Tensor grad;  // [shape], view into the flat grad buffer
};

// Per-microbatch state of one forward/backward pass.
class Context {
 public:
  Context(Backend& backend, int microbatch) : backend_(backend), microbatch_(microbatch) {}
  Backend& backend() { return backend_; }
  int microbatch() const { return microbatch_; }

  void save(const void* owner, std::vector<Tensor> tensors) { saved_[owner] = std::move(tensors); }
  std::vector<Tensor>& saved(const void* owner) { return saved_.at(owner); }
  // Host-side state a module keeps for its backward (routing decisions, say).
  void save_state(const void* owner, std::shared_ptr<void> state) { states_[owner] = std::move(state); }
  template <class T>
  T& state(const void* owner) { return *static_cast<T*>(states_.at(owner).get()); }
  void release(const void* owner) {
    saved_.erase(owner);
    states_.erase(owner);
  }

  Tensor targets;  // [B,T] int32, read by the loss; undefined: the head returns logits [B,T,Vp]
  float dloss_scale = 1.f;  // dL/d(per-token loss): 1 / tokens of the global batch; set before forward
                            // (the loss computes its gradient there)
  // Called when a parameter's gradient is final for this step (last microbatch),
  // so data-parallel reduction can start while backward goes on.
  std::function<void(Param&)> on_grad_ready;
  bool last_microbatch = true;
  // What the batch carries beyond ids and targets (set before forward):
  int64_t first_sample = 0;  // place of batch row 0 in the run's sample order (keys the dropout masks)
  bool training = false;     // dropout on (off in evaluation and generation)
  Tensor doc_start;          // [B,T] int32: first position of each token's document; undefined = no document mask
  Tensor positions;          // [B,T] int32: position ids; undefined = 0..T-1 in every row
  // Figures modules report for this microbatch (MoE: "aux_loss", "z_loss",
  // token counts), summed over the step's microbatches into the metrics.
  std::map<std::string, double> stats;

 private:
  Backend& backend_;
  int microbatch_;
  std::map<const void*, std::vector<Tensor>> saved_;
  std::map<const void*, std::shared_ptr<void>> states_;
};

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(Context& ctx, const Tensor& x) = 0;
  // Accumulates into its params' grads; returns dL/dx (undefined for token inputs).
  virtual Tensor backward(Context& ctx, const Tensor& dy) = 0;
  virtual void collect_params(std::vector<Param*>& out) = 0;
  // Params this module reads but another layer owns (a tied output layer reads
  // the embedding table), so a pipeline stage holding only this one has them.
  virtual void collect_shared_params(std::vector<Param*>& /*out*/) {}
};

}  // namespace weft
