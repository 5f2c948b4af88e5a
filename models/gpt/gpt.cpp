#include "gpt.hpp"

#include <cmath>
#include <string>

#include "weft/error.hpp"
#include "weft/moe.hpp"
#include "weft/rng.hpp"

namespace weft::gpt {

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

}  // namespace

// ---------------------------------------------------------------- options

OptionSchema gpt_schema() {
  OptionSchema schema = {
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
      opt_string("recompute", "none",
                 "activation recomputation: full = a block keeps only its input and reruns its forward in "
                 "backward; selective = none here (the fused attention never keeps the score matrix)",
                 {"none", "selective", "full"}),
      opt_int("recompute_layers", 0, "with recompute = full: the first this many blocks (0 = all)", 0, 1 << 20),
      opt_float("hidden_dropout", 0.0,
                "dropout on the embedding output and on each attention and MLP output before its residual add",
                0.0, 0.99),
      opt_float("attention_dropout", 0.0, "dropout on the attention probabilities", 0.0, 0.99),
      opt_int("max_position_embeddings", 0, "rows of the position table wpe (0 = seq_length; at least seq_length)",
              0, 1 << 20),
      opt_bool("untie_embeddings", false, "an output weight of its own (output.weight) instead of wte"),
      opt_bool("bias", true, "biases in the attention and MLP Linears (false: Megatron's --disable-bias-linear)"),
      opt_float("norm_eps", 1e-5, "LayerNorm epsilon", 0.0, 1.0),
      opt_string("gelu", "tanh", "GeLU of the MLP: \"tanh\" (GPT-2's approximation) or \"erf\" (exact, Megatron's)",
                 {"tanh", "erf"}),
      opt_path("init_from", "",
               "start from a Hugging Face GPT2LMHeadModel folder (config.json + model.safetensors, as weft export "
               "writes it) instead of the random init; a resumed run takes its checkpoint instead"),
  };
  const OptionSchema moe = nn::moe_schema("experts E of the mixture-of-experts MLPs (0 = dense MLPs only)");
  schema.insert(schema.begin() + 7, moe.begin(), moe.end());  // after init_std, as before
  return schema;
}

GptConfig gpt_config(const Options& o, int64_t vocab_size, const LayerProvider* layers) {
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
  const int64_t tp = layers ? layers->tp_size() : 1;
  if (c.hidden % tp != 0)
    o.fail("hidden", "hidden " + std::to_string(c.hidden) + " is not divisible by parallel.tensor " + std::to_string(tp));
  if (c.heads % tp != 0)
    o.fail("heads", "heads " + std::to_string(c.heads) + " is not divisible by parallel.tensor " + std::to_string(tp) +
                        " (each tensor-parallel rank holds whole heads)");
  if (layers && layers->sequence_parallel() && c.seq_length % tp != 0)
    o.fail("seq_length", "seq_length " + std::to_string(c.seq_length) + " is not divisible by parallel.tensor " +
                             std::to_string(tp) + " (sequence parallelism splits the sequence)");
  if (vocab_size < 1)
    throw Error(o.section() + ": the tokenizer reports a vocabulary of " + std::to_string(vocab_size) +
                " tokens; the model needs at least 1");
  c.recompute = o.get_string("recompute");
  c.recompute_layers = o.get_int("recompute_layers");
  if (c.recompute_layers > c.layers)
    o.fail("recompute_layers", "recompute_layers " + std::to_string(c.recompute_layers) + " exceeds layers " +
                                   std::to_string(c.layers));
  c.moe = nn::read_moe_options(o, layers);
  const int64_t own_vocab = o.get_int("vocab_size");
  if (own_vocab != 0 && own_vocab < vocab_size)
    o.fail("vocab_size", "vocab_size " + std::to_string(own_vocab) + " is smaller than the tokenizer's vocabulary of " +
                             std::to_string(vocab_size));
  if (own_vocab > (int64_t{1} << 31) - 1)
    o.fail("vocab_size", "vocab_size " + std::to_string(own_vocab) + " exceeds the int32 token ids");
  c.vocab = own_vocab != 0 ? own_vocab : vocab_size;
  c.block.hidden_dropout = static_cast<float>(o.get_float("hidden_dropout"));
  c.block.attention_dropout = static_cast<float>(o.get_float("attention_dropout"));
  c.block.bias = o.get_bool("bias");
  c.block.norm_eps = static_cast<float>(o.get_float("norm_eps"));
  c.block.gelu_erf = o.get_string("gelu") == "erf";
  c.untie = o.get_bool("untie_embeddings");
  c.max_positions = o.get_int("max_position_embeddings");
  if (c.max_positions != 0 && c.max_positions < c.seq_length)
    o.fail("max_position_embeddings", "max_position_embeddings " + std::to_string(c.max_positions) +
                                          " is smaller than seq_length " + std::to_string(c.seq_length));
  if (!(c.block.norm_eps > 0.f)) o.fail("norm_eps", "must be > 0");
  if (c.moe.experts > 0 && (!c.block.bias || c.block.gelu_erf))
    o.fail(c.block.bias ? "gelu" : "bias",
           "mixture-of-experts MLPs keep their biases and the tanh GeLU in this version (moe_experts " +
               std::to_string(c.moe.experts) + ")");
  if (pad > (int64_t{1} << 31) / tp)
    o.fail("vocab_pad_multiple", "vocab_pad_multiple " + std::to_string(pad) + " x parallel.tensor " +
                                     std::to_string(tp) + " exceeds the int32 token ids");
  // Megatron's rule: every tensor-parallel shard of the vocabulary is a multiple of the pad.
  const int64_t multiple = pad * tp;
  c.padded_vocab = (c.vocab + multiple - 1) / multiple * multiple;
  return c;
}

// ---------------------------------------------------------------- embedding

GptEmbedding::GptEmbedding(const GptConfig& c, LayerProvider& layers)
    : seq_length_(c.seq_length),
      hidden_(c.hidden),
      layers_(layers),
      wte_(layers.embedding("wte", c.padded_vocab, c.hidden, c.init_std)),
      wpe_(nn::make_param("wpe.weight", {c.positions(), c.hidden}, InitKind::Normal, c.init_std, true)),
      dropout_(c.block.hidden_dropout),
      dropout_key_(dropout_site_key(c.block.seed, "embedding.dropout")) {
  wte_->weight().vocab_rows = c.vocab;
}

Tensor GptEmbedding::forward(Context& ctx, const Tensor& ids) {
  WEFT_ASSERT(ids.defined() && ids.dtype() == DType::I32 && ids.shape().size() == 2,
              "gpt: input must be token ids [B,T] i32");
  const int64_t t = ids.dim(1);
  WEFT_ASSERT(t <= seq_length_, "gpt: sequence of " + std::to_string(t) + " tokens exceeds seq_length " +
                                    std::to_string(seq_length_));
  Tensor x = wte_->forward(ctx, ids);  // [B,t,C]: t = T, or T/tp under sequence parallelism
  // Position embedding: x viewed as [B, t*C] gets wpe[first : first + t] added to every row.
  const int64_t b = x.dim(0), local_t = x.dim(1);
  const int64_t first = layers_.sequence_parallel() ? layers_.tp_rank() * local_t : 0;
  Backend& be = ctx.backend();
  if (b * local_t > 0 && ctx.positions.defined()) {
    // Position ids per token (reset at documents): row bi gets wpe[positions[bi, first + t]].
    Tensor pe = be.alloc_uninitialized({local_t, hidden_}, DType::F32, MemCategory::Workspace);  // [t,C]
    const int64_t rows = wpe_.shape[0], T = ctx.positions.dim(1);
    for (int64_t bi = 0; bi < b; ++bi) {
      be.embedding_forward(f32(pe), ctx.positions.data<int32_t>() + bi * T + first, TypedPtr::of(wpe_.data), local_t,
                           hidden_, 0, rows);
      be.accumulate(f32(x) + bi * local_t * hidden_, f32(pe), local_t * hidden_);
    }
  } else if (b * local_t > 0) {
    be.add_bias(f32(x), TypedPtr::of(wpe_.data.view(first * hidden_, {local_t * hidden_})), b, local_t * hidden_);
  }
  nn::apply_dropout(ctx, x, dropout_, dropout_key_, first);
  return x;
}

Tensor GptEmbedding::backward(Context& ctx, const Tensor& dy) {
  WEFT_ASSERT(dy.defined() && dy.shape().size() == 3 && dy.dim(2) == hidden_, "gpt: embedding dy must be [B,T,C]");
  const int64_t b = dy.dim(0), local_t = dy.dim(1);
  const int64_t first = layers_.sequence_parallel() ? layers_.tp_rank() * local_t : 0;
  Backend& be = ctx.backend();
  Tensor g = dy;  // [B,t,C]: dy through the dropout mask
  if (ctx.training && dropout_ > 0.f) {
    g = be.alloc_uninitialized(dy.shape(), DType::F32, MemCategory::Workspace);
    be.copy(g, dy);
    nn::apply_dropout(ctx, g, dropout_, dropout_key_, first);
  }
  if (b * local_t > 0) {
    nn::add_to_grad(be, wpe_, [&](float* dwpe) {
      if (ctx.positions.defined()) {
        const int64_t rows = wpe_.shape[0], T = ctx.positions.dim(1);
        for (int64_t bi = 0; bi < b; ++bi)  // dwpe[positions[bi, first + t]] += g[bi, t]
          be.embedding_backward(dwpe, ctx.positions.data<int32_t>() + bi * T + first, f32(g) + bi * local_t * hidden_,
                                local_t, hidden_, 0, rows);
      } else {  // dwpe[first : first + t] += sum_b g
        be.bias_grad(dwpe + first * hidden_, f32(g), b, local_t * hidden_);
      }
    });
  }
  wte_->backward(ctx, g);  // also reports wte ready: the head added its part earlier
  nn::grad_ready(ctx, wpe_);
  return Tensor();
}

void GptEmbedding::collect_params(std::vector<Param*>& out) {
  wte_->collect_params(out);
  out.push_back(&wpe_);
}

// ---------------------------------------------------------------- head

GptHead::GptHead(Param& wte, const GptConfig& c, LayerProvider& layers)
    : output_table_(c.untie ? layers.embedding("output", c.padded_vocab, c.hidden, c.init_std) : nullptr),
      wte_(output_table_ ? output_table_->weight() : wte),
      hidden_(c.hidden),
      lnf_("lnf", c.hidden, c.block.norm_eps),
      output_(layers.tied_output_loss(wte_, c.vocab)) {
  if (output_table_) output_table_->weight().vocab_rows = c.vocab;
}

Tensor GptHead::forward(Context& ctx, const Tensor& x) {
  WEFT_ASSERT(x.defined() && x.shape().size() == 3 && x.dim(2) == hidden_, "gpt: head input must be [B,T,C]");
  Tensor out = output_->forward(ctx, lnf_.forward(ctx, x));  // losses [B,T] | logits [B,T,Vp]
  if (!ctx.targets.defined()) ctx.release(&lnf_);             // eval / generation: no backward
  return out;
}

Tensor GptHead::backward(Context& ctx, const Tensor& dy) {
  Tensor dx = output_->backward(ctx, dy);             // [B,T,C]
  if (output_table_) nn::grad_ready(ctx, wte_);       // untied: the head's own output weight is final
  return lnf_.backward(ctx, dx);                      // [B,T,C]
}

void GptHead::collect_params(std::vector<Param*>& out) {
  lnf_.collect_params(out);
  if (output_table_) out.push_back(&output_table_->weight());
}

// ---------------------------------------------------------------- model

// Block i's MLP when it is a mixture of experts; null: the dense MLP.
std::unique_ptr<Module> GptModel::moe_mlp(int64_t i, LayerProvider& layers, float proj_std) const {
  const GptConfig& c = config_;
  if (!c.moe.is_moe_block(i)) return nullptr;
  const nn::MoeSpec spec =
      nn::moe_spec(c.moe, "blocks." + std::to_string(i) + ".mlp", c.hidden, c.init_std, proj_std, parallel_);
  return std::make_unique<nn::MoeMLP>(spec, layers);
}

GptModel::GptModel(const GptConfig& config, LayerProvider* layers, const ParallelEnv* parallel)
    : config_(config), parallel_(parallel) {
  const GptConfig& c = config_;
  WEFT_ASSERT(c.layers >= 1 && c.hidden >= 1 && c.heads >= 1 && c.hidden % c.heads == 0 && c.seq_length >= 1,
              "gpt: invalid config");
  WEFT_ASSERT(c.vocab >= 1 && c.padded_vocab >= c.vocab, "gpt: invalid vocabulary sizes");
  LayerProvider& provider = layers ? *layers : serial_;
  tp_ = provider.tp_size();
  sequence_parallel_ = provider.sequence_parallel();
  WEFT_ASSERT(c.heads % tp_ == 0 && c.padded_vocab % tp_ == 0, "gpt: config does not split over tp");
  const float proj_std = c.init_std / std::sqrt(2.f * static_cast<float>(c.layers));
  embedding_ = std::make_unique<GptEmbedding>(c, provider);
  for (int64_t i = 0; i < c.layers; ++i)
    blocks_.push_back(std::make_unique<nn::Block>("blocks." + std::to_string(i), c.hidden, c.heads, provider,
                                                  c.init_std, proj_std, moe_mlp(i, provider, proj_std), c.block));
  head_ = std::make_unique<GptHead>(embedding_->wte(), c, provider);
  for (int64_t i = 0; i < c.layers; ++i)
    recomputed_.push_back(c.recomputes(i) ? std::make_unique<nn::Recompute>(*blocks_[i]) : nullptr);
}

std::vector<Module*> GptModel::layers() {
  std::vector<Module*> out{embedding_.get()};
  for (size_t i = 0; i < blocks_.size(); ++i)
    out.push_back(recomputed_[i] ? static_cast<Module*>(recomputed_[i].get()) : blocks_[i].get());
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
  // ln1, qkv, proj, ln2, fc, proj: weights, the Linears' biases (9C, unless bias = false), the norms' 4C.
  const int64_t per_block = 12 * C * C + (c.block.bias ? 13 * C : 4 * C);
  const int64_t wpe = c.positions() * C;
  const int64_t output = c.untie ? Vp * C : 0;  // untied output weight
  ModelSummary s;
  s.params = Vp * C + wpe + L * per_block + 2 * C + output;  // wte counted once when tied
  // 6 flops per parameter per token (forward 2, backward 4; wpe, and wte when
  // untied, are lookups, not matmuls) plus attention scores and weighted sum:
  // forward 4*T*C per token per layer for full attention, halved for the
  // causal mask, times 3 for fwd+bwd = 6*L*T*C (the "12*L*T*C / 2" causal convention).
  s.flops_per_token = 6 * (s.params - wpe - (c.untie ? Vp * C : 0)) + 6 * L * T * C;
  // An MoE block holds E expert MLPs (8C^2 + 5C each) and a router [E, C] instead
  // of one MLP; a token runs through k of them.
  const int64_t mlp = 8 * C * C + 5 * C;
  for (int64_t i = 0; i < L; ++i) {
    if (!c.moe.is_moe_block(i)) continue;
    ++s.moe_layers;
    s.moe_experts = c.moe.experts;
    s.params += (c.moe.experts - 1) * mlp + c.moe.experts * C;
    s.flops_per_token += 6 * ((c.moe.top_k - 1) * mlp + c.moe.experts * C);
  }
  // Saved activations per token on one rank of tp (p), as the modules keep them:
  //   per block: ln1 in + mean/rstd (C+2), qkv in (C), qkv (3C/p), attn out (C/p), lse (H/p),
  //              ln2 in + mean/rstd (C+2), fc in (C), fc out (4C/p), gelu out (4C/p)
  //   head: lnf in + mean/rstd (C+2), lnf out (C), logits (Vp/p), loss (1); ids, targets (2 i32)
  // Sequence parallelism keeps the LayerNorm inputs and statistics on T/p tokens.
  // A 16-bit compute dtype keeps the LayerNorm inputs, the linear inputs (qkv
  // in, attn out, fc in, lnf out), qkv, GeLU's input and output and dlogits
  // (in place of the logits) in 2 bytes; statistics, lse and loss stay fp32.
  const int64_t p = tp_, ln = sequence_parallel_ ? (C + 2) / p : C + 2;
  const int64_t ln16 = sequence_parallel_ ? (2 * C + 8) / p : 2 * C + 8;  // bytes: 16-bit input, fp32 mean/rstd
  const int64_t block = 2 * ln + 2 * C + (12 * C + H) / p;
  const int64_t block16 = 2 * ln16 + 4 * (H / p) + 2 * (2 * C + 12 * C / p);  // bytes
  // A recomputed block keeps only its input (C, or C/p under sequence parallelism),
  // plus one block's activations while it is recomputed.
  int64_t blocks = 0, recomputed = 0;
  for (int64_t i = 0; i < L; ++i) c.recomputes(i) ? ++recomputed : ++blocks;
  const int64_t kept_input = sequence_parallel_ ? C / p : C;
  const int64_t per_token = blocks * block + recomputed * kept_input + (recomputed > 0 ? block : 0) + ln + C +
                            Vp / p + 1 + 2;
  const int64_t per_token16 = blocks * block16 + 4 * recomputed * kept_input + (recomputed > 0 ? block16 : 0) +
                              ln16 + 4 * (1 + 2) + 2 * (C + Vp / p);
  s.act_bytes_per_sample = per_token * T * 4;
  s.act16_bytes_per_sample = per_token16 * T;
  s.seq_length = T;
  s.hidden = C;
  s.vocab = c.vocab;
  s.padded_vocab = Vp;
  return s;
}

HfLayout GptModel::hugging_face() const {
  const GptConfig& c = config_;
  if (c.moe.experts > 0)
    throw Error("model.moe_experts " + std::to_string(c.moe.experts) +
                ": GPT2LMHeadModel has no mixture-of-experts blocks (only dense models convert)");
  if (!c.block.bias) throw Error("model.bias = false: GPT2LMHeadModel has biases on every Linear");
  const std::string n = std::to_string(c.positions());
  const std::string eps = hf_json_number(c.block.norm_eps);
  const std::string hidden_drop = hf_json_number(c.block.hidden_dropout);
  HfLayout h;
  h.architecture = "GPT2LMHeadModel";
  h.readable = {"GPT2LMHeadModel"};
  h.config = {
      {"model_type", "\"gpt2\""},
      {"vocab_size", std::to_string(c.vocab), true, "", "vocab_size"},
      {"n_embd", std::to_string(c.hidden), true, "", "hidden"},
      {"n_layer", std::to_string(c.layers), true, "", "layers"},
      {"n_head", std::to_string(c.heads), true, "", "heads"},
      {"n_positions", n, true, "", c.max_positions > 0 ? "max_position_embeddings" : "seq_length"},
      {"n_ctx", n},
      {"n_inner", "null", true, "null"},
      {"activation_function", c.block.gelu_erf ? "\"gelu\"" : "\"gelu_new\"", true, "\"gelu_new\"", "gelu"},
      {"layer_norm_epsilon", eps, true, "1e-05", "norm_eps"},
      {"tie_word_embeddings", c.untie ? "false" : "true", true, "true", "untie_embeddings"},
      {"scale_attn_weights", "true", true, "true"},
      {"scale_attn_by_inverse_layer_idx", "false", true, "false"},
      {"embd_pdrop", hidden_drop},
      {"resid_pdrop", hidden_drop},
      {"attn_pdrop", hf_json_number(c.block.attention_dropout)},
      {"initializer_range", hf_json_number(c.init_std)},
      {"torch_dtype", "\"float32\""},
  };
  // Conv1D stores y = x W + b with W [in, out]: weft's [out, in] matrices transposed.
  h.tensors.push_back({"wte.weight", "transformer.wte.weight", false, c.vocab});
  h.tensors.push_back({"wpe.weight", "transformer.wpe.weight"});
  for (int64_t i = 0; i < c.layers; ++i) {
    const std::string w = "blocks." + std::to_string(i) + ".", hf = "transformer.h." + std::to_string(i) + ".";
    for (const char* b : {"weight", "bias"}) {
      h.tensors.push_back({w + "ln1." + b, hf + "ln_1." + b});
      h.tensors.push_back({w + "attn.qkv." + b, hf + "attn.c_attn." + b, b[0] == 'w'});  // q | k | v along out
      h.tensors.push_back({w + "attn.proj." + b, hf + "attn.c_proj." + b, b[0] == 'w'});
      h.tensors.push_back({w + "ln2." + b, hf + "ln_2." + b});
      h.tensors.push_back({w + "mlp.fc." + b, hf + "mlp.c_fc." + b, b[0] == 'w'});
      h.tensors.push_back({w + "mlp.proj." + b, hf + "mlp.c_proj." + b, b[0] == 'w'});
    }
  }
  h.tensors.push_back({"lnf.weight", "transformer.ln_f.weight"});
  h.tensors.push_back({"lnf.bias", "transformer.ln_f.bias"});
  if (c.untie) h.tensors.push_back({"output.weight", "lm_head.weight", false, c.vocab});
  return h;
}

std::unique_ptr<Model> make_gpt(const Options& options, const ModelEnv& env) {
  GptConfig config = gpt_config(options, env.vocab_size, env.layers);
  config.block.seed = env.seed;  // keys the dropout masks
  nn::check_moe_split(config.moe, options, env.parallel);
  return std::make_unique<GptModel>(config, env.layers, env.parallel);
}

}  // namespace weft::gpt
