// Llama / Qwen2: token embedding (no position table), L pre-norm blocks of
// RMSNorm, grouped-query attention with rotary position embeddings on q and k,
// RMSNorm and a SwiGLU MLP; final RMSNorm and an output head (its own table,
// or tied to the embedding). Qwen2 is the same with biases on q, k and v.
//
// Letters: C hidden, H heads, KV kv heads, D = C/H head dimension, F ffn_hidden.
// Layers (what a pipeline schedule partitions):
//   0        LlamaEmbedding  ids [B,T] i32 -> x [B,T,C] = embed[ids]
//   1..L     LlamaBlock      x [B,T,C] -> [B,T,C]
//   L+1      LlamaHead       x [B,T,C] -> losses [B,T] | logits [B,T,Vp]
// Params (logical names, PyTorch's [out, in] weights; docs/models.md maps them
// to Hugging Face's):
//   embed.weight [Vp,C]
//   blocks.{i}.attn_norm.weight [C]
//   blocks.{i}.attn.q.weight [H*D,C]   (.bias [H*D] with qkv_bias)
//   blocks.{i}.attn.k.weight [KV*D,C]  (.bias)
//   blocks.{i}.attn.v.weight [KV*D,C]  (.bias)
//   blocks.{i}.attn.o.weight [C,H*D]
//   blocks.{i}.mlp_norm.weight [C]
//   blocks.{i}.mlp.gate.weight [F,C], blocks.{i}.mlp.up.weight [F,C], blocks.{i}.mlp.down.weight [C,F]
//   or, in a mixture-of-experts block (moe_experts = E > 0, weft/moe.hpp):
//   blocks.{i}.mlp.router.weight [E,C], blocks.{i}.mlp.experts.{e}.{gate,up,down}.weight as above
//   norm.weight [C]
//   head.weight [Vp,C]                 (absent with tie_embeddings)
// Tensor parallelism: q, k, v, gate, up column-parallel (whole heads per
// rank: H and KV divisible by tensor), o and down row-parallel, the tables
// vocabulary-parallel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "weft/model.hpp"
#include "weft/moe.hpp"
#include "weft/nn.hpp"

namespace weft::llama {

struct LlamaConfig {
  int64_t layers = 2;       // L
  int64_t hidden = 128;     // C
  int64_t heads = 4;        // H
  int64_t kv_heads = 4;     // KV, divides H
  int64_t ffn_hidden = 0;   // F
  int64_t seq_length = 64;  // T (max)
  int64_t vocab = 0;        // V
  int64_t padded_vocab = 0; // Vp
  float init_std = 0.02f;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  bool qkv_bias = false;
  bool tie_embeddings = false;
  nn::MoeOptions moe;  // mixture-of-experts MLPs (weft/moe.hpp): blocks moe.is_moe_block(i) get E SwiGLU experts
  int64_t head_dim() const { return hidden / heads; }
};

OptionSchema llama_schema();
// Reads and validates the [model] options (Options::fail names the key and the numbers).
LlamaConfig llama_config(const Options& options, int64_t vocab_size, const LayerProvider* layers = nullptr);

// RMSNorm over the last dim: "<name>.weight" [C] (Ones, no weight decay).
class RmsNorm : public Module {
 public:
  RmsNorm(std::string name, int64_t dim, float eps);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [..., C] -> [..., C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // [..., C] -> [..., C]
  void collect_params(std::vector<Param*>& out) override { out.push_back(&weight_); }

 private:
  int64_t dim_;
  float eps_;
  Param weight_;
};

// q, k, v projections, RoPE on q and k, grouped-query causal attention, o projection.
class LlamaAttention : public Module {
 public:
  LlamaAttention(const std::string& name, const LlamaConfig& c, LayerProvider& layers);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [B,T,C] -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // [B,T,C] -> [B,T,C]
  void collect_params(std::vector<Param*>& out) override;

 private:
  int64_t heads_, kv_heads_, head_dim_;
  float rope_theta_;
  std::unique_ptr<Module> q_, k_, v_, o_;
  bool sequence_parallel_ = false;  // q, k, v each gather their input
};

// down(silu(gate(x)) * up(x)).
class SwiGluMlp : public Module {
 public:
  SwiGluMlp(const std::string& name, const LlamaConfig& c, LayerProvider& layers);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [..., C] -> [..., C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // [..., C] -> [..., C]
  void collect_params(std::vector<Param*>& out) override;

 private:
  std::unique_ptr<Module> gate_, up_, down_;
  bool sequence_parallel_ = false;  // gate and up each gather their input
};

// x + attn(attn_norm(x)), then + mlp(mlp_norm(.)); mlp a SwiGluMlp or an MoeMLP of them.
class LlamaBlock : public Module {
 public:
  LlamaBlock(const std::string& name, const LlamaConfig& c, LayerProvider& layers, std::unique_ptr<Module> mlp);
  Tensor forward(Context& ctx, const Tensor& x) override;
  Tensor backward(Context& ctx, const Tensor& dy) override;
  void collect_params(std::vector<Param*>& out) override;

 private:
  RmsNorm attn_norm_;
  LlamaAttention attn_;
  RmsNorm mlp_norm_;
  std::unique_ptr<Module> mlp_;
};

// Layer 0: embed.weight [Vp,C] (rows split over tp).
class LlamaEmbedding : public Module {
 public:
  LlamaEmbedding(const LlamaConfig& c, LayerProvider& layers);
  Tensor forward(Context& ctx, const Tensor& ids) override { return embed_->forward(ctx, ids); }
  Tensor backward(Context& ctx, const Tensor& dy) override { return embed_->backward(ctx, dy); }
  void collect_params(std::vector<Param*>& out) override { embed_->collect_params(out); }
  Param& table() { return embed_->weight(); }

 private:
  std::unique_ptr<TableEmbedding> embed_;
};

// Last layer: norm, logits = x @ table^T over the head's own table (head.weight)
// or the embedding's (tied), cross entropy.
class LlamaHead : public Module {
 public:
  LlamaHead(const LlamaConfig& c, Param* tied, LayerProvider& layers);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [B,T,C] -> losses [B,T] | logits [B,T,Vp]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // starts from ctx.dloss_scale
  void collect_params(std::vector<Param*>& out) override;
  void collect_shared_params(std::vector<Param*>& out) override;

 private:
  RmsNorm norm_;
  Param* tied_ = nullptr;                // the embedding's table, or null
  std::unique_ptr<TableEmbedding> own_;  // head.weight when untied (only its table is used)
  std::unique_ptr<Module> output_;
};

class LlamaModel : public Model {
 public:
  // `parallel` places the experts of MoE blocks (null: one ep rank).
  LlamaModel(const LlamaConfig& config, LayerProvider* layers, const ParallelEnv* parallel = nullptr);
  std::vector<Module*> layers() override;
  std::vector<Param*> params() override;
  ModelSummary summary() const override;
  // LlamaForCausalLM, or Qwen2ForCausalLM with qkv_bias (docs/checkpoints.md); dense models only.
  HfLayout hugging_face() const override;
  const LlamaConfig& config() const { return config_; }

 private:
  std::unique_ptr<Module> mlp(int64_t i, LayerProvider& layers) const;  // block i's MLP
  LlamaConfig config_;
  const ParallelEnv* parallel_ = nullptr;
  int tp_ = 1;
  bool sequence_parallel_ = false;
  nn::SerialLayerProvider serial_;
  std::unique_ptr<LlamaEmbedding> embedding_;
  std::vector<std::unique_ptr<LlamaBlock>> blocks_;
  std::unique_ptr<LlamaHead> head_;
};

std::unique_ptr<Model> make_llama(const Options& options, const ModelEnv& env);

}  // namespace weft::llama
