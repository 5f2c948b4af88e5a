// GPT-2: learned token (wte) and position (wpe) embeddings, L pre-LN blocks
// (causal self-attention, GeLU-tanh 4x MLP), final LayerNorm lnf, and an
// output head tied to wte; loss is per-token cross entropy over the first V
// of Vp (padded) logit columns.
//
// Layers (what a pipeline schedule partitions):
//   0        GptEmbedding  ids [B,T] i32 -> x [B,T,C] = wte[ids] + wpe[t]
//   1..L     nn::Block     x [B,T,C] -> [B,T,C]
//   L+1      GptHead       x [B,T,C] -> losses [B,T] (ctx.targets defined)
//                                    or logits [B,T,Vp] (ctx.targets undefined)
// The LayerProvider (tensor parallelism) builds the Linears, wte and the tied
// output; with sequence parallelism x is this rank's [B,T/tp,C] slice.
#pragma once

#include <cstdint>
#include <string>
#include <memory>
#include <vector>

#include "weft/model.hpp"
#include "weft/moe.hpp"
#include "weft/nn.hpp"

namespace weft::gpt {

struct GptConfig {
  int64_t layers = 2;       // L
  int64_t hidden = 128;     // C
  int64_t heads = 4;        // H
  int64_t seq_length = 64;  // T (max)
  int64_t vocab = 0;        // V, from the tokenizer
  int64_t padded_vocab = 0; // Vp, V rounded up to vocab_pad_multiple x tensor
  float init_std = 0.02f;
  nn::MoeOptions moe;  // mixture-of-experts MLPs (weft/moe.hpp): blocks i with moe.is_moe_block(i)
  // Activation recomputation: "full" recomputes the first recompute_layers blocks
  // (0 = all) in backward; "selective" and "none" keep every activation.
  std::string recompute = "none";
  int64_t recompute_layers = 0;
  bool recomputes(int64_t i) const { return recompute == "full" && (recompute_layers == 0 || i < recompute_layers); }
  // Megatron's knobs (docs/megatron.md): block settings (bias, norm_eps, gelu, dropout, seed),
  // rows of the position table, and an output weight of its own.
  nn::BlockOptions block;
  int64_t max_positions = 0;  // wpe rows (0: seq_length)
  bool untie = false;         // output.weight [Vp,C] instead of wte
  int64_t positions() const { return max_positions > 0 ? max_positions : seq_length; }
};

OptionSchema gpt_schema();
// Reads and validates the [model] options against the tensor-parallel layout
// (Options::fail names the key and the numbers).
// `layers` null: one rank (tensor 1).
GptConfig gpt_config(const Options& options, int64_t vocab_size, const LayerProvider* layers = nullptr);

// Layer 0: token + position embedding. Params wte.weight [Vp,C], wpe.weight [T,C].
class GptEmbedding : public Module {
 public:
  GptEmbedding(const GptConfig& config, LayerProvider& layers);  // wpe [max_positions, C]
  Tensor forward(Context& ctx, const Tensor& ids) override;  // ids [B,T] i32 -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,C] -> undefined
  void collect_params(std::vector<Param*>& out) override;
  Param& wte() { return wte_->weight(); }
  Param& wpe() { return wpe_; }

 private:
  int64_t seq_length_, hidden_;
  LayerProvider& layers_;
  std::unique_ptr<TableEmbedding> wte_;  // [Vp,C] (rows split over tp)
  Param wpe_;                            // [P,C], P = max_position_embeddings
  float dropout_;                        // hidden_dropout on the embedding's output
  uint64_t dropout_key_;                 // site "embedding.dropout"
};

// Last layer: lnf, logits = x @ wte^T (tied), cross entropy. Owns lnf.*; wte
// belongs to the embedding (its gradient gets both contributions, and is
// reported ready by the embedding's backward, which runs last). Untied
// (config.untie): the head owns output.weight [Vp,C], split over tp like wte.
class GptHead : public Module {
 public:
  GptHead(Param& wte, const GptConfig& config, LayerProvider& layers);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [B,T,C] -> losses [B,T] | logits [B,T,Vp]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy ignored; starts from ctx.dloss_scale
  void collect_params(std::vector<Param*>& out) override;
  void collect_shared_params(std::vector<Param*>& out) override {
    if (!output_table_) out.push_back(&wte_);
  }
  nn::LayerNorm& lnf() { return lnf_; }

 private:
  std::unique_ptr<TableEmbedding> output_table_;  // untied: output.weight [Vp,C]; null: tied to wte
  Param& wte_;  // [Vp,C], the embedding's (tied), or output.weight
  int64_t hidden_;
  nn::LayerNorm lnf_;
  std::unique_ptr<Module> output_;  // x @ wte^T and the cross entropy
};

class GptModel : public Model {
 public:
  // `layers` builds the attention/MLP Linears; null = plain serial Linears.
  // `parallel` places the experts of MoE blocks (null: one ep rank).
  GptModel(const GptConfig& config, LayerProvider* layers, const ParallelEnv* parallel = nullptr);

  std::vector<Module*> layers() override;
  std::vector<Param*> params() override;
  ModelSummary summary() const override;
  // GPT2LMHeadModel (docs/checkpoints.md): Conv1D matrices transposed, the tables' V rows.
  HfLayout hugging_face() const override;

  const GptConfig& config() const { return config_; }
  GptEmbedding& embedding() { return *embedding_; }
  nn::Block& block(int64_t i) { return *blocks_.at(static_cast<size_t>(i)); }
  GptHead& head() { return *head_; }

 private:
  std::unique_ptr<Module> moe_mlp(int64_t i, LayerProvider& layers, float proj_std) const;
  GptConfig config_;
  const ParallelEnv* parallel_ = nullptr;
  int tp_ = 1;
  bool sequence_parallel_ = false;
  nn::SerialLayerProvider serial_;  // used when no provider is given
  std::unique_ptr<GptEmbedding> embedding_;
  std::vector<std::unique_ptr<nn::Block>> blocks_;  // L
  std::vector<std::unique_ptr<nn::Recompute>> recomputed_;  // wrappers of the blocks that recompute (by block)
  std::unique_ptr<GptHead> head_;
};

std::unique_ptr<Model> make_gpt(const Options& options, const ModelEnv& env);

}  // namespace weft::gpt
