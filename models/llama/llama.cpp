#include "llama.hpp"

#include <cmath>
#include <string>

#include "weft/error.hpp"
#include "weft/moe.hpp"

namespace weft::llama {

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

std::string num(int64_t v) { return std::to_string(v); }

}  // namespace

// ---------------------------------------------------------------- options

OptionSchema llama_schema() {
  OptionSchema schema = {
      opt_int("layers", 2, "number of transformer blocks (L)", 1, 1 << 14),
      opt_int("hidden", 128, "model width (C)", 1, 1 << 20),
      opt_int("heads", 4, "attention heads (H); must divide hidden, and hidden / heads must be even (RoPE)", 1,
              1 << 20),
      opt_int("kv_heads", 0,
              "key/value heads (KV) of grouped-query attention; must divide heads (0 = heads: plain multi-head)", 0,
              1 << 20),
      opt_int("ffn_hidden", 0, "SwiGLU MLP width (F); 0 = 8 hidden / 3 rounded up to a multiple of 64", 0, 1 << 24),
      opt_int("seq_length", 64, "maximum sequence length (T); positions are rotary, there is no position table", 1,
              1 << 20),
      opt_int("vocab_size", 0,
              "vocabulary V (0 = the tokenizer's); larger only for token ids the tokenizer never makes "
              "(synthetic data)",
              0, 2147483647.0),
      opt_int("vocab_pad_multiple", 64, "pad the vocabulary to a multiple of this (Vp)", 1, 1 << 20),
      opt_float("init_std", 0.02, "std of the normal init of every weight matrix and table", 0.0),
      opt_float("norm_eps", 1e-5, "RMSNorm epsilon (Llama 1e-5 or 1e-6, Qwen2 1e-6)", 0.0, 1.0),
      opt_float("rope_theta", 10000.0, "RoPE base (Llama 2 10000, Llama 3 500000, Qwen2 1000000)", 1.0, 1e12),
      opt_bool("qkv_bias", false, "biases on the q, k and v projections (Qwen2)"),
      opt_bool("tie_embeddings", false, "the output head reads the token embedding (no head.weight)"),
      opt_path("init_from", "",
               "start from a Hugging Face LlamaForCausalLM / Qwen2ForCausalLM folder (config.json + "
               "model.safetensors, as weft export writes it) instead of the random init; a resumed run takes its "
               "checkpoint instead"),
  };
  const OptionSchema moe =
      nn::moe_schema("experts E of the mixture-of-experts MLPs, each a SwiGLU of width ffn_hidden (0 = dense MLPs only)");
  schema.insert(schema.end() - 1, moe.begin(), moe.end());  // before init_from
  return schema;
}

LlamaConfig llama_config(const Options& o, int64_t vocab_size, const LayerProvider* layers) {
  LlamaConfig c;
  c.layers = o.get_int("layers");
  c.hidden = o.get_int("hidden");
  c.heads = o.get_int("heads");
  c.kv_heads = o.get_int("kv_heads");
  c.ffn_hidden = o.get_int("ffn_hidden");
  c.seq_length = o.get_int("seq_length");
  c.init_std = static_cast<float>(o.get_float("init_std"));
  c.norm_eps = static_cast<float>(o.get_float("norm_eps"));
  c.rope_theta = static_cast<float>(o.get_float("rope_theta"));
  c.qkv_bias = o.get_bool("qkv_bias");
  c.tie_embeddings = o.get_bool("tie_embeddings");
  const int64_t pad = o.get_int("vocab_pad_multiple");
  if (c.layers < 1) o.fail("layers", "layers " + num(c.layers) + " must be >= 1");
  if (c.hidden < 1) o.fail("hidden", "hidden " + num(c.hidden) + " must be >= 1");
  if (c.heads < 1) o.fail("heads", "heads " + num(c.heads) + " must be >= 1");
  if (c.seq_length < 1) o.fail("seq_length", "seq_length " + num(c.seq_length) + " must be >= 1");
  if (pad < 1) o.fail("vocab_pad_multiple", "vocab_pad_multiple " + num(pad) + " must be >= 1");
  if (!(c.init_std > 0.f)) o.fail("init_std", "init_std " + std::to_string(c.init_std) + " must be > 0");
  if (!(c.norm_eps > 0.f)) o.fail("norm_eps", "norm_eps " + std::to_string(c.norm_eps) + " must be > 0");
  if (c.hidden % c.heads != 0)
    o.fail("heads", "hidden " + num(c.hidden) + " is not divisible by heads " + num(c.heads));
  if (c.head_dim() % 2 != 0)
    o.fail("heads", "head dimension hidden / heads = " + num(c.hidden) + " / " + num(c.heads) + " = " +
                        num(c.head_dim()) + " is odd; rotary embeddings rotate pairs, so it must be even");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.heads % c.kv_heads != 0)
    o.fail("kv_heads", "heads " + num(c.heads) + " is not divisible by kv_heads " + num(c.kv_heads));
  if (c.ffn_hidden == 0) c.ffn_hidden = (8 * c.hidden / 3 + 63) / 64 * 64;
  const int64_t tp = layers ? layers->tp_size() : 1;
  if (c.heads % tp != 0)
    o.fail("heads", "heads " + num(c.heads) + " is not divisible by parallel.tensor " + num(tp) +
                        " (each tensor-parallel rank holds whole heads)");
  if (c.kv_heads % tp != 0)
    o.fail("kv_heads", "kv_heads " + num(c.kv_heads) + " is not divisible by parallel.tensor " + num(tp) +
                           " (each tensor-parallel rank holds whole kv heads; they are not replicated)");
  if (c.ffn_hidden % tp != 0)
    o.fail("ffn_hidden", "ffn_hidden " + num(c.ffn_hidden) + " is not divisible by parallel.tensor " + num(tp));
  if (layers && layers->sequence_parallel() && c.seq_length % tp != 0)
    o.fail("seq_length", "seq_length " + num(c.seq_length) + " is not divisible by parallel.tensor " + num(tp) +
                             " (sequence parallelism splits the sequence)");
  if (vocab_size < 1)
    throw Error(o.section() + ": the tokenizer reports a vocabulary of " + num(vocab_size) +
                " tokens; the model needs at least 1");
  const int64_t own_vocab = o.get_int("vocab_size");
  if (own_vocab != 0 && own_vocab < vocab_size)
    o.fail("vocab_size", "vocab_size " + num(own_vocab) + " is smaller than the tokenizer's vocabulary of " +
                             num(vocab_size));
  c.vocab = own_vocab != 0 ? own_vocab : vocab_size;
  c.moe = nn::read_moe_options(o, layers);
  if (pad > (int64_t{1} << 31) / tp)
    o.fail("vocab_pad_multiple", "vocab_pad_multiple " + num(pad) + " x parallel.tensor " + num(tp) +
                                     " exceeds the int32 token ids");
  const int64_t multiple = pad * tp;  // every vocabulary shard a multiple of the pad (Megatron)
  c.padded_vocab = (c.vocab + multiple - 1) / multiple * multiple;
  return c;
}

// ---------------------------------------------------------------- RmsNorm

RmsNorm::RmsNorm(std::string name, int64_t dim, float eps) : dim_(dim), eps_(eps) {
  weight_ = nn::make_param(std::move(name) + ".weight", {dim}, InitKind::Ones, 0.f, false);
}

Tensor RmsNorm::forward(Context& ctx, const Tensor& x) {
  WEFT_ASSERT(x.defined() && x.dtype() == DType::F32 && x.dim(-1) == dim_, "RmsNorm input must be [..., C] f32");
  Backend& be = ctx.backend();
  const int64_t n = x.numel() / dim_;
  // 16-bit modes normalise (and keep for backward) x rounded to the compute dtype.
  Tensor xs = nn::compute_copy(be, x, weight_.data.dtype(), MemCategory::Activation);  // [..., C]
  Tensor y = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);  // [..., C]
  Tensor rstd = be.alloc_uninitialized({n}, DType::F32, MemCategory::Activation);     // [N]
  if (n > 0) be.rmsnorm_forward(f32(y), f32(rstd), TypedPtr::of(xs), nn::weight_ptr(weight_), n, dim_, eps_);
  ctx.save(this, {xs, rstd});
  return y;
}

Tensor RmsNorm::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  auto& saved = ctx.saved(this);
  Tensor x = saved[0], rstd = saved[1];
  WEFT_ASSERT(dy.numel() == x.numel(), "RmsNorm dy does not match its input");
  const int64_t n = x.numel() / dim_;
  Tensor dx = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Workspace);
  if (n > 0)
    nn::add_to_grad(be, weight_, [&](float* dw) {
      be.rmsnorm_backward(f32(dx), dw, f32(dy), TypedPtr::of(x), nn::weight_ptr(weight_), f32(rstd), n, dim_);
    });
  ctx.release(this);
  nn::grad_ready(ctx, weight_);
  return dx;
}

// ---------------------------------------------------------------- attention

LlamaAttention::LlamaAttention(const std::string& name, const LlamaConfig& c, LayerProvider& layers)
    : heads_(c.heads),
      kv_heads_(c.kv_heads),
      head_dim_(c.head_dim()),
      rope_theta_(c.rope_theta),
      sequence_parallel_(layers.sequence_parallel()) {
  const int64_t qw = c.heads * head_dim_, kvw = c.kv_heads * head_dim_;
  q_ = layers.column_linear(LinearSpec{name + ".q", c.hidden, qw, c.qkv_bias, c.init_std});
  k_ = layers.column_linear(LinearSpec{name + ".k", c.hidden, kvw, c.qkv_bias, c.init_std});
  v_ = layers.column_linear(LinearSpec{name + ".v", c.hidden, kvw, c.qkv_bias, c.init_std});
  o_ = layers.row_linear(LinearSpec{name + ".o", qw, c.hidden, false, c.init_std});
}

Tensor LlamaAttention::forward(Context& ctx, const Tensor& x) {
  WEFT_ASSERT(x.shape().size() == 3, "attention input must be [B,T,C], got " + shape_str(x.shape()));
  Backend& be = ctx.backend();
  const int64_t d = head_dim_;
  Tensor qkv, out, lse;
  {
    // [B,T,C]: cast once in a 16-bit mode, so q, k and v keep one 16-bit copy between them
    const DType dt = nn::weights_dtype(*q_);
    const Tensor xs = sequence_parallel_ ? x : nn::compute_copy(be, x, dt, MemCategory::Activation);
    Tensor q = q_->forward(ctx, xs);  // [B,T,h*D]: this rank's heads, the whole sequence
    Tensor k = k_->forward(ctx, xs);  // [B,T,kv*D]
    Tensor v = v_->forward(ctx, xs);  // [B,T,kv*D]
    const int64_t b = q.dim(0), t = q.dim(1), h = q.dim(2) / d, kv = k.dim(2) / d;
    // packed q|k|v [B,T,3*h*D], kept in the compute dtype (what attention reads
    // forward and backward): a 16-bit mode keeps it at 2 bytes
    Tensor packed = be.alloc_uninitialized({b, t, 3 * h * d}, DType::F32,
                                           dt == DType::F32 ? MemCategory::Activation : MemCategory::Workspace);
    out = be.alloc_uninitialized({b, t, h * d}, DType::F32, MemCategory::Activation);
    lse = be.alloc_uninitialized({b, h, t}, DType::F32, MemCategory::Activation);
    if (b * t > 0) {
      be.rope_forward(f32(q), f32(q), b, t, h, d, rope_theta_);  // in place
      be.rope_forward(f32(k), f32(k), b, t, kv, d, rope_theta_);
      be.gqa_pack(f32(packed), f32(q), f32(k), f32(v), b, t, h, kv, d);
    }
    qkv = nn::compute_copy(be, packed, dt, MemCategory::Activation);
    if (b * t > 0) be.attention_forward(f32(out), f32(lse), TypedPtr::of(qkv), b, t, h * d, h);
  }
  // The output as o reads it (16-bit in a 16-bit mode, one copy for both:
  // attention's backward reads it too)
  out = nn::compute_copy(be, out, nn::weights_dtype(*o_), MemCategory::Activation);
  ctx.save(this, {qkv, out, lse});
  return o_->forward(ctx, out);  // [B,T,C]
}

Tensor LlamaAttention::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  const int64_t d = head_dim_;
  Tensor dq, dk, dv;
  {
    Tensor dout = o_->backward(ctx, dy);  // [B,T,h*D]
    auto& saved = ctx.saved(this);
    const Tensor qkv = saved[0], out = saved[1], lse = saved[2];
    ctx.release(this);
    const int64_t b = qkv.dim(0), t = qkv.dim(1), h = lse.dim(1);
    const int64_t kv = h * kv_heads_ / heads_;  // this rank's kv heads (both split evenly over tp)
    WEFT_ASSERT(dout.numel() == out.numel(), "attention dy does not match its output");
    Tensor dqkv = be.alloc_uninitialized(qkv.shape(), DType::F32, MemCategory::Workspace);  // [B,T,3*h*D] fp32
    dq = be.alloc_uninitialized({b, t, h * d}, DType::F32, MemCategory::Workspace);
    dk = be.alloc_uninitialized({b, t, kv * d}, DType::F32, MemCategory::Workspace);
    dv = be.alloc_uninitialized({b, t, kv * d}, DType::F32, MemCategory::Workspace);
    if (b * t > 0) {
      be.attention_backward(f32(dqkv), f32(dout), TypedPtr::of(qkv), TypedPtr::of(out), f32(lse), b, t, h * d, h);
      be.gqa_unpack(f32(dq), f32(dk), f32(dv), f32(dqkv), b, t, h, kv, d);
      be.rope_backward(f32(dq), f32(dq), b, t, h, d, rope_theta_);
      be.rope_backward(f32(dk), f32(dk), b, t, kv, d, rope_theta_);
    }
  }
  // The three projections read the same input: their input gradients add up.
  Tensor dx = v_->backward(ctx, dv);
  dv = Tensor();
  Tensor dxk = k_->backward(ctx, dk);
  be.accumulate(f32(dx), f32(dxk), dx.numel());
  dxk = Tensor();
  Tensor dxq = q_->backward(ctx, dq);
  be.accumulate(f32(dx), f32(dxq), dx.numel());
  return dx;
}

void LlamaAttention::collect_params(std::vector<Param*>& out) {
  q_->collect_params(out);
  k_->collect_params(out);
  v_->collect_params(out);
  o_->collect_params(out);
}

// ---------------------------------------------------------------- MLP

SwiGluMlp::SwiGluMlp(const std::string& name, const LlamaConfig& c, LayerProvider& layers)
    : sequence_parallel_(layers.sequence_parallel()) {
  gate_ = layers.column_linear(LinearSpec{name + ".gate", c.hidden, c.ffn_hidden, false, c.init_std});
  up_ = layers.column_linear(LinearSpec{name + ".up", c.hidden, c.ffn_hidden, false, c.init_std});
  down_ = layers.row_linear(LinearSpec{name + ".down", c.ffn_hidden, c.hidden, false, c.init_std});
}

Tensor SwiGluMlp::forward(Context& ctx, const Tensor& x) {
  Backend& be = ctx.backend();
  // [..., C]: cast once in a 16-bit mode, so gate and up keep one 16-bit copy between them
  const Tensor xs =
      sequence_parallel_ ? x : nn::compute_copy(be, x, nn::weights_dtype(*gate_), MemCategory::Activation);
  // gate and up [..., F/p] in the compute dtype: what SwiGLU reads forward and
  // backward, so a 16-bit mode keeps them at 2 bytes (as GeLU's input)
  const DType dt = nn::weights_dtype(*gate_);
  Tensor g = nn::compute_copy(be, gate_->forward(ctx, xs), dt, MemCategory::Activation);
  Tensor u = nn::compute_copy(be, up_->forward(ctx, xs), dt, MemCategory::Activation);
  Tensor a = be.alloc_uninitialized(g.shape(), DType::F32, MemCategory::Activation);  // silu(g) * u
  if (g.numel() > 0) be.swiglu_forward(f32(a), TypedPtr::of(g), TypedPtr::of(u), g.numel());
  ctx.save(this, {g, u});
  return down_->forward(ctx, a);  // [..., C]
}

Tensor SwiGluMlp::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  Tensor dg, du;
  {
    Tensor da = down_->backward(ctx, dy);  // [..., F/p]
    auto& saved = ctx.saved(this);
    const Tensor g = saved[0], u = saved[1];
    ctx.release(this);
    WEFT_ASSERT(da.numel() == g.numel(), "SwiGLU gradient does not match its activation");
    dg = be.alloc_uninitialized(g.shape(), DType::F32, MemCategory::Workspace);
    du = be.alloc_uninitialized(g.shape(), DType::F32, MemCategory::Workspace);
    if (g.numel() > 0) be.swiglu_backward(f32(dg), f32(du), TypedPtr::of(g), TypedPtr::of(u), f32(da), g.numel());
  }
  Tensor dx = up_->backward(ctx, du);
  du = Tensor();
  Tensor dxg = gate_->backward(ctx, dg);
  be.accumulate(f32(dx), f32(dxg), dx.numel());
  return dx;
}

void SwiGluMlp::collect_params(std::vector<Param*>& out) {
  gate_->collect_params(out);
  up_->collect_params(out);
  down_->collect_params(out);
}

// ---------------------------------------------------------------- block

LlamaBlock::LlamaBlock(const std::string& name, const LlamaConfig& c, LayerProvider& layers,
                       std::unique_ptr<Module> mlp)
    : attn_norm_(name + ".attn_norm", c.hidden, c.norm_eps),
      attn_(name + ".attn", c, layers),
      mlp_norm_(name + ".mlp_norm", c.hidden, c.norm_eps),
      mlp_(std::move(mlp)) {}

Tensor LlamaBlock::forward(Context& ctx, const Tensor& x) {
  Backend& be = ctx.backend();
  // Each residual sum is allocated once its addend exists (not live beside the sublayer's transients).
  Tensor x2;  // [B,T,C] = x + attn(norm(x))
  {
    Tensor a = attn_.forward(ctx, attn_norm_.forward(ctx, x));
    x2 = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);
    be.add(f32(x2), f32(x), f32(a), x.numel());
  }
  Tensor y;  // [B,T,C] = x2 + mlp(norm(x2))
  {
    Tensor m = mlp_->forward(ctx, mlp_norm_.forward(ctx, x2));
    y = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);
    be.add(f32(y), f32(x2), f32(m), x.numel());
  }
  return y;
}

Tensor LlamaBlock::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  Tensor dx2 = mlp_norm_.backward(ctx, mlp_->backward(ctx, dy));  // fresh: the residual adds in place
  be.accumulate(f32(dx2), f32(dy), dy.numel());
  Tensor dx = attn_norm_.backward(ctx, attn_.backward(ctx, dx2));
  be.accumulate(f32(dx), f32(dx2), dx2.numel());
  return dx;
}

void LlamaBlock::collect_params(std::vector<Param*>& out) {
  attn_norm_.collect_params(out);
  attn_.collect_params(out);
  mlp_norm_.collect_params(out);
  mlp_->collect_params(out);
}

// ---------------------------------------------------------------- embedding, head

LlamaEmbedding::LlamaEmbedding(const LlamaConfig& c, LayerProvider& layers)
    : embed_(layers.embedding("embed", c.padded_vocab, c.hidden, c.init_std)) {
  embed_->weight().vocab_rows = c.vocab;
}

LlamaHead::LlamaHead(const LlamaConfig& c, Param* tied, LayerProvider& layers)
    : norm_("norm", c.hidden, c.norm_eps), tied_(tied) {
  Param* table = tied;
  if (!tied) {
    // A table built like the embedding's (rows split over tp): the output layer reads its weight.
    own_ = layers.embedding("head", c.padded_vocab, c.hidden, c.init_std);
    own_->weight().vocab_rows = c.vocab;
    table = &own_->weight();
  }
  output_ = layers.tied_output_loss(*table, c.vocab);
}

Tensor LlamaHead::forward(Context& ctx, const Tensor& x) {
  Tensor out = output_->forward(ctx, norm_.forward(ctx, x));  // losses [B,T] | logits [B,T,Vp]
  if (!ctx.targets.defined()) ctx.release(&norm_);            // eval / generation: no backward
  return out;
}

Tensor LlamaHead::backward(Context& ctx, const Tensor& dy) {
  Tensor dx = norm_.backward(ctx, output_->backward(ctx, dy));
  if (own_) nn::grad_ready(ctx, own_->weight());  // a tied table is reported by the embedding
  return dx;
}

void LlamaHead::collect_params(std::vector<Param*>& out) {
  norm_.collect_params(out);
  if (own_) own_->collect_params(out);
}

void LlamaHead::collect_shared_params(std::vector<Param*>& out) {
  if (tied_) out.push_back(tied_);
}

// ---------------------------------------------------------------- model

// Block i's MLP: SwiGLU, or a mixture of SwiGLU experts of the same width.
std::unique_ptr<Module> LlamaModel::mlp(int64_t i, LayerProvider& layers) const {
  const LlamaConfig& c = config_;
  const std::string name = "blocks." + std::to_string(i) + ".mlp";
  if (!c.moe.is_moe_block(i)) return std::make_unique<SwiGluMlp>(name, c, layers);
  nn::MoeSpec spec = nn::moe_spec(c.moe, name, c.hidden, c.init_std, c.init_std, parallel_);
  spec.make_expert = [c](const std::string& expert, LayerProvider& l) -> std::unique_ptr<Module> {
    return std::make_unique<SwiGluMlp>(expert, c, l);
  };
  return std::make_unique<nn::MoeMLP>(spec, layers);
}

LlamaModel::LlamaModel(const LlamaConfig& config, LayerProvider* layers, const ParallelEnv* parallel)
    : config_(config), parallel_(parallel) {
  const LlamaConfig& c = config_;
  WEFT_ASSERT(c.layers >= 1 && c.hidden >= 1 && c.heads >= 1 && c.hidden % c.heads == 0 &&
                  c.head_dim() % 2 == 0 && c.kv_heads >= 1 && c.heads % c.kv_heads == 0 && c.ffn_hidden >= 1,
              "llama: invalid config");
  WEFT_ASSERT(c.vocab >= 1 && c.padded_vocab >= c.vocab, "llama: invalid vocabulary sizes");
  LayerProvider& provider = layers ? *layers : serial_;
  tp_ = provider.tp_size();
  sequence_parallel_ = provider.sequence_parallel();
  WEFT_ASSERT(c.heads % tp_ == 0 && c.kv_heads % tp_ == 0 && c.ffn_hidden % tp_ == 0 && c.padded_vocab % tp_ == 0,
              "llama: config does not split over tp");
  embedding_ = std::make_unique<LlamaEmbedding>(c, provider);
  for (int64_t i = 0; i < c.layers; ++i)
    blocks_.push_back(std::make_unique<LlamaBlock>("blocks." + std::to_string(i), c, provider, mlp(i, provider)));
  head_ = std::make_unique<LlamaHead>(c, c.tie_embeddings ? &embedding_->table() : nullptr, provider);
}

std::vector<Module*> LlamaModel::layers() {
  std::vector<Module*> out{embedding_.get()};
  for (auto& b : blocks_) out.push_back(b.get());
  out.push_back(head_.get());
  return out;
}

std::vector<Param*> LlamaModel::params() {
  std::vector<Param*> out;
  for (Module* m : layers()) m->collect_params(out);
  return out;
}

ModelSummary LlamaModel::summary() const {
  const LlamaConfig& c = config_;
  const int64_t C = c.hidden, L = c.layers, T = c.seq_length, Vp = c.padded_vocab, H = c.heads, F = c.ffn_hidden;
  const int64_t D = c.head_dim(), KV = c.kv_heads;
  const int64_t attn = C * H * D + 2 * C * KV * D + H * D * C + (c.qkv_bias ? H * D + 2 * KV * D : 0);
  const int64_t per_block = 2 * C + attn + 3 * C * F;
  const int64_t table = Vp * C;
  ModelSummary s;
  s.params = table * (c.tie_embeddings ? 1 : 2) + L * per_block + C;
  // 6 flops per matmul parameter per token (the embedding lookup is no matmul
  // unless the head reads it), plus causal attention 6*L*T*H*D.
  s.flops_per_token = 6 * (s.params - (c.tie_embeddings ? 0 : table)) + 6 * L * T * H * D;
  // An MoE block holds E SwiGLU experts (3CF each) and a router [E, C] instead
  // of one MLP; a token runs through k of them.
  for (int64_t i = 0; i < L; ++i) {
    if (!c.moe.is_moe_block(i)) continue;
    ++s.moe_layers;
    s.moe_experts = c.moe.experts;
    s.params += (c.moe.experts - 1) * 3 * C * F + c.moe.experts * C;
    s.flops_per_token += 6 * ((c.moe.top_k - 1) * 3 * C * F + c.moe.experts * C);
  }
  // Saved activations per token on one tp rank (p), as the modules keep them:
  //   per block: attn_norm in + rstd (C+1), q/k/v input (C), packed qkv (3HD/p), attention out (HD/p),
  //              lse (H/p), mlp_norm in + rstd (C+1), gate/up input (C), gate, up (2F/p), down input (F/p)
  //   head: norm in + rstd (C+1), output input (C), logits (Vp/p), loss (1); ids, targets (2 i32)
  // A 16-bit compute dtype keeps the RMSNorm inputs, the linear inputs (q/k/v
  // input, attention out, gate/up input, down input, output input), packed
  // qkv, gate and up, and dlogits (in place of the logits) in 2 bytes;
  // rstd, lse and loss stay fp32.
  const int64_t p = tp_, norm = sequence_parallel_ ? (C + 1) / p : C + 1;
  const int64_t block = 2 * norm + 2 * C + (4 * H * D + H + 3 * F) / p;
  const int64_t norm16 = sequence_parallel_ ? (2 * C + 4) / p : 2 * C + 4;  // bytes: 16-bit input, fp32 rstd
  const int64_t block16 = 2 * norm16 + 4 * (H / p) + 2 * (2 * C + (4 * H * D + 3 * F) / p);  // bytes
  s.act_bytes_per_sample = (L * block + norm + C + Vp / p + 1 + 2) * T * 4;
  s.act16_bytes_per_sample = (L * block16 + norm16 + 4 * (1 + 2) + 2 * (C + Vp / p)) * T;
  s.seq_length = T;
  s.hidden = C;
  s.vocab = c.vocab;
  s.padded_vocab = Vp;
  return s;
}

HfLayout LlamaModel::hugging_face() const {
  const LlamaConfig& c = config_;
  if (c.moe.experts > 0)
    throw Error("model.moe_experts " + num(c.moe.experts) +
                ": LlamaForCausalLM and Qwen2ForCausalLM have no mixture-of-experts blocks (only dense models "
                "convert)");
  const bool qwen2 = c.qkv_bias;  // Qwen2 is Llama with q, k, v biases
  HfLayout h;
  h.architecture = qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  h.readable = {"LlamaForCausalLM", "Qwen2ForCausalLM"};
  const std::string heads = num(c.heads);
  h.config = {
      {"model_type", qwen2 ? "\"qwen2\"" : "\"llama\""},
      {"vocab_size", num(c.vocab), true, "", "vocab_size"},
      {"hidden_size", num(c.hidden), true, "", "hidden"},
      {"intermediate_size", num(c.ffn_hidden), true, "", "ffn_hidden"},
      {"num_hidden_layers", num(c.layers), true, "", "layers"},
      {"num_attention_heads", heads, true, "", "heads"},
      {"num_key_value_heads", num(c.kv_heads), true, heads, "kv_heads"},
      {"head_dim", num(c.head_dim()), true, num(c.head_dim()), "heads"},
      {"hidden_act", "\"silu\"", true, "\"silu\""},
      {"rms_norm_eps", hf_json_number(c.norm_eps), true, "1e-06", "norm_eps"},
      {"rope_theta", hf_json_number(c.rope_theta), true, "10000.0", "rope_theta"},
      {"rope_scaling", "null", true, "null"},
      {"max_position_embeddings", num(c.seq_length)},
      {"tie_word_embeddings", c.tie_embeddings ? "true" : "false", true, "false", "tie_embeddings"},
      {"attention_dropout", "0.0"},
      {"initializer_range", hf_json_number(c.init_std)},
      {"torch_dtype", "\"float32\""},
  };
  if (qwen2) {
    h.config.push_back({"use_sliding_window", "false", true, "false"});
  } else {
    h.config.push_back({"attention_bias", "false", true, "false", "qkv_bias"});
    h.config.push_back({"mlp_bias", "false", true, "false"});
  }
  // nn.Linear's [out, in] on both sides: no transposes; RoPE is rotate-half on both sides: no q/k permutation.
  h.tensors.push_back({"embed.weight", "model.embed_tokens.weight", false, c.vocab});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string w = "blocks." + num(i) + ".", hf = "model.layers." + num(i) + ".";
    h.tensors.push_back({w + "attn_norm.weight", hf + "input_layernorm.weight"});
    for (const char* p : {"q", "k", "v"}) {
      h.tensors.push_back({w + "attn." + p + ".weight", hf + "self_attn." + p + "_proj.weight"});
      if (c.qkv_bias) h.tensors.push_back({w + "attn." + p + ".bias", hf + "self_attn." + p + "_proj.bias"});
    }
    h.tensors.push_back({w + "attn.o.weight", hf + "self_attn.o_proj.weight"});
    h.tensors.push_back({w + "mlp_norm.weight", hf + "post_attention_layernorm.weight"});
    for (const char* p : {"gate", "up", "down"})
      h.tensors.push_back({w + "mlp." + p + ".weight", hf + "mlp." + p + "_proj.weight"});
  }
  h.tensors.push_back({"norm.weight", "model.norm.weight"});
  if (!c.tie_embeddings) h.tensors.push_back({"head.weight", "lm_head.weight", false, c.vocab});
  return h;
}

std::unique_ptr<Model> make_llama(const Options& options, const ModelEnv& env) {
  LlamaConfig config = llama_config(options, env.vocab_size, env.layers);
  nn::check_moe_split(config.moe, options, env.parallel);
  return std::make_unique<LlamaModel>(config, env.layers, env.parallel);
}

}  // namespace weft::llama
