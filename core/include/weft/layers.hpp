// LayerProvider (family tensor_parallel): builds the layers whose weights a
// tensor-parallel strategy shards. The serial provider builds plain layers;
// Megatron-style providers build column/row-parallel ones over the tp group.
//
// Activation layout between layers: [B,T,C] on every tp rank, or with
// sequence parallelism this rank's [B,T/tp,C] slice of the sequence (tp rank r
// holds positions [r*T/tp, (r+1)*T/tp)). Modules a provider builds take and
// return that layout on their C side; their sharded side (the output of a
// column-parallel Linear, the input of a row-parallel one) is [B,T,out/tp].
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "weft/comm.hpp"
#include "weft/module.hpp"
#include "weft/options.hpp"
#include "weft/plugin.hpp"
#include "weft/topology.hpp"

namespace weft {

struct LinearSpec {
  std::string name;  // logical prefix, e.g. "blocks.0.attn.qkv"
  int64_t in = 0, out = 0;
  bool bias = true;
  float init_std = 0.02f;
  // The output features are this many equal blocks split separately over tp
  // (3 for a fused q | k | v), so each rank's output is again blocks of its own.
  int fused_blocks = 1;
};

// A token embedding table [num, C]; the tied output head reads weight().
class TableEmbedding : public Module {
 public:
  // ids [B,T] i32 -> [B,T,C] (with sequence parallelism this rank's [B,T/tp,C])
  Tensor forward(Context& ctx, const Tensor& ids) override = 0;
  virtual Param& weight() = 0;  // [num, C] logical; rows split over tp by Megatron providers
};

class LayerProvider {
 public:
  virtual ~LayerProvider() = default;
  // y[N,out] = x[N,in] W^T + b, output features split over tp.
  virtual std::unique_ptr<Module> column_linear(const LinearSpec& spec) = 0;
  // input features split over tp, output reduced over tp.
  virtual std::unique_ptr<Module> row_linear(const LinearSpec& spec) = 0;
  // Param "<name>.weight" [num, dim] (Normal, init_std), rows (vocabulary) split over tp.
  virtual std::unique_ptr<TableEmbedding> embedding(const std::string& name, int64_t num, int64_t dim,
                                                    float init_std) = 0;
  // The output layer tied to `table` and the loss: x [B,T,C] (layout above) ->
  // per-token cross entropy over the first `vocab` logical columns, losses [B,T]
  // on every tp rank; with ctx.targets undefined, logits [B,T,Vp]. Backward
  // starts from ctx.dloss_scale and accumulates into table.grad.
  virtual std::unique_ptr<Module> tied_output_loss(Param& table, int64_t vocab) = 0;

  virtual int tp_size() const = 0;
  virtual int tp_rank() const { return 0; }
  virtual bool sequence_parallel() const { return false; }
  // Whether `param`'s gradient must be summed over the tp group once it is
  // final (replicated params that saw only this rank's tokens).
  virtual bool grad_sums_over_tp(const Param& /*param*/) const { return false; }
};

class Dispatcher;  // weft/expert.hpp

struct ParallelEnv {
  const Topology* topology = nullptr;
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
  Communicator* dp = nullptr;
  Communicator* ep = nullptr;
  Backend* backend = nullptr;
  Dispatcher* dispatcher = nullptr;  // moves routed rows over ep (mixture-of-experts layers)
};

template <>
struct FamilyTraits<LayerProvider> {
  static constexpr const char* kName = "tensor_parallel";
  using Factory = std::function<std::unique_ptr<LayerProvider>(const Options&, const ParallelEnv&)>;
};

}  // namespace weft
