#include "weft/nn.hpp"

#include <utility>

#include "weft/error.hpp"
#include "weft/rng.hpp"

namespace weft::nn {

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

void check_shape(const Tensor& t, int64_t last_dim, const char* what) {
  WEFT_ASSERT(t.defined(), std::string(what) + ": undefined tensor");
  WEFT_ASSERT(!t.shape().empty() && t.dim(-1) == last_dim,
              std::string(what) + ": expected last dim " + std::to_string(last_dim) + ", got " +
                  shape_str(t.shape()));
}

void check_f32(const Tensor& t, int64_t last_dim, const char* what) {
  WEFT_ASSERT(t.defined(), std::string(what) + ": undefined tensor");
  WEFT_ASSERT(t.dtype() == DType::F32, std::string(what) + ": expected f32, got " + dtype_name(t.dtype()));
  check_shape(t, last_dim, what);
}

// x[0:n] (fp32, or already `dtype`) as GEMM input of `dtype`: x itself when
// it has that dtype, else a cast copy that `keep` holds until the GEMM ran.
TypedPtr gemm_input(Backend& be, TypedPtr x, int64_t n, DType dtype, Tensor& keep) {
  if (x.dtype == dtype) return x;
  WEFT_ASSERT(x.dtype == DType::F32, std::string("linear: a GEMM input of dtype ") + dtype_name(x.dtype) +
                                         " with weights of dtype " + dtype_name(dtype));
  auto view = std::make_shared<Storage>();  // non-owning: x belongs to the caller
  view->data = const_cast<void*>(x.data);
  view->bytes = static_cast<size_t>(n) * sizeof(float);
  view->device = be.device();
  keep = be.alloc_uninitialized({n}, dtype, MemCategory::Workspace);
  be.cast(keep, Tensor(std::move(view), 0, {n}, DType::F32));
  return TypedPtr::of(keep);
}

Shape with_last(Shape shape, int64_t last) {
  shape.back() = last;
  return shape;
}

}  // namespace

Param make_param(std::string name, Shape full_shape, InitKind init, float init_std, bool weight_decay,
                 ShardSpec shard) {
  Param p;
  p.name = std::move(name);
  p.shape = full_shape;
  if (shard.dim >= 0) {
    WEFT_ASSERT(shard.dim < static_cast<int>(full_shape.size()), p.name + ": shard dim out of range");
    WEFT_ASSERT(shard.count >= 1 && shard.blocks >= 1 && shard.index >= 0 && shard.index < shard.count,
                p.name + ": bad shard index/count/blocks");
    WEFT_ASSERT(full_shape[shard.dim] % (int64_t{shard.count} * shard.blocks) == 0,
                p.name + ": dim " + std::to_string(shard.dim) + " of " + shape_str(full_shape) +
                    " does not split into " + std::to_string(shard.blocks) + " blocks of " +
                    std::to_string(shard.count) + " parts");
    p.shape[shard.dim] = full_shape[shard.dim] / shard.count;
  }
  p.full_shape = std::move(full_shape);
  p.shard = shard;
  p.init = init;
  p.init_std = init_std;
  p.weight_decay = weight_decay;
  return p;
}

void grad_ready(Context& ctx, Param& param) {
  if (ctx.last_microbatch && ctx.on_grad_ready) ctx.on_grad_ready(param);
}

// ---------------------------------------------------------------- Linear

void linear_forward(Backend& be, float* y, TypedPtr x, TypedPtr w, int64_t n, int64_t in, int64_t out) {
  Tensor x16;
  GemmArgs g;
  g.trans_b = true;
  g.m = n, g.n = out, g.k = in;
  g.a = gemm_input(be, x, n * in, w.dtype, x16), g.lda = in;
  g.b = w, g.ldb = in;
  g.c = y, g.ldc = out;
  be.gemm(g);
}

void linear_backward_input(Backend& be, float* dx, TypedPtr dy, TypedPtr w, int64_t n, int64_t in,
                           int64_t out) {
  Tensor dy16;
  GemmArgs g;
  g.m = n, g.n = in, g.k = out;
  g.a = gemm_input(be, dy, n * out, w.dtype, dy16), g.lda = out;
  g.b = w, g.ldb = in;
  g.c = dx, g.ldc = in;
  be.gemm(g);
}

void linear_backward_weight(Backend& be, float* dw, TypedPtr dy, TypedPtr x, int64_t n, int64_t in,
                            int64_t out, DType inputs) {
  Tensor dy16, x16;
  GemmArgs g;
  g.trans_a = true;
  g.m = out, g.n = in, g.k = n;
  g.a = gemm_input(be, dy, n * out, inputs, dy16), g.lda = out;
  g.b = gemm_input(be, x, n * in, inputs, x16), g.ldb = in;
  g.c = dw, g.ldc = in;
  g.beta = 1.f;
  be.gemm(g);
}

Tensor compute_copy(Backend& be, const Tensor& x, DType dtype, MemCategory category) {
  if (x.dtype() == dtype) return x;
  WEFT_ASSERT(x.dtype() == DType::F32, std::string("compute_copy of a ") + dtype_name(x.dtype()) + " tensor");
  Tensor y = be.alloc_uninitialized(x.shape(), dtype, category);
  if (x.numel() > 0) be.cast(y, x);
  return y;
}

DType weights_dtype(Module& m) {
  std::vector<Param*> params;
  m.collect_params(params);
  return params.empty() || !params[0]->data.defined() ? DType::F32 : params[0]->data.dtype();
}

Linear::Linear(const LinearSpec& spec) : Linear(spec.name, spec.in, spec.out, spec.bias, spec.init_std) {}

Linear::Linear(std::string name, int64_t in, int64_t out, bool bias, float init_std)
    : in_(in), out_(out), has_bias_(bias) {
  WEFT_ASSERT(in > 0 && out > 0, name + ": Linear needs positive sizes");
  weight_ = make_param(name + ".weight", {out, in}, InitKind::Normal, init_std, true);
  if (has_bias_) bias_ = make_param(name + ".bias", {out}, InitKind::Zeros, 0.f, false);
}

Tensor Linear::forward(Context& ctx, const Tensor& x) {
  // x: fp32, or already in the compute dtype (a copy several layers share)
  if (x.defined() && x.dtype() == weight_.data.dtype()) check_shape(x, in_, "Linear input");
  else check_f32(x, in_, "Linear input");
  Backend& be = ctx.backend();
  const int64_t n = x.numel() / in_;
  Tensor y = be.alloc_uninitialized(with_last(x.shape(), out_), DType::F32, MemCategory::Activation);  // [..., out]
  // [..., in] in the compute dtype: what the GEMM reads and backward keeps (x itself in fp32)
  Tensor xs = compute_copy(be, x, weight_.data.dtype(), MemCategory::Activation);
  if (n > 0) {
    linear_forward(be, f32(y), TypedPtr::of(xs), weight_ptr(weight_), n, in_, out_);
    if (has_bias_) be.add_bias(f32(y), weight_ptr(bias_), n, out_);
  }
  ctx.save(this, {xs});
  return y;
}

Tensor Linear::backward(Context& ctx, const Tensor& dy) {
  check_f32(dy, out_, "Linear dy");
  Backend& be = ctx.backend();
  Tensor xs = ctx.saved(this)[0];  // [..., in], compute dtype
  const int64_t n = dy.numel() / out_;
  WEFT_ASSERT(n * in_ == xs.numel(), "Linear dy " + shape_str(dy.shape()) + " does not match input " +
                                         shape_str(xs.shape()));
  Tensor dx = be.alloc_uninitialized(xs.shape(), DType::F32, MemCategory::Workspace);  // [..., in]
  if (n > 0) {
    const DType cdt = weight_.data.dtype();
    Tensor dys = compute_copy(be, dy, cdt, MemCategory::Workspace);  // [..., out], cast once for both GEMMs
    add_to_grad(be, weight_, [&](float* dw) {
      linear_backward_weight(be, dw, TypedPtr::of(dys), TypedPtr::of(xs), n, in_, out_, cdt);
    });
    if (has_bias_) add_to_grad(be, bias_, [&](float* db) { be.bias_grad(db, f32(dy), n, out_); });
    linear_backward_input(be, f32(dx), TypedPtr::of(dys), weight_ptr(weight_), n, in_, out_);
  }
  ctx.release(this);
  grad_ready(ctx, weight_);
  if (has_bias_) grad_ready(ctx, bias_);
  return dx;
}

void Linear::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight_);
  if (has_bias_) out.push_back(&bias_);
}

// ---------------------------------------------------------------- Embedding

Embedding::Embedding(std::string name, int64_t num, int64_t dim, float init_std) : num_(num), dim_(dim) {
  WEFT_ASSERT(num > 0 && dim > 0, name + ": Embedding needs positive sizes");
  weight_ = make_param(name + ".weight", {num, dim}, InitKind::Normal, init_std, true);
}

Tensor Embedding::forward(Context& ctx, const Tensor& ids) {
  WEFT_ASSERT(ids.defined() && ids.dtype() == DType::I32, "Embedding input must be i32 token ids");
  Backend& be = ctx.backend();
  Shape shape = ids.shape();
  shape.push_back(dim_);
  Tensor y = be.alloc_uninitialized(shape, DType::F32, MemCategory::Activation);  // [B,T,C]
  if (ids.numel() > 0)
    be.embedding_forward(f32(y), ids.data<int32_t>(), weight_ptr(weight_), ids.numel(), dim_, 0, num_);
  ctx.save(this, {ids});
  return y;
}

Tensor Embedding::backward(Context& ctx, const Tensor& dy) {
  check_f32(dy, dim_, "Embedding dy");
  Tensor ids = ctx.saved(this)[0];  // [B,T]
  WEFT_ASSERT(dy.numel() == ids.numel() * dim_, "Embedding dy does not match ids");
  Backend& be = ctx.backend();
  if (ids.numel() > 0)
    add_to_grad(be, weight_, [&](float* dw) {
      be.embedding_backward(dw, ids.data<int32_t>(), f32(dy), ids.numel(), dim_, 0, num_);
    });
  ctx.release(this);
  grad_ready(ctx, weight_);
  return Tensor();
}

void Embedding::collect_params(std::vector<Param*>& out) { out.push_back(&weight_); }

// ---------------------------------------------------------------- TiedOutputLoss

TiedOutputLoss::TiedOutputLoss(Param& table, int64_t vocab) : table_(table), vocab_(vocab) {
  WEFT_ASSERT(table.full_shape.size() == 2 && vocab >= 1 && vocab <= table.full_shape[0],
              table.name + ": tied output needs a [Vp, C] table with Vp >= vocab");
}

Tensor TiedOutputLoss::forward(Context& ctx, const Tensor& x) {
  const int64_t vp = table_.shape.at(0), c = table_.shape.at(1);
  check_f32(x, c, "tied output input");
  WEFT_ASSERT(x.shape().size() == 3, "tied output input must be [B,T,C], got " + shape_str(x.shape()));
  Backend& be = ctx.backend();
  const int64_t b = x.dim(0), t = x.dim(1), n = b * t;
  const DType cdt = table_.data.dtype();
  // [B,T,Vp]; a 16-bit mode keeps only its compute-dtype copy (below), so there it is scratch
  Tensor logits = be.alloc_uninitialized({b, t, vp}, DType::F32,
                                         cdt == DType::F32 ? MemCategory::Activation : MemCategory::Workspace);
  Tensor xs = compute_copy(be, x, cdt, MemCategory::Activation);  // [B,T,C] in the compute dtype
  if (n > 0) linear_forward(be, f32(logits), TypedPtr::of(xs), weight_ptr(table_), n, c, vp);  // x @ table^T
  if (!ctx.targets.defined()) return logits;  // eval / generation: no backward
  const Tensor& targets = ctx.targets;  // [B,T]
  WEFT_ASSERT(targets.dtype() == DType::I32 && targets.numel() == n,
              "targets " + shape_str(targets.shape()) + " do not match the batch " + shape_str({b, t}));
  // One fused pass gives the losses and, in place of the logits, their
  // gradient dlogits = dloss_scale * (softmax - onehot): backward needs only
  // that, so the [B,T,Vp] logits are never kept or read twice.
  Tensor losses = be.alloc_uninitialized({b, t}, DType::F32, MemCategory::Activation);  // [B,T]
  if (n > 0)
    be.cross_entropy(f32(losses), f32(logits), f32(logits), targets.data<int32_t>(), n, vocab_, vp,
                     ctx.dloss_scale);
  // logits now holds dlogits [B,T,Vp]; both backward GEMMs read it in the
  // compute dtype, so a 16-bit mode keeps only that copy.
  ctx.save(this, {xs, compute_copy(be, logits, cdt, MemCategory::Activation)});
  return losses;
}

Tensor TiedOutputLoss::backward(Context& ctx, const Tensor& /*dy: the loss is the end of the graph*/) {
  Backend& be = ctx.backend();
  auto& saved = ctx.saved(this);
  const Tensor x = saved[0];        // [B,T,C], compute dtype
  const Tensor dlogits = saved[1];  // [B,T,Vp], from forward, compute dtype
  ctx.release(this);
  const int64_t vp = table_.shape.at(0), c = table_.shape.at(1), n = x.dim(0) * x.dim(1);
  Tensor dx = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Workspace);  // [B,T,C]
  if (n > 0) {
    linear_backward_input(be, f32(dx), TypedPtr::of(dlogits), weight_ptr(table_), n, c, vp);
    add_to_grad(be, table_, [&](float* dw) {
      linear_backward_weight(be, dw, TypedPtr::of(dlogits), TypedPtr::of(x), n, c, vp, table_.data.dtype());
    });
  }
  return dx;
}

// ---------------------------------------------------------------- LayerNorm

LayerNorm::LayerNorm(std::string name, int64_t dim, float eps) : dim_(dim), eps_(eps) {
  WEFT_ASSERT(dim > 0, name + ": LayerNorm needs a positive size");
  weight_ = make_param(name + ".weight", {dim}, InitKind::Ones, 0.f, false);
  bias_ = make_param(name + ".bias", {dim}, InitKind::Zeros, 0.f, false);
}

Tensor LayerNorm::forward(Context& ctx, const Tensor& x) {
  check_f32(x, dim_, "LayerNorm input");
  Backend& be = ctx.backend();
  const int64_t n = x.numel() / dim_;
  // 16-bit modes normalise (and keep for backward) x rounded to the compute dtype.
  Tensor xs = compute_copy(be, x, weight_.data.dtype(), MemCategory::Activation);  // [..., C]
  Tensor y = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);  // [..., C]
  Tensor mean = be.alloc_uninitialized({n}, DType::F32, MemCategory::Activation);     // [N]
  Tensor rstd = be.alloc_uninitialized({n}, DType::F32, MemCategory::Activation);     // [N]
  if (n > 0)
    be.layernorm_forward(f32(y), f32(mean), f32(rstd), TypedPtr::of(xs), weight_ptr(weight_), weight_ptr(bias_), n,
                         dim_, eps_);
  ctx.save(this, {xs, mean, rstd});
  return y;
}

Tensor LayerNorm::backward(Context& ctx, const Tensor& dy) {
  check_f32(dy, dim_, "LayerNorm dy");
  Backend& be = ctx.backend();
  auto& saved = ctx.saved(this);
  Tensor x = saved[0], mean = saved[1], rstd = saved[2];
  WEFT_ASSERT(dy.numel() == x.numel(), "LayerNorm dy does not match input");
  const int64_t n = x.numel() / dim_;
  Tensor dx = be.alloc(x.shape(), DType::F32, MemCategory::Workspace);  // [..., C], zero-filled
  if (n > 0)
    add_to_grad(be, weight_, [&](float* dw) {
      add_to_grad(be, bias_, [&](float* db) {
        be.layernorm_backward(f32(dx), dw, db, f32(dy), TypedPtr::of(x), weight_ptr(weight_), f32(mean), f32(rstd), n,
                              dim_);
      });
    });
  ctx.release(this);
  grad_ready(ctx, weight_);
  grad_ready(ctx, bias_);
  return dx;
}

void LayerNorm::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight_);
  out.push_back(&bias_);
}

// ---------------------------------------------------------------- SerialLayerProvider

std::unique_ptr<Module> SerialLayerProvider::column_linear(const LinearSpec& spec) {
  return std::make_unique<Linear>(spec);
}

std::unique_ptr<Module> SerialLayerProvider::row_linear(const LinearSpec& spec) {
  return std::make_unique<Linear>(spec);
}

std::unique_ptr<TableEmbedding> SerialLayerProvider::embedding(const std::string& name, int64_t num, int64_t dim,
                                                               float init_std) {
  return std::make_unique<Embedding>(name, num, dim, init_std);
}

std::unique_ptr<Module> SerialLayerProvider::tied_output_loss(Param& table, int64_t vocab) {
  return std::make_unique<TiedOutputLoss>(table, vocab);
}

// ---------------------------------------------------------------- CausalSelfAttention

CausalSelfAttention::CausalSelfAttention(std::string name, int64_t dim, int64_t heads, LayerProvider& layers,
                                         float init_std, float proj_init_std, const BlockOptions& options)
    : dim_(dim),
      heads_(heads),
      layers_(layers),
      dropout_(options.attention_dropout),
      dropout_key_(dropout_site_key(options.seed, name + ".core_dropout")) {
  WEFT_ASSERT(dim > 0 && heads > 0 && dim % heads == 0,
              name + ": channels " + std::to_string(dim) + " not divisible by heads " + std::to_string(heads));
  qkv_ = layers.column_linear(LinearSpec{name + ".qkv", dim, 3 * dim, options.bias, init_std, 3});
  proj_ = layers.row_linear(LinearSpec{name + ".proj", dim, dim, options.bias, proj_init_std});
}

// The document mask and probability dropout of this microbatch; h = this rank's heads.
static AttentionMask attention_mask(Context& ctx, const LayerProvider& layers, float dropout, uint64_t key,
                                    int64_t h) {
  AttentionMask m;
  if (ctx.doc_start.defined()) m.doc_start = ctx.doc_start.data<int32_t>();
  if (ctx.training && dropout > 0.f) {
    m.dropout = dropout;
    m.dropout_key = key;
    m.first_sample = ctx.first_sample;
    m.first_head = layers.tp_rank() * h;
  }
  return m;
}

Tensor CausalSelfAttention::forward(Context& ctx, const Tensor& x) {
  WEFT_ASSERT(x.shape().size() == 3, "attention input must be [B,T,C], got " + shape_str(x.shape()));
  Backend& be = ctx.backend();
  // [B,T,3c], c = this rank's share of C, T the whole sequence; in the compute
  // dtype (the weights'), which attention reads forward and backward, so a
  // 16-bit mode keeps it at 2 bytes
  Tensor qkv = compute_copy(be, qkv_->forward(ctx, x), weights_dtype(*qkv_), MemCategory::Activation);
  WEFT_ASSERT(qkv.shape().size() == 3 && qkv.dim(-1) % 3 == 0, "attention qkv must be [B,T,3c]");
  const int64_t b = qkv.dim(0), t = qkv.dim(1);
  const int64_t c = qkv.dim(-1) / 3;
  WEFT_ASSERT((heads_ * c) % dim_ == 0, "attention qkv width does not hold whole heads");
  const int64_t h = heads_ * c / dim_;
  Tensor out = be.alloc_uninitialized({b, t, c}, DType::F32, MemCategory::Activation);  // [B,T,c]
  Tensor lse = be.alloc_uninitialized({b, h, t}, DType::F32, MemCategory::Activation);  // [B,h,T]
  if (b * t > 0)
    be.attention_forward(f32(out), f32(lse), TypedPtr::of(qkv), b, t, c, h,
                         attention_mask(ctx, layers_, dropout_, dropout_key_, h));
  // The output as proj reads it (16-bit in a 16-bit mode, one copy for both:
  // attention's backward reads it too)
  out = compute_copy(be, out, weights_dtype(*proj_), MemCategory::Activation);
  ctx.save(this, {qkv, out, lse});
  return proj_->forward(ctx, out);  // [B,T,C]
}

Tensor CausalSelfAttention::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  Tensor dqkv;  // [B,T,3c]
  {
    Tensor dout = proj_->backward(ctx, dy);  // [B,T,c]
    auto& saved = ctx.saved(this);
    const Tensor& qkv = saved[0];  // [B,T,3c]
    const Tensor& out = saved[1];  // [B,T,c]
    const Tensor& lse = saved[2];  // [B,h,T]
    const int64_t b = qkv.dim(0), t = qkv.dim(1), c = qkv.dim(2) / 3, h = lse.dim(1);
    WEFT_ASSERT(dout.numel() == out.numel(), "attention dy does not match its output");
    dqkv = be.alloc_uninitialized(qkv.shape(), DType::F32, MemCategory::Workspace);
    if (b * t > 0)
      be.attention_backward(f32(dqkv), f32(dout), TypedPtr::of(qkv), TypedPtr::of(out), f32(lse), b, t, c, h,
                            attention_mask(ctx, layers_, dropout_, dropout_key_, h));
    ctx.release(this);
  }
  return qkv_->backward(ctx, dqkv);  // [B,T,C]
}

void CausalSelfAttention::collect_params(std::vector<Param*>& out) {
  qkv_->collect_params(out);
  proj_->collect_params(out);
}

// ---------------------------------------------------------------- MLP

MLP::MLP(std::string name, int64_t dim, LayerProvider& layers, float init_std, float proj_init_std,
         int64_t hidden_mult, const BlockOptions& options)
    : gelu_erf_(options.gelu_erf) {
  WEFT_ASSERT(dim > 0 && hidden_mult > 0, name + ": MLP needs positive sizes");
  fc_ = layers.column_linear(LinearSpec{name + ".fc", dim, hidden_mult * dim, options.bias, init_std});
  proj_ = layers.row_linear(LinearSpec{name + ".proj", hidden_mult * dim, dim, options.bias, proj_init_std});
}

Tensor MLP::forward(Context& ctx, const Tensor& x) {
  Backend& be = ctx.backend();
  // GeLU's input [..., 4c] in the compute dtype (the fc weights'): what GeLU
  // reads forward and backward, so a 16-bit mode keeps it at 2 bytes (h itself in fp32)
  Tensor h = compute_copy(be, fc_->forward(ctx, x), weights_dtype(*fc_), MemCategory::Activation);
  Tensor a = be.alloc_uninitialized(h.shape(), DType::F32, MemCategory::Activation);  // [..., 4c] = gelu(h)
  if (h.numel() > 0 && gelu_erf_) be.gelu_erf_forward(f32(a), TypedPtr::of(h), h.numel());
  if (h.numel() > 0 && !gelu_erf_) be.gelu_forward(f32(a), TypedPtr::of(h), h.numel());
  ctx.save(this, {h});
  return proj_->forward(ctx, a);  // [..., C]
}

Tensor MLP::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  Tensor da = proj_->backward(ctx, dy);  // [..., 4c]
  Tensor h = ctx.saved(this)[0];
  WEFT_ASSERT(da.numel() == h.numel(), "MLP gradient does not match its hidden activation");
  Tensor dh = be.alloc_uninitialized(h.shape(), DType::F32, MemCategory::Workspace);  // [..., 4c]
  if (h.numel() > 0 && gelu_erf_) be.gelu_erf_backward(f32(dh), TypedPtr::of(h), f32(da), h.numel());
  if (h.numel() > 0 && !gelu_erf_) be.gelu_backward(f32(dh), TypedPtr::of(h), f32(da), h.numel());
  ctx.release(this);
  h = Tensor();
  da = Tensor();
  return fc_->backward(ctx, dh);  // [..., C]
}

void MLP::collect_params(std::vector<Param*>& out) {
  fc_->collect_params(out);
  proj_->collect_params(out);
}

// ---------------------------------------------------------------- Recompute

namespace {

// A context for one extra pass of the same microbatch: its activations live only as long as it does.
Context scratch_of(Context& ctx) {
  Context scratch(ctx.backend(), ctx.microbatch());
  scratch.targets = ctx.targets;
  scratch.dloss_scale = ctx.dloss_scale;
  scratch.on_grad_ready = ctx.on_grad_ready;
  scratch.last_microbatch = ctx.last_microbatch;
  scratch.first_sample = ctx.first_sample;  // the same dropout masks in the second pass
  scratch.training = ctx.training;
  scratch.doc_start = ctx.doc_start;
  scratch.positions = ctx.positions;
  return scratch;
}

}  // namespace

Tensor Recompute::forward(Context& ctx, const Tensor& x) {
  Context scratch = scratch_of(ctx);
  Tensor y = inner_.forward(scratch, x);
  for (const auto& [key, value] : scratch.stats) ctx.stats[key] += value;
  ctx.save(this, {x});
  return y;
}

Tensor Recompute::backward(Context& ctx, const Tensor& dy) {
  Tensor x = ctx.saved(this)[0];
  ctx.release(this);
  Context scratch = scratch_of(ctx);
  inner_.forward(scratch, x);  // the activations again, then the backward that needs them
  return inner_.backward(scratch, dy);
}

// ---------------------------------------------------------------- Block

Block::Block(std::string name, int64_t dim, int64_t heads, LayerProvider& layers, float init_std,
             float proj_init_std, std::unique_ptr<Module> mlp, const BlockOptions& options)
    : ln1_(name + ".ln1", dim, options.norm_eps),
      attn_(name + ".attn", dim, heads, layers, init_std, proj_init_std, options),
      ln2_(name + ".ln2", dim, options.norm_eps),
      mlp_(mlp ? std::move(mlp)
               : std::make_unique<MLP>(name + ".mlp", dim, layers, init_std, proj_init_std, 4, options)),
      layers_(layers),
      hidden_dropout_(options.hidden_dropout),
      attn_drop_key_(dropout_site_key(options.seed, name + ".attn.dropout")),
      mlp_drop_key_(dropout_site_key(options.seed, name + ".mlp.dropout")) {}

int64_t Block::t0(const Tensor& x) const {
  return layers_.sequence_parallel() ? layers_.tp_rank() * x.dim(1) : 0;
}

void apply_dropout(Context& ctx, const Tensor& x, float p, uint64_t key, int64_t t0) {
  if (!ctx.training || !(p > 0.f) || x.numel() == 0) return;
  WEFT_ASSERT(x.shape().size() == 3, "dropout input must be [B,T,C], got " + shape_str(x.shape()));
  ctx.backend().dropout(f32(x), x.dim(0), x.dim(1), x.dim(2), DropoutArgs{p, key, ctx.first_sample, t0});
}

// A copy of dy with the dropout mask of `key` applied: the gradient into the dropped branch.
static Tensor dropped_grad(Context& ctx, const Tensor& dy, float p, uint64_t key, int64_t t0) {
  if (!ctx.training || !(p > 0.f)) return dy;
  Tensor d = ctx.backend().alloc_uninitialized(dy.shape(), DType::F32, MemCategory::Workspace);  // [B,T,C]
  ctx.backend().copy(d, dy);
  apply_dropout(ctx, d, p, key, t0);
  return d;
}

Tensor Block::forward(Context& ctx, const Tensor& x) {
  Backend& be = ctx.backend();
  // Each residual sum is allocated once its addend exists, so it is not live
  // beside the sublayer's transients (the forward's peak).
  Tensor x2;  // [B,T,C] = x + drop(attn(ln1(x)))
  {
    Tensor a = attn_.forward(ctx, ln1_.forward(ctx, x));
    apply_dropout(ctx, a, hidden_dropout_, attn_drop_key_, t0(x));
    x2 = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);
    be.add(f32(x2), f32(x), f32(a), x.numel());
  }
  Tensor y;  // [B,T,C] = x2 + drop(mlp(ln2(x2)))
  {
    Tensor m = mlp_->forward(ctx, ln2_.forward(ctx, x2));
    apply_dropout(ctx, m, hidden_dropout_, mlp_drop_key_, t0(x));
    y = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Activation);
    be.add(f32(y), f32(x2), f32(m), x.numel());
  }
  return y;
}

Tensor Block::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  // dx2 = dy + ln2'(mlp'(drop(dy))); ln2's dx is a fresh tensor, so the residual adds in place.
  Tensor dx2 = ln2_.backward(ctx, mlp_->backward(ctx, dropped_grad(ctx, dy, hidden_dropout_, mlp_drop_key_, t0(dy))));
  be.accumulate(f32(dx2), f32(dy), dy.numel());
  Tensor dx = ln1_.backward(ctx, attn_.backward(ctx, dropped_grad(ctx, dx2, hidden_dropout_, attn_drop_key_, t0(dy))));
  be.accumulate(f32(dx), f32(dx2), dx2.numel());
  return dx;
}

void Block::collect_params(std::vector<Param*>& out) {
  ln1_.collect_params(out);
  attn_.collect_params(out);
  ln2_.collect_params(out);
  mlp_->collect_params(out);
}

}  // namespace weft::nn
