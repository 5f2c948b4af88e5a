#include "tp_layers.hpp"

#include "weft/error.hpp"

namespace weft::tp {

namespace {

float* f32(const Tensor& t) { return t.data<float>(); }

Shape with_last(Shape shape, int64_t last) {
  shape.back() = last;
  return shape;
}

void check_input(const Tensor& t, int64_t last_dim, const std::string& what) {
  WEFT_ASSERT(t.defined() && t.dtype() == DType::F32 && !t.shape().empty() && t.dim(-1) == last_dim,
              what + ": expected f32 [..., " + std::to_string(last_dim) + "], got " + shape_str(t.shape()));
}

Communicator& comm_of(const TpGroup& g) {
  WEFT_ASSERT(g.comm != nullptr && g.comm->size() == g.size,
              "tensor parallelism: the layer has no tp communicator of " + std::to_string(g.size) + " ranks");
  return *g.comm;
}

void all_reduce(const TpGroup& g, const Tensor& t, ReduceOp op = ReduceOp::Sum) {
  comm_of(g).all_reduce(t.reshape({t.numel()}), op)->wait();
}

// The replicated side of a layer: all-gather along T under sp, else as is.
Tensor to_full_sequence(Context& ctx, const TpGroup& g, const Tensor& x, MemCategory category) {
  return g.sequence_parallel ? gather_sequence(ctx.backend(), comm_of(g), x, category) : x;
}

// Partial sums of the replicated side: reduce-scatter along T under sp, else all-reduce.
Tensor reduce_partial(Context& ctx, const TpGroup& g, const Tensor& x, MemCategory category) {
  if (g.sequence_parallel) return reduce_scatter_sequence(ctx.backend(), comm_of(g), x, category);
  all_reduce(g, x);
  return x;
}

Param sharded_param(std::string name, Shape full, InitKind init, float std, bool decay, ShardSpec shard) {
  Param p = nn::make_param(std::move(name), std::move(full), init, std, decay, shard);
  p.tp_replicated = false;
  return p;
}

}  // namespace

// ---------------------------------------------------------------- sequence parallelism

Tensor gather_sequence(Backend& be, Communicator& tp, const Tensor& x, MemCategory category) {
  WEFT_ASSERT(x.shape().size() == 3, "sequence parallelism: activations must be [B,T/p,C], got " + shape_str(x.shape()));
  const int64_t p = tp.size(), b = x.dim(0), ts = x.dim(1), c = x.dim(2), slab = ts * c;
  Tensor gathered = be.alloc_uninitialized({p * x.numel()}, DType::F32, category);  // [p][B][T/p][C]
  tp.all_gather(x.reshape({x.numel()}), gathered)->wait();
  if (b == 1) return gathered.reshape({1, p * ts, c});
  Tensor out = be.alloc_uninitialized({b, p * ts, c}, DType::F32, category);  // [B][p][T/p][C]
  for (int64_t r = 0; r < p; ++r)
    for (int64_t i = 0; i < b; ++i) be.copy(out.view((i * p + r) * slab, {slab}), gathered.view((r * b + i) * slab, {slab}));
  return out;
}

Tensor reduce_scatter_sequence(Backend& be, Communicator& tp, const Tensor& x, MemCategory category) {
  WEFT_ASSERT(x.shape().size() == 3, "sequence parallelism: activations must be [B,T,C], got " + shape_str(x.shape()));
  const int64_t p = tp.size(), b = x.dim(0), t = x.dim(1), c = x.dim(2);
  WEFT_ASSERT(t % p == 0, "sequence parallelism: T " + std::to_string(t) + " does not split over " + std::to_string(p));
  const int64_t ts = t / p, slab = ts * c;
  Tensor staged = x.reshape({x.numel()});  // [p][B][T/p][C]: rank r's block first in rank order
  if (b > 1) {
    staged = be.alloc_uninitialized({x.numel()}, DType::F32, MemCategory::CommBuffer);
    for (int64_t r = 0; r < p; ++r)
      for (int64_t i = 0; i < b; ++i) be.copy(staged.view((r * b + i) * slab, {slab}), x.view((i * p + r) * slab, {slab}));
  }
  Tensor out = be.alloc_uninitialized({b, ts, c}, DType::F32, category);
  tp.reduce_scatter(staged, out.reshape({out.numel()}), ReduceOp::Sum)->wait();
  return out;
}

// ---------------------------------------------------------------- ColumnParallelLinear

ColumnParallelLinear::ColumnParallelLinear(const LinearSpec& spec, const TpGroup& group)
    : group_(group), in_(spec.in), out_local_(spec.out / group.size), has_bias_(spec.bias) {
  const ShardSpec rows{0, group.rank, group.size, spec.fused_blocks};
  weight_ = sharded_param(spec.name + ".weight", {spec.out, spec.in}, InitKind::Normal, spec.init_std, true, rows);
  if (has_bias_) bias_ = sharded_param(spec.name + ".bias", {spec.out}, InitKind::Zeros, 0.f, false, rows);
}

Tensor ColumnParallelLinear::forward(Context& ctx, const Tensor& x) {
  // x: fp32, or (without sequence parallelism) already in the compute dtype, a copy several layers share
  if (group_.sequence_parallel || x.dtype() != weight_.data.dtype()) check_input(x, in_, weight_.name);
  Backend& be = ctx.backend();
  // [B,T,in] in the compute dtype: what the GEMM reads and backward keeps
  Tensor xf = nn::compute_copy(be, to_full_sequence(ctx, group_, x, MemCategory::Activation), weight_.data.dtype(),
                               MemCategory::Activation);
  const int64_t n = xf.numel() / in_;
  Tensor y = be.alloc_uninitialized(with_last(xf.shape(), out_local_), DType::F32, MemCategory::Activation);
  if (n > 0) {
    nn::linear_forward(be, f32(y), TypedPtr::of(xf), nn::weight_ptr(weight_), n, in_, out_local_);
    if (has_bias_) be.add_bias(f32(y), nn::weight_ptr(bias_), n, out_local_);
  }
  ctx.save(this, {xf});
  return y;  // [B,T,out/p]
}

Tensor ColumnParallelLinear::backward(Context& ctx, const Tensor& dy) {
  check_input(dy, out_local_, weight_.name + " dy");
  Backend& be = ctx.backend();
  Tensor xf = ctx.saved(this)[0];  // [B,T,in], compute dtype
  ctx.release(this);
  const int64_t n = dy.numel() / out_local_;
  WEFT_ASSERT(n * in_ == xf.numel(), weight_.name + ": dy " + shape_str(dy.shape()) + " does not match the input");
  Tensor dx = be.alloc_uninitialized(xf.shape(), DType::F32, MemCategory::Workspace);  // [B,T,in], partial over tp
  if (n > 0) {
    const DType cdt = weight_.data.dtype();
    Tensor dys = nn::compute_copy(be, dy, cdt, MemCategory::Workspace);  // [B,T,out/p], cast once for both GEMMs
    nn::add_to_grad(be, weight_, [&](float* dw) {
      nn::linear_backward_weight(be, dw, TypedPtr::of(dys), TypedPtr::of(xf), n, in_, out_local_, cdt);
    });
    if (has_bias_) nn::add_to_grad(be, bias_, [&](float* db) { be.bias_grad(db, f32(dy), n, out_local_); });
    nn::linear_backward_input(be, f32(dx), TypedPtr::of(dys), nn::weight_ptr(weight_), n, in_, out_local_);
  }
  nn::grad_ready(ctx, weight_);
  if (has_bias_) nn::grad_ready(ctx, bias_);
  return reduce_partial(ctx, group_, dx, MemCategory::Workspace);
}

void ColumnParallelLinear::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight_);
  if (has_bias_) out.push_back(&bias_);
}

// ---------------------------------------------------------------- RowParallelLinear

RowParallelLinear::RowParallelLinear(const LinearSpec& spec, const TpGroup& group)
    : group_(group), in_local_(spec.in / group.size), out_(spec.out), has_bias_(spec.bias) {
  weight_ = sharded_param(spec.name + ".weight", {spec.out, spec.in}, InitKind::Normal, spec.init_std, true,
                          ShardSpec{1, group.rank, group.size});
  if (has_bias_) bias_ = nn::make_param(spec.name + ".bias", {spec.out}, InitKind::Zeros, 0.f, false);
}

Tensor RowParallelLinear::forward(Context& ctx, const Tensor& x) {
  // fp32, or already in the weights' dtype (attention keeps its output so)
  if (x.dtype() == DType::F32)
    check_input(x, in_local_, weight_.name);
  else
    WEFT_ASSERT(x.dtype() == weight_.data.dtype() && !x.shape().empty() && x.dim(-1) == in_local_,
                weight_.name + ": expected f32 or " + dtype_name(weight_.data.dtype()) + " [..., " +
                    std::to_string(in_local_) + "], got " + dtype_name(x.dtype()) + " " + shape_str(x.shape()));
  Backend& be = ctx.backend();
  const int64_t n = x.numel() / in_local_;
  Tensor partial = be.alloc_uninitialized(with_last(x.shape(), out_), DType::F32, MemCategory::Activation);
  Tensor xs = nn::compute_copy(be, x, weight_.data.dtype(), MemCategory::Activation);  // [B,T,in/p], kept for backward
  if (n > 0) nn::linear_forward(be, f32(partial), TypedPtr::of(xs), nn::weight_ptr(weight_), n, in_local_, out_);
  Tensor y = reduce_partial(ctx, group_, partial, MemCategory::Activation);  // [B,T,out] or sp [B,T/p,out]
  if (has_bias_ && y.numel() > 0) be.add_bias(f32(y), nn::weight_ptr(bias_), y.numel() / out_, out_);
  ctx.save(this, {xs});
  return y;
}

Tensor RowParallelLinear::backward(Context& ctx, const Tensor& dy) {
  check_input(dy, out_, weight_.name + " dy");
  Backend& be = ctx.backend();
  Tensor x = ctx.saved(this)[0];  // [B,T,in/p], compute dtype
  ctx.release(this);
  Tensor dyf = to_full_sequence(ctx, group_, dy, MemCategory::Workspace);  // [B,T,out]
  const int64_t n = dyf.numel() / out_;
  WEFT_ASSERT(n * in_local_ == x.numel(), weight_.name + ": dy " + shape_str(dy.shape()) + " does not match the input");
  Tensor dx = be.alloc_uninitialized(x.shape(), DType::F32, MemCategory::Workspace);  // [B,T,in/p]
  if (n > 0) {
    const DType cdt = weight_.data.dtype();
    Tensor dys = nn::compute_copy(be, dyf, cdt, MemCategory::Workspace);  // [B,T,out], cast once for both GEMMs
    nn::add_to_grad(be, weight_, [&](float* dw) {
      nn::linear_backward_weight(be, dw, TypedPtr::of(dys), TypedPtr::of(x), n, in_local_, out_, cdt);
    });
    // Under sp this rank's rows only; the tp sum follows (grad_sums_over_tp).
    if (has_bias_ && dy.numel() > 0)
      nn::add_to_grad(be, bias_, [&](float* db) { be.bias_grad(db, f32(dy), dy.numel() / out_, out_); });
    nn::linear_backward_input(be, f32(dx), TypedPtr::of(dys), nn::weight_ptr(weight_), n, in_local_, out_);
  }
  nn::grad_ready(ctx, weight_);
  if (has_bias_) nn::grad_ready(ctx, bias_);
  return dx;
}

void RowParallelLinear::collect_params(std::vector<Param*>& out) {
  out.push_back(&weight_);
  if (has_bias_) out.push_back(&bias_);
}

// ---------------------------------------------------------------- VocabParallelEmbedding

VocabParallelEmbedding::VocabParallelEmbedding(const std::string& name, int64_t num, int64_t dim, float init_std,
                                               const TpGroup& group)
    : group_(group), dim_(dim) {
  weight_ = sharded_param(name + ".weight", {num, dim}, InitKind::Normal, init_std, true,
                          ShardSpec{0, group.rank, group.size});
}

Tensor VocabParallelEmbedding::forward(Context& ctx, const Tensor& ids) {
  WEFT_ASSERT(ids.defined() && ids.dtype() == DType::I32, "embedding input must be i32 token ids");
  Backend& be = ctx.backend();
  const int64_t rows = weight_.shape[0], first = group_.rank * rows;
  Shape shape = ids.shape();
  shape.push_back(dim_);
  Tensor partial = be.alloc_uninitialized(shape, DType::F32, MemCategory::Activation);  // [B,T,C], 0 off-shard
  if (ids.numel() > 0)
    be.embedding_forward(f32(partial), ids.data<int32_t>(), nn::weight_ptr(weight_), ids.numel(), dim_, first, rows);
  ctx.save(this, {ids});
  return reduce_partial(ctx, group_, partial, MemCategory::Activation);
}

Tensor VocabParallelEmbedding::backward(Context& ctx, const Tensor& dy) {
  check_input(dy, dim_, weight_.name + " dy");
  Tensor ids = ctx.saved(this)[0];  // [B,T]
  ctx.release(this);
  Tensor dyf = to_full_sequence(ctx, group_, dy, MemCategory::Workspace);  // [B,T,C]
  WEFT_ASSERT(dyf.numel() == ids.numel() * dim_, weight_.name + ": dy does not match the ids");
  const int64_t rows = weight_.shape[0], first = group_.rank * rows;
  Backend& be = ctx.backend();
  if (ids.numel() > 0)
    nn::add_to_grad(be, weight_, [&](float* dw) {
      be.embedding_backward(dw, ids.data<int32_t>(), f32(dyf), ids.numel(), dim_, first, rows);
    });
  nn::grad_ready(ctx, weight_);
  return Tensor();
}

// ---------------------------------------------------------------- VocabParallelOutputLoss

VocabParallelOutputLoss::VocabParallelOutputLoss(Param& table, int64_t vocab, const TpGroup& group)
    : table_(table), vocab_(vocab), group_(group) {
  WEFT_ASSERT(table.shape.size() == 2 && vocab >= 1 && vocab <= table.full_shape.at(0),
              table.name + ": the output layer needs a [Vp/p, C] table with Vp >= vocab");
}

Tensor VocabParallelOutputLoss::forward(Context& ctx, const Tensor& x) {
  const int64_t vs = table_.shape[0], c = table_.shape[1], first = group_.rank * vs;
  check_input(x, c, "output layer input");
  Backend& be = ctx.backend();
  const DType cdt = table_.data.dtype();
  // [B,T,C] in the compute dtype: what the GEMM reads and backward keeps
  Tensor xf = nn::compute_copy(be, to_full_sequence(ctx, group_, x, MemCategory::Activation), cdt,
                               MemCategory::Activation);
  const int64_t b = xf.dim(0), t = xf.dim(1), n = b * t;
  // [B,T,Vp/p]; a 16-bit mode keeps only its compute-dtype copy (below), so there it is scratch
  Tensor logits = be.alloc_uninitialized({b, t, vs}, DType::F32,
                                         cdt == DType::F32 ? MemCategory::Activation : MemCategory::Workspace);
  if (n > 0) nn::linear_forward(be, f32(logits), TypedPtr::of(xf), nn::weight_ptr(table_), n, c, vs);
  if (!ctx.targets.defined()) return gather_logits(be, logits);
  const Tensor& targets = ctx.targets;  // [B,T]
  WEFT_ASSERT(targets.dtype() == DType::I32 && targets.numel() == n,
              "targets " + shape_str(targets.shape()) + " do not match the batch " + shape_str({b, t}));
  const int32_t* tg = targets.data<int32_t>();
  Tensor row_max = be.alloc_uninitialized({n}, DType::F32, MemCategory::Workspace);  // [N]
  Tensor sums = be.alloc_uninitialized({2, n}, DType::F32, MemCategory::Workspace);   // [target logit | sum exp][N]
  Tensor losses = be.alloc_uninitialized({b, t}, DType::F32, MemCategory::Activation);  // [B,T]
  if (n > 0) {
    be.xent_shard_max(f32(row_max), f32(sums), f32(logits), tg, n, vs, first, vocab_);
    all_reduce(group_, row_max, ReduceOp::Max);
    be.xent_shard_sum_exp(f32(sums) + n, f32(logits), f32(row_max), n, vs, first, vocab_);
    all_reduce(group_, sums);
    // dlogits replace the logits in place: [B,T,Vp/p]
    be.xent_shard_finish(f32(losses), f32(logits), f32(logits), tg, f32(row_max), f32(sums) + n, f32(sums), n, vs,
                         first, vocab_, ctx.dloss_scale);
  }
  // Both backward GEMMs read dlogits in the compute dtype: a 16-bit mode keeps only that copy.
  ctx.save(this, {xf, nn::compute_copy(be, logits, cdt, MemCategory::Activation)});
  return losses;
}

Tensor VocabParallelOutputLoss::backward(Context& ctx, const Tensor& /*dy: the loss ends the graph*/) {
  Backend& be = ctx.backend();
  auto& saved = ctx.saved(this);
  const Tensor xf = saved[0], dlogits = saved[1];  // [B,T,C], [B,T,Vp/p], compute dtype
  ctx.release(this);
  const int64_t vs = table_.shape[0], c = table_.shape[1], n = xf.dim(0) * xf.dim(1);
  Tensor dx = be.alloc_uninitialized(xf.shape(), DType::F32, MemCategory::Workspace);  // [B,T,C], partial over tp
  if (n > 0) {
    nn::linear_backward_input(be, f32(dx), TypedPtr::of(dlogits), nn::weight_ptr(table_), n, c, vs);
    nn::add_to_grad(be, table_, [&](float* dw) {
      nn::linear_backward_weight(be, dw, TypedPtr::of(dlogits), TypedPtr::of(xf), n, c, vs, table_.data.dtype());
    });
  }
  return reduce_partial(ctx, group_, dx, MemCategory::Workspace);
}

Tensor VocabParallelOutputLoss::gather_logits(Backend& be, const Tensor& logits) {
  const int64_t p = group_.size, b = logits.dim(0), t = logits.dim(1), vs = logits.dim(2), n = b * t;
  Tensor gathered = be.alloc_uninitialized({p * logits.numel()}, DType::F32, MemCategory::Workspace);  // [p][N][Vs]
  comm_of(group_).all_gather(logits.reshape({logits.numel()}), gathered)->wait();
  Tensor out = be.alloc_uninitialized({b, t, p * vs}, DType::F32, MemCategory::Activation);  // [N][p][Vs]
  for (int64_t r = 0; r < p; ++r)
    for (int64_t i = 0; i < n; ++i) be.copy(out.view((i * p + r) * vs, {vs}), gathered.view((r * n + i) * vs, {vs}));
  return out;
}

}  // namespace weft::tp
