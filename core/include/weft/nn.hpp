// nn building blocks: Linear, Embedding, LayerNorm, causal self-attention, MLP
// and the pre-LN transformer Block. Each is a Module with explicit
// forward/backward; every kernel goes through weft::Backend, so the same
// modules run on any backend. Activations that backward needs are saved in the
// Context under the module's address (several microbatches may be in flight),
// never in members. Gradients accumulate into Param::grad (add_to_grad).
//
// Params are declared (name, shapes, init) in constructors but not allocated:
// materialize_params (weft/params.hpp) gives them views into flat buffers.
//
// Letters: B batch, T time, C channels, H heads, N = B*T rows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "weft/layers.hpp"
#include "weft/module.hpp"

namespace weft::nn {

// Declares a parameter without allocating it (data/grad stay undefined).
// `shard` selects this rank's slice: shape = full_shape with full_shape[dim] / count at dim.
Param make_param(std::string name, Shape full_shape, InitKind init, float init_std, bool weight_decay,
                 ShardSpec shard = {});

// Tells ctx.on_grad_ready that `param`'s gradient is final, when this is the
// last microbatch of the step and a hook is set.
void grad_ready(Context& ctx, Param& param);

// Runs `add(float* g)`, which adds one backward's contribution to `param`'s
// gradient, g[numel] in fp32: the gradient itself when it is fp32; when it is
// 16-bit (precision.accumulate_grads_in_fp32 = false), a zeroed fp32
// workspace that is then added into it, each sum rounded once
// (Backend::accumulate_rounded). So a 16-bit gradient rounds once per
// contribution, once per microbatch for most params, never inside a kernel.
template <class Add>
void add_to_grad(Backend& be, Param& param, Add&& add) {
  if (param.grad.dtype() == DType::F32) return add(param.grad.data<float>());
  Tensor g = be.alloc(param.grad.shape(), DType::F32, MemCategory::Workspace);  // [shape], zero-filled
  add(g.data<float>());
  be.accumulate_rounded(param.grad, g.data<float>());
}

// The weights a kernel reads: Param::data, fp32 or the precision's 16-bit
// compute copy (docs/precision.md).
inline TypedPtr weight_ptr(const Param& p) { return TypedPtr::of(p.data); }

// The three products of a linear map y = x W^T with W [out, in] (PyTorch's
// layout), over n rows; Linear and the GPT head's tied output layer use them.
// With 16-bit weights the activations x and dy are GEMM inputs in the
// weights' dtype: an fp32 x or dy is cast first (one already in that dtype,
// from compute_copy, is read as it is), so both GEMM inputs are 16-bit
// (outputs and accumulation fp32).
void linear_forward(Backend& be, float* y, TypedPtr x, TypedPtr w, int64_t n, int64_t in,
                    int64_t out);  // y[n,out] = x[n,in] @ W^T
void linear_backward_input(Backend& be, float* dx, TypedPtr dy, TypedPtr w, int64_t n, int64_t in,
                           int64_t out);  // dx[n,in] = dy[n,out] @ W
// `inputs`: the dtype dy and x are cast to (the weights' dtype).
void linear_backward_weight(Backend& be, float* dw, TypedPtr dy, TypedPtr x, int64_t n, int64_t in,
                            int64_t out, DType inputs = DType::F32);  // dW[out,in] += dy^T @ x

// x (fp32) as a GEMM input of `dtype`, the compute dtype: x itself for F32,
// else a cast copy of x's shape counted under `category`. A linear layer
// saves this copy of its input for backward (the weight-gradient GEMM reads
// the same 16-bit values), so 16-bit modes keep those activations at half
// the bytes (docs/precision.md).
Tensor compute_copy(Backend& be, const Tensor& x, DType dtype, MemCategory category);
// The dtype of the weights `m` computes with: its first parameter's (F32 without any).
DType weights_dtype(Module& m);

// y[..., out] = x[..., in] W^T + b; weight [out, in] as in PyTorch.
// Params "<name>.weight" [out, in] (Normal, init_std), "<name>.bias" [out] (Zeros).
class Linear : public Module {
 public:
  explicit Linear(const LinearSpec& spec);
  Linear(std::string name, int64_t in, int64_t out, bool bias = true, float init_std = 0.02f);

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [..., in] -> [..., out]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [..., out] -> dx [..., in]
  void collect_params(std::vector<Param*>& out) override;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  Param& weight() { return weight_; }
  Param* bias() { return has_bias_ ? &bias_ : nullptr; }

 private:
  int64_t in_, out_;
  bool has_bias_;
  Param weight_;  // [out, in]
  Param bias_;    // [out] (unused when !has_bias_)
};

// Token embedding: ids [B,T] int32 -> [B,T,C]. Param "<name>.weight" [num, C].
// backward accumulates into the table and returns an undefined tensor.
class Embedding : public TableEmbedding {
 public:
  Embedding(std::string name, int64_t num, int64_t dim, float init_std = 0.02f);

  Tensor forward(Context& ctx, const Tensor& ids) override;  // ids [B,T] i32 -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,C] -> undefined
  void collect_params(std::vector<Param*>& out) override;

  int64_t num() const { return num_; }
  int64_t dim() const { return dim_; }
  Param& weight() override { return weight_; }

 private:
  int64_t num_, dim_;
  Param weight_;  // [num, C]
};

// Output layer tied to an embedding table and the loss, on one rank:
// logits [B,T,Vp] = x [B,T,C] @ table^T, then the fused cross entropy over the
// first `vocab` columns. With ctx.targets undefined it returns the logits.
class TiedOutputLoss : public Module {
 public:
  TiedOutputLoss(Param& table, int64_t vocab);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [B,T,C] -> losses [B,T] | logits [B,T,Vp]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy ignored; starts from ctx.dloss_scale
  void collect_params(std::vector<Param*>& /*out*/) override {}  // the table belongs to the embedding

 private:
  Param& table_;  // [Vp, C]
  int64_t vocab_;
};

// LayerNorm over the last dim. Params "<name>.weight" [C] (Ones), "<name>.bias" [C] (Zeros),
// neither weight-decayed.
class LayerNorm : public Module {
 public:
  LayerNorm(std::string name, int64_t dim, float eps = 1e-5f);

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [..., C] -> [..., C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [..., C] -> dx [..., C]
  void collect_params(std::vector<Param*>& out) override;

  int64_t dim() const { return dim_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }

 private:
  int64_t dim_;
  float eps_;
  Param weight_;  // [C]
  Param bias_;    // [C]
};

// Settings of a transformer block beyond its sizes (Megatron's model knobs).
// Dropout masks are keyed by the seed, the site's logical name and the
// logical element (weft/rng.hpp), and apply only when Context::training.
struct BlockOptions {
  bool bias = true;               // biases of the attention and MLP Linears
  float norm_eps = 1e-5f;         // LayerNorm epsilon
  bool gelu_erf = false;          // exact GeLU (erf) instead of the tanh approximation
  float hidden_dropout = 0.f;     // on the attention and MLP outputs, before each residual add
  float attention_dropout = 0.f;  // on the attention probabilities
  uint64_t seed = 0;              // run.seed
};

// In place: x[B,t,C] *= the dropout mask of site `key` (no-op when p = 0 or not training);
// t0 is the position of row 0 in the full sequence.
void apply_dropout(Context& ctx, const Tensor& x, float p, uint64_t key, int64_t t0);

// Builds plain (unsharded) Linears: the tp = 1 layer provider.
class SerialLayerProvider : public LayerProvider {
 public:
  std::unique_ptr<Module> column_linear(const LinearSpec& spec) override;
  std::unique_ptr<Module> row_linear(const LinearSpec& spec) override;
  std::unique_ptr<TableEmbedding> embedding(const std::string& name, int64_t num, int64_t dim,
                                            float init_std) override;
  std::unique_ptr<Module> tied_output_loss(Param& table, int64_t vocab) override;
  int tp_size() const override { return 1; }
};

// Causal multi-head self-attention: qkv = column_linear(C -> 3C) "<name>.qkv",
// the backend's fused attention, proj = row_linear(C -> C) "<name>.proj".
// The qkv outputs are q (C) | k (C) | v (C), heads contiguous inside each.
// The local width and sequence length are read from the qkv output, so a
// column-sharded qkv (fused_blocks 3) works with the heads of this rank, and a
// sequence-parallel input [B,T/tp,C] with the full sequence qkv gathers.
class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(std::string name, int64_t dim, int64_t heads, LayerProvider& layers,
                      float init_std = 0.02f, float proj_init_std = 0.02f, const BlockOptions& options = {});

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [B,T,C] -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,C] -> dx [B,T,C]
  void collect_params(std::vector<Param*>& out) override;

  Module& qkv() { return *qkv_; }
  Module& proj() { return *proj_; }

 private:
  int64_t dim_, heads_;
  LayerProvider& layers_;          // tp rank: the logical index of this rank's first head
  float dropout_;                  // attention-probability dropout
  uint64_t dropout_key_;
  std::unique_ptr<Module> qkv_;   // C -> 3C
  std::unique_ptr<Module> proj_;  // C -> C
};

// MLP: fc = column_linear(C -> 4C) "<name>.fc", GeLU (tanh, or erf), proj = row_linear(4C -> C) "<name>.proj".
class MLP : public Module {
 public:
  MLP(std::string name, int64_t dim, LayerProvider& layers, float init_std = 0.02f,
      float proj_init_std = 0.02f, int64_t hidden_mult = 4, const BlockOptions& options = {});

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [..., C] -> [..., C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [..., C] -> dx [..., C]
  void collect_params(std::vector<Param*>& out) override;

  Module& fc() { return *fc_; }
  Module& proj() { return *proj_; }

 private:
  std::unique_ptr<Module> fc_;    // C -> 4C
  std::unique_ptr<Module> proj_;  // 4C -> C
  bool gelu_erf_;
};

// Activation recomputation: keeps only its input in forward (the wrapped
// module's activations are freed as soon as its forward ends) and runs that
// forward again in backward, right before the module's backward. The same
// kernels in the same order: results are bit-identical to not recomputing.
// Figures the module reports (Context::stats) count from the first forward only.
class Recompute : public Module {
 public:
  explicit Recompute(Module& inner) : inner_(inner) {}
  Tensor forward(Context& ctx, const Tensor& x) override;
  Tensor backward(Context& ctx, const Tensor& dy) override;
  void collect_params(std::vector<Param*>& out) override { inner_.collect_params(out); }
  void collect_shared_params(std::vector<Param*>& out) override { inner_.collect_shared_params(out); }

 private:
  Module& inner_;
};

// Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)).
// Params in order: <name>.ln1.*, <name>.attn.qkv.*, <name>.attn.proj.*, <name>.ln2.*,
// <name>.mlp.fc.*, <name>.mlp.proj.* (or the given mlp's, e.g. a mixture of experts).
class Block : public Module {
 public:
  Block(std::string name, int64_t dim, int64_t heads, LayerProvider& layers, float init_std = 0.02f,
        float proj_init_std = 0.02f, std::unique_ptr<Module> mlp = nullptr, const BlockOptions& options = {});

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [B,T,C] -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,C] -> dx [B,T,C]
  void collect_params(std::vector<Param*>& out) override;

  LayerNorm& ln1() { return ln1_; }
  CausalSelfAttention& attn() { return attn_; }
  LayerNorm& ln2() { return ln2_; }
  Module& mlp() { return *mlp_; }

 private:
  int64_t t0(const Tensor& x) const;  // position of x's row 0 in the sequence (sequence parallelism)
  LayerNorm ln1_;
  CausalSelfAttention attn_;
  LayerNorm ln2_;
  std::unique_ptr<Module> mlp_;  // [..., C] -> [..., C]
  LayerProvider& layers_;
  float hidden_dropout_;
  uint64_t attn_drop_key_, mlp_drop_key_;  // sites "<name>.attn.dropout", "<name>.mlp.dropout"
};

}  // namespace weft::nn
