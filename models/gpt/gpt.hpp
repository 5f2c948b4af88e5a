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
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "weft/model.hpp"
#include "weft/nn.hpp"

namespace weft::gpt {

struct GptConfig {
  int64_t layers = 2;       // L
  int64_t hidden = 128;     // C
  int64_t heads = 4;        // H
  int64_t seq_length = 64;  // T (max)
  int64_t vocab = 0;        // V, from the tokenizer
  int64_t padded_vocab = 0; // Vp, V rounded up to vocab_pad_multiple
  float init_std = 0.02f;
};

OptionSchema gpt_schema();
// Reads and validates the [model] options (Options::fail names the key and the numbers).
GptConfig gpt_config(const Options& options, int64_t vocab_size);

// Layer 0: token + position embedding. Params wte.weight [Vp,C], wpe.weight [T,C].
class GptEmbedding : public Module {
 public:
  GptEmbedding(int64_t padded_vocab, int64_t seq_length, int64_t hidden, float init_std);
  Tensor forward(Context& ctx, const Tensor& ids) override;  // ids [B,T] i32 -> [B,T,C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [B,T,C] -> undefined
  void collect_params(std::vector<Param*>& out) override;
  Param& wte() { return wte_.weight(); }
  Param& wpe() { return wpe_; }

 private:
  int64_t seq_length_, hidden_;
  nn::Embedding wte_;  // [Vp,C]
  Param wpe_;          // [T,C]
};

// Last layer: lnf, logits = x @ wte^T (tied), cross entropy. Owns lnf.*; wte
// belongs to the embedding (its gradient gets both contributions, and is
// reported ready by the embedding's backward, which runs last).
class GptHead : public Module {
 public:
  GptHead(Param& wte, int64_t vocab, int64_t hidden);
  Tensor forward(Context& ctx, const Tensor& x) override;    // [B,T,C] -> losses [B,T] | logits [B,T,Vp]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy ignored; starts from ctx.dloss_scale
  void collect_params(std::vector<Param*>& out) override;
  nn::LayerNorm& lnf() { return lnf_; }

 private:
  Param& wte_;  // [Vp,C], tied
  int64_t vocab_, padded_vocab_, hidden_;
  nn::LayerNorm lnf_;
};

class GptModel : public Model {
 public:
  // `layers` builds the attention/MLP Linears; null = plain serial Linears.
  GptModel(const GptConfig& config, LayerProvider* layers);

  std::vector<Module*> layers() override;
  std::vector<Param*> params() override;
  ModelSummary summary() const override;

  const GptConfig& config() const { return config_; }
  GptEmbedding& embedding() { return *embedding_; }
  nn::Block& block(int64_t i) { return *blocks_.at(static_cast<size_t>(i)); }
  GptHead& head() { return *head_; }

 private:
  GptConfig config_;
  std::unique_ptr<GptEmbedding> embedding_;
  std::vector<std::unique_ptr<nn::Block>> blocks_;  // L
  std::unique_ptr<GptHead> head_;
};

std::unique_ptr<Model> make_gpt(const Options& options, const ModelEnv& env);

}  // namespace weft::gpt
