#include "gpt.hpp"

#include <cmath>
#include <string>

#include "weft/error.hpp"

namespace weft::gpt {

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

}  // namespace

// ---------------------------------------------------------------- options

OptionSchema gpt_schema() {
  return {
      // Upper bounds keep every size product (parameters, flops, activation bytes) below 2^63.
      opt_int("layers", 2, "number of transformer blocks (L)", 1, 1 << 14),
      opt_int("hidden", 128, "model width (C)", 1, 1 << 20),
      opt_int("heads", 4, "attention heads (H); must divide hidden", 1, 1 << 20),
      opt_int("seq_length", 64, "maximum sequence length (T), size of the position embedding", 1, 1 << 20),
      opt_int("vocab_size", 0,
              "vocabulary V (0 = the tokenizer's); larger only for token ids the tokenizer never makes "
              "(synthetic data)",
              0, 2147483647.0),
      opt_int("vocab_pad_multiple", 64, "pad the vocabulary to a multiple of this (Vp)", 1, 1 << 20),
      opt_float("init_std", 0.02, "std of the normal init; residual projections use init_std/sqrt(2L)", 0.0),
  };
}

GptConfig gpt_config(const Options& o, int64_t vocab_size) {
  GptConfig c;
  c.layers = o.get_int("layers");
  c.hidden = o.get_int("hidden");
  c.heads = o.get_int("heads");
  c.seq_length = o.get_int("seq_length");
  c.init_std = static_cast<float>(o.get_float("init_std"));
  const int64_t pad = o.get_int("vocab_pad_multiple");
  if (c.layers < 1) o.fail("layers", "layers " + std::to_string(c.layers) + " must be >= 1");
  if (c.hidden < 1) o.fail("hidden", "hidden " + std::to_string(c.hidden) + " must be >= 1");
  if (c.heads < 1) o.fail("heads", "heads " + std::to_string(c.heads) + " must be >= 1");
  if (c.seq_length < 1) o.fail("seq_length", "seq_length " + std::to_string(c.seq_length) + " must be >= 1");
  if (pad < 1) o.fail("vocab_pad_multiple", "vocab_pad_multiple " + std::to_string(pad) + " must be >= 1");
  if (!(c.init_std > 0.f)) o.fail("init_std", "init_std " + std::to_string(c.init_std) + " must be > 0");
  if (c.hidden % c.heads != 0)
    o.fail("heads", "hidden " + std::to_string(c.hidden) + " is not divisible by heads " + std::to_string(c.heads));
  if (vocab_size < 1)
    throw Error(o.section() + ": the tokenizer reports a vocabulary of " + std::to_string(vocab_size) +
                " tokens; the model needs at least 1");
  const int64_t own_vocab = o.get_int("vocab_size");
  if (own_vocab != 0 && own_vocab < vocab_size)
    o.fail("vocab_size", "vocab_size " + std::to_string(own_vocab) + " is smaller than the tokenizer's vocabulary of " +
                             std::to_string(vocab_size));
  if (own_vocab > (int64_t{1} << 31) - 1)
    o.fail("vocab_size", "vocab_size " + std::to_string(own_vocab) + " exceeds the int32 token ids");
  c.vocab = own_vocab != 0 ? own_vocab : vocab_size;
  c.padded_vocab = (c.vocab + pad - 1) / pad * pad;
  return c;
}

// ---------------------------------------------------------------- embedding

GptEmbedding::GptEmbedding(int64_t padded_vocab, int64_t seq_length, int64_t hidden, float init_std)
    : seq_length_(seq_length),
      hidden_(hidden),
      wte_("wte", padded_vocab, hidden, init_std),
      wpe_(nn::make_param("wpe.weight", {seq_length, hidden}, InitKind::Normal, init_std, true)) {}

Tensor GptEmbedding::forward(Context& ctx, const Tensor& ids) {
  WEFT_ASSERT(ids.defined() && ids.dtype() == DType::I32 && ids.shape().size() == 2,
              "gpt: input must be token ids [B,T] i32");
  const int64_t b = ids.dim(0), t = ids.dim(1);
  WEFT_ASSERT(t <= seq_length_, "gpt: sequence of " + std::to_string(t) + " tokens exceeds seq_length " +
                                    std::to_string(seq_length_));
  Tensor x = wte_.forward(ctx, ids);  // [B,T,C]
  // Position embedding: x viewed as [B, T*C] gets wpe[0:T] (T*C) added to every row.
  if (b * t > 0) ctx.backend().add_bias(f32(x), f32(wpe_.data), b, t * hidden_);
  return x;
}

Tensor GptEmbedding::backward(Context& ctx, const Tensor& dy) {
  WEFT_ASSERT(dy.defined() && dy.shape().size() == 3 && dy.dim(2) == hidden_, "gpt: embedding dy must be [B,T,C]");
  const int64_t b = dy.dim(0), t = dy.dim(1);
  if (b * t > 0) ctx.backend().bias_grad(f32(wpe_.grad), f32(dy), b, t * hidden_);  // dwpe[0:T] += sum_b dy
  wte_.backward(ctx, dy);  // also reports wte ready: the head added its part earlier
  nn::grad_ready(ctx, wpe_);
  return Tensor();
}

void GptEmbedding::collect_params(std::vector<Param*>& out) {
  wte_.collect_params(out);
  out.push_back(&wpe_);
}

// ---------------------------------------------------------------- head

GptHead::GptHead(Param& wte, int64_t vocab, int64_t hidden)
    : wte_(wte), vocab_(vocab), padded_vocab_(wte.shape.at(0)), hidden_(hidden), lnf_("lnf", hidden) {}

Tensor GptHead::forward(Context& ctx, const Tensor& x) {
  WEFT_ASSERT(x.defined() && x.shape().size() == 3 && x.dim(2) == hidden_, "gpt: head input must be [B,T,C]");
  Backend& be = ctx.backend();
  const int64_t b = x.dim(0), t = x.dim(1), n = b * t;
  Tensor h = lnf_.forward(ctx, x);                                                      // [B,T,C]
  Tensor logits = be.alloc_uninitialized({b, t, padded_vocab_}, DType::F32, MemCategory::Activation);  // [B,T,Vp]
  if (n > 0) nn::linear_forward(be, f32(logits), f32(h), f32(wte_.data), n, hidden_, padded_vocab_);  // h @ wte^T
  if (!ctx.targets.defined()) {  // eval / generation: no backward
    ctx.release(&lnf_);
    return logits;
  }
  const Tensor& targets = ctx.targets;  // [B,T]
  WEFT_ASSERT(targets.dtype() == DType::I32 && targets.numel() == n,
              "gpt: targets " + shape_str(targets.shape()) + " do not match the batch " + shape_str({b, t}));
  // One fused pass gives the losses and, in place of the logits, their
  // gradient dlogits = dloss_scale * (softmax - onehot): backward needs only
  // that, so the [B,T,Vp] logits are never kept or read twice.
  Tensor losses = be.alloc_uninitialized({b, t}, DType::F32, MemCategory::Activation);  // [B,T]
  if (n > 0)
    be.cross_entropy(f32(losses), f32(logits), f32(logits), targets.data<int32_t>(), n, vocab_, padded_vocab_,
                     ctx.dloss_scale);
  ctx.save(this, {h, logits});  // logits now holds dlogits [B,T,Vp]
  return losses;
}

Tensor GptHead::backward(Context& ctx, const Tensor& /*dy: the loss is the end of the graph*/) {
  Backend& be = ctx.backend();
  Tensor dh;  // [B,T,C]
  {
    auto& saved = ctx.saved(this);
    const Tensor& h = saved[0];        // [B,T,C]
    const Tensor& dlogits = saved[1];  // [B,T,Vp], from forward
    const int64_t n = h.dim(0) * h.dim(1);
    dh = be.alloc_uninitialized(h.shape(), DType::F32, MemCategory::Workspace);
    if (n > 0) {
      nn::linear_backward_input(be, f32(dh), f32(dlogits), f32(wte_.data), n, hidden_, padded_vocab_);
      nn::linear_backward_weight(be, f32(wte_.grad), f32(dlogits), f32(h), n, hidden_, padded_vocab_);
    }
    ctx.release(this);
  }
  return lnf_.backward(ctx, dh);  // [B,T,C]
}

void GptHead::collect_params(std::vector<Param*>& out) { lnf_.collect_params(out); }

// ---------------------------------------------------------------- model

GptModel::GptModel(const GptConfig& config, LayerProvider* layers) : config_(config) {
  const GptConfig& c = config_;
  WEFT_ASSERT(c.layers >= 1 && c.hidden >= 1 && c.heads >= 1 && c.hidden % c.heads == 0 && c.seq_length >= 1,
              "gpt: invalid config");
  WEFT_ASSERT(c.vocab >= 1 && c.padded_vocab >= c.vocab, "gpt: invalid vocabulary sizes");
  nn::SerialLayerProvider serial;
  LayerProvider& provider = layers ? *layers : serial;
  const float proj_std = c.init_std / std::sqrt(2.f * static_cast<float>(c.layers));
  embedding_ = std::make_unique<GptEmbedding>(c.padded_vocab, c.seq_length, c.hidden, c.init_std);
  for (int64_t i = 0; i < c.layers; ++i)
    blocks_.push_back(std::make_unique<nn::Block>("blocks." + std::to_string(i), c.hidden, c.heads, provider,
                                                  c.init_std, proj_std));
  head_ = std::make_unique<GptHead>(embedding_->wte(), c.vocab, c.hidden);
}

std::vector<Module*> GptModel::layers() {
  std::vector<Module*> out{embedding_.get()};
  for (auto& b : blocks_) out.push_back(b.get());
  out.push_back(head_.get());
  return out;
}

std::vector<Param*> GptModel::params() {
  std::vector<Param*> out;
  for (Module* m : layers()) m->collect_params(out);
  return out;
}

ModelSummary GptModel::summary() const {
  const GptConfig& c = config_;
  const int64_t C = c.hidden, L = c.layers, T = c.seq_length, Vp = c.padded_vocab, H = c.heads;
  const int64_t per_block = 12 * C * C + 13 * C;  // ln1, qkv, proj, ln2, fc, proj (weights + biases)
  const int64_t wpe = T * C;
  ModelSummary s;
  s.params = Vp * C + wpe + L * per_block + 2 * C;  // wte counted once (tied head)
  // 6 flops per parameter per token (forward 2, backward 4; wpe is a lookup, not a
  // matmul) plus attention scores and weighted sum: forward 4*T*C per token per
  // layer for full attention, halved for the causal mask, times 3 for fwd+bwd =
  // 6*L*T*C (the "12*L*T*C / 2" causal convention).
  s.flops_per_token = 6 * (s.params - wpe) + 6 * L * T * C;
  // Saved fp32 activations per token, as the nn modules keep them:
  //   per block: ln1 in + mean/rstd (C+2), qkv in (C), qkv (3C), attn out (C), lse (H),
  //              ln2 in + mean/rstd (C+2), fc in (C), fc out (4C), gelu out (4C) = 16C + H + 4
  //   head: lnf in + mean/rstd (C+2), lnf out (C), logits (Vp), loss (1); ids, targets (2 i32)
  const int64_t per_token = L * (16 * C + H + 4) + (2 * C + 2) + Vp + 1 + 2;
  s.act_bytes_per_sample = per_token * T * 4;
  s.seq_length = T;
  s.vocab = c.vocab;
  s.padded_vocab = Vp;
  return s;
}

std::unique_ptr<Model> make_gpt(const Options& options, const ModelEnv& env) {
  return std::make_unique<GptModel>(gpt_config(options, env.vocab_size), env.layers);
}

}  // namespace weft::gpt
