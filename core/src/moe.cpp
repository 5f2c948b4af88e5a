#include "weft/moe.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "weft/error.hpp"
#include "weft/topology.hpp"

namespace weft::nn {

namespace {

std::vector<float> to_host(Backend& be, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) be.copy_to_host(v.data(), t);
  return v;
}

Tensor to_device(Backend& be, const Shape& shape, const std::vector<float>& v, MemCategory category) {
  Tensor t = be.alloc_uninitialized(shape, DType::F32, category);
  if (!v.empty()) be.copy_from_host(t, v.data());
  return t;
}

}  // namespace

OptionSchema moe_schema(const std::string& experts_doc) {
  return {
      opt_int("moe_experts", 0, experts_doc, 0, 1024),
      opt_int("moe_top_k", 2, "experts per token (k), weighted by the router probabilities renormalised over them",
              1, 1024),
      opt_int("moe_every", 1, "blocks i with i % moe_every == 0 get an MoE MLP", 1, 1 << 20),
      opt_float("moe_capacity_factor", 0.0,
                "capacity per expert = ceil(factor x k x tokens / E) per microbatch, slot 0 first; 0 = dropless",
                0.0, 1e6),
      opt_float("moe_aux_loss_coef", 0.01, "load-balancing loss coefficient (Switch/GShard: coef E sum f_i P_i)",
                0.0, 1e6),
      opt_float("moe_z_loss_coef", 0.0, "router z-loss coefficient (coef mean logsumexp(z)^2)", 0.0, 1e6),
  };
}

MoeOptions read_moe_options(const Options& o, const LayerProvider* layers) {
  MoeOptions m;
  m.experts = o.get_int("moe_experts");
  m.top_k = o.get_int("moe_top_k");
  m.every = o.get_int("moe_every");
  m.capacity_factor = o.get_float("moe_capacity_factor");
  m.aux_loss_coef = o.get_float("moe_aux_loss_coef");
  m.z_loss_coef = o.get_float("moe_z_loss_coef");
  if (m.experts > 0 && m.top_k > m.experts)
    o.fail("moe_top_k", "moe_top_k " + std::to_string(m.top_k) + " exceeds moe_experts " + std::to_string(m.experts));
  // Under sequence parallelism each tp rank routes other tokens, while an
  // expert's tp-sharded Linears need the same rows on every tp rank.
  if (m.experts > 0 && layers && layers->sequence_parallel())
    o.fail("moe_experts", "mixture-of-experts blocks with sequence parallelism are not available in this version "
                          "(set parallel.tensor_parallel.sequence_parallel = false)");
  return m;
}

void check_moe_split(const MoeOptions& m, const Options& o, const ParallelEnv* parallel) {
  const int ep = parallel && parallel->topology ? parallel->topology->sizes.ep : 1;
  if (m.experts > 0 && m.experts % ep != 0)
    o.fail("moe_experts", "moe_experts " + std::to_string(m.experts) + " is not divisible by parallel.expert " +
                              std::to_string(ep));
}

MoeSpec moe_spec(const MoeOptions& m, const std::string& name, int64_t dim, float init_std, float proj_init_std,
                 const ParallelEnv* parallel) {
  MoeSpec spec;
  spec.name = name;
  spec.dim = dim;
  spec.experts = m.experts;
  spec.top_k = m.top_k;
  spec.capacity_factor = m.capacity_factor;
  spec.aux_loss_coef = m.aux_loss_coef;
  spec.z_loss_coef = m.z_loss_coef;
  spec.init_std = init_std;
  spec.proj_init_std = proj_init_std;
  if (parallel && parallel->topology) {
    spec.ep = parallel->topology->sizes.ep;
    spec.ep_rank = parallel->topology->coords.ep;
    spec.dispatcher = parallel->dispatcher;
  }
  return spec;
}

// One assignment (token -> expert) that an expert ran, in expert order.
struct MoeMLP::Routing {
  int64_t n = 0;                        // tokens N
  Shape shape;                          // of x
  std::vector<double> probs;            // [N,E] softmax of the router logits
  std::vector<double> lse;              // [N] logsumexp of the router logits
  std::vector<int32_t> chosen;          // [N,k] top-k experts of each token, best first
  std::vector<double> weight;           // [N,k] their renormalised weights
  std::vector<uint8_t> kept;            // [N,k] 1 = within capacity
  std::vector<int64_t> row_token;       // [R] token of each expert row
  std::vector<int64_t> row_slot;        // [R] its slot t*k + j
  std::vector<int64_t> rows_of_expert;  // [E]
  std::vector<double> assigned_share;   // [E] f_i: share of the N k assignments (before drops)
  std::vector<float> y;                 // [R,C] expert outputs, unweighted
  DispatchLayout layout;                // where the rows went (expert parallelism)
  double grad_scale = 0;                // weight of this microbatch's aux and z losses
};

MoeMLP::MoeMLP(const MoeSpec& spec, LayerProvider& layers)
    : spec_(spec), router_(spec.name + ".router", spec.dim, spec.experts, /*bias=*/false, spec.init_std) {
  WEFT_ASSERT(spec.experts >= 1 && spec.top_k >= 1 && spec.top_k <= spec.experts,
              spec.name + ": top_k must be in 1..experts");
  WEFT_ASSERT(spec.ep >= 1 && spec.experts % spec.ep == 0 && spec.ep_rank >= 0 && spec.ep_rank < spec.ep,
              spec.name + ": experts must split evenly over the ep ranks");
  for (int64_t e = 0; e < spec.experts; ++e) {
    const std::string name = spec.name + ".experts." + std::to_string(e);
    if (spec.make_expert)
      experts_.push_back(spec.make_expert(name, layers));
    else
      experts_.push_back(std::make_unique<MLP>(name, spec.dim, layers, spec.init_std, spec.proj_init_std));
    std::vector<Param*> params;
    experts_.back()->collect_params(params);
    for (Param* p : params) {
      p->expert = true;
      p->ep_owner = static_cast<int>(e / local_experts());
    }
  }
}

// Without expert parallelism the rows stay where they are.
DispatchLayout MoeMLP::plan(const std::vector<int64_t>& rows_of_expert) {
  WEFT_ASSERT(spec_.ep == 1 || spec_.dispatcher, spec_.name + ": expert parallelism needs a dispatcher");
  if (spec_.ep > 1) return spec_.dispatcher->plan(rows_of_expert);
  DispatchLayout layout;
  layout.experts = spec_.experts;
  layout.counts = rows_of_expert;
  return layout;
}

Tensor MoeMLP::to_experts(const DispatchLayout& layout, const Tensor& rows) {
  return spec_.ep > 1 ? spec_.dispatcher->to_experts(layout, rows) : rows;
}

Tensor MoeMLP::to_tokens(const DispatchLayout& layout, const Tensor& rows) {
  return spec_.ep > 1 ? spec_.dispatcher->to_tokens(layout, rows) : rows;
}

Tensor MoeMLP::forward(Context& ctx, const Tensor& x) {
  Backend& be = ctx.backend();
  const int64_t C = spec_.dim, E = spec_.experts, k = spec_.top_k;
  WEFT_ASSERT(x.defined() && x.dim(-1) == C, spec_.name + ": input must be [..., C]");
  auto r = std::make_shared<Routing>();
  const int64_t N = x.numel() / C;
  r->n = N;
  r->shape = x.shape();

  // Router and gate, on the host: p = softmax(z), the top k, renormalised.
  Tensor z = router_.forward(ctx, x.reshape({N, C}));  // [N,E]
  const std::vector<float> zh = to_host(be, z);
  r->probs.resize(N * E);
  r->lse.resize(N);
  r->chosen.resize(N * k);
  r->weight.resize(N * k);
  std::vector<int64_t> assigned(E, 0);
  std::vector<int32_t> order(E);
  for (int64_t t = 0; t < N; ++t) {
    const float* zt = zh.data() + t * E;
    double mx = zt[0];
    for (int64_t e = 1; e < E; ++e) mx = std::max(mx, static_cast<double>(zt[e]));
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += std::exp(zt[e] - mx);
    r->lse[t] = mx + std::log(sum);
    for (int64_t e = 0; e < E; ++e) r->probs[t * E + e] = std::exp(zt[e] - r->lse[t]);
    std::iota(order.begin(), order.end(), 0);
    const double* pt = r->probs.data() + t * E;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return pt[a] > pt[b] || (pt[a] == pt[b] && a < b); });
    double top = 0;
    for (int64_t j = 0; j < k; ++j) top += pt[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      r->chosen[t * k + j] = order[j];
      r->weight[t * k + j] = pt[order[j]] / top;
      ++assigned[order[j]];
    }
  }
  // Capacity: slot 0 of every token first, then slot 1, ...
  const int64_t capacity = spec_.capacity_factor > 0
                               ? static_cast<int64_t>(std::ceil(spec_.capacity_factor * N * k / E))
                               : N * k;
  r->kept.assign(N * k, 0);
  std::vector<int64_t> taken(E, 0);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < N; ++t) {
      const int32_t e = r->chosen[t * k + j];
      if (taken[e] < capacity) ++taken[e], r->kept[t * k + j] = 1;
    }
  // Expert rows, grouped by expert, tokens in order.
  r->rows_of_expert.assign(E, 0);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t j = 0; j < k; ++j)
        if (r->kept[t * k + j] && r->chosen[t * k + j] == e) {
          r->row_token.push_back(t);
          r->row_slot.push_back(t * k + j);
          ++r->rows_of_expert[e];
        }
  const int64_t R = static_cast<int64_t>(r->row_token.size());
  const std::vector<float> xh = to_host(be, x);
  std::vector<float> xg(R * C);
  for (int64_t i = 0; i < R; ++i) std::copy_n(xh.data() + r->row_token[i] * C, C, xg.data() + i * C);
  Tensor xd = to_device(be, {R, C}, xg, MemCategory::Activation);  // [R,C]

  // Experts: the rows travel to their experts' ranks; each local expert runs
  // its MLP over its rows [R',C]; the outputs come back [R,C].
  r->layout = plan(r->rows_of_expert);
  Tensor xe = to_experts(r->layout, xd);  // [R',C], kept by the experts' Linears
  const std::vector<int64_t> local_rows = r->layout.local_rows();
  Tensor ye_all = be.alloc_uninitialized({xe.dim(0), C}, DType::F32, MemCategory::Activation);
  for (int64_t j = 0, first = 0; j < local_experts(); first += local_rows[j], ++j) {
    const int64_t rows = local_rows[j];
    Tensor ye = experts_[first_local() + j]->forward(ctx, xe.view(first * C, {rows, C}));  // [rows, C]
    if (rows > 0) be.copy(ye_all.view(first * C, {rows, C}), ye);
  }
  r->y = to_host(be, to_tokens(r->layout, ye_all));  // [R,C]
  // Combine: out[t] = sum over its kept slots of weight * y.
  std::vector<float> out(N * C, 0.f);
  for (int64_t i = 0; i < R; ++i) {
    const float w = static_cast<float>(r->weight[r->row_slot[i]]);
    float* o = out.data() + r->row_token[i] * C;
    const float* y = r->y.data() + i * C;
    for (int64_t c = 0; c < C; ++c) o[c] += w * y[c];
  }

  // Auxiliary losses and what to log: f_i over all N k assignments, P_i the mean probability.
  r->assigned_share.resize(E);
  double aux = 0, zloss = 0;
  for (int64_t e = 0; e < E; ++e) {
    r->assigned_share[e] = static_cast<double>(assigned[e]) / static_cast<double>(N * k);
    double mean_p = 0;
    for (int64_t t = 0; t < N; ++t) mean_p += r->probs[t * E + e];
    aux += r->assigned_share[e] * mean_p / static_cast<double>(N);
  }
  aux *= spec_.aux_loss_coef * static_cast<double>(E);
  for (int64_t t = 0; t < N; ++t) zloss += r->lse[t] * r->lse[t];
  zloss *= spec_.z_loss_coef / static_cast<double>(N);
  // The microbatch's share of the step: N tokens of the global batch's 1 / dloss_scale.
  r->grad_scale = static_cast<double>(N) * ctx.dloss_scale;
  int64_t kept_rows = R, busiest = 0;
  for (int64_t e = 0; e < E; ++e) busiest = std::max(busiest, r->rows_of_expert[e]);
  ctx.stats["aux_loss"] += aux * r->grad_scale;
  ctx.stats["z_loss"] += zloss * r->grad_scale;
  ctx.stats["moe_assignments"] += static_cast<double>(N * k);
  ctx.stats["moe_dropped"] += static_cast<double>(N * k - kept_rows);
  ctx.stats["moe_load_ratio_sum"] +=
      kept_rows > 0 ? static_cast<double>(busiest) * static_cast<double>(E) / static_cast<double>(kept_rows) : 0.0;
  ctx.stats["moe_layer_microbatches"] += 1;

  ctx.save_state(this, r);  // the experts keep their own inputs (views of xd)
  return to_device(be, x.shape(), out, MemCategory::Activation);
}

Tensor MoeMLP::backward(Context& ctx, const Tensor& dy) {
  Backend& be = ctx.backend();
  const int64_t C = spec_.dim, E = spec_.experts, k = spec_.top_k;
  Routing& r = ctx.state<Routing>(this);
  const int64_t N = r.n, R = static_cast<int64_t>(r.row_token.size());
  const std::vector<float> dout = to_host(be, dy);  // [N,C]

  // Expert rows' gradients: d(y_i) = weight * dout[token]; d(weight) = <dout[token], y_i>.
  std::vector<float> dyg(R * C);
  std::vector<double> dweight(N * k, 0.0);
  for (int64_t i = 0; i < R; ++i) {
    const int64_t t = r.row_token[i], slot = r.row_slot[i];
    const float w = static_cast<float>(r.weight[slot]);
    const float* d = dout.data() + t * C;
    const float* y = r.y.data() + i * C;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) {
      dyg[i * C + c] = w * d[c];
      dot += static_cast<double>(d[c]) * y[c];
    }
    dweight[slot] = dot;
  }
  // The same journey as the forward's rows: to the experts [R',C], backward
  // through each local expert (last first), the input gradients back [R,C].
  Tensor dye = to_experts(r.layout, to_device(be, {R, C}, dyg, MemCategory::Workspace));
  const std::vector<int64_t> local_rows = r.layout.local_rows();
  Tensor dxe_all = be.alloc_uninitialized({dye.dim(0), C}, DType::F32, MemCategory::Workspace);
  for (int64_t j = local_experts() - 1, end = dye.dim(0); j >= 0; --j) {
    const int64_t rows = local_rows[j], first = end - rows;
    Tensor dxe = experts_[first_local() + j]->backward(ctx, dye.view(first * C, {rows, C}));  // [rows, C]
    if (rows > 0) be.copy(dxe_all.view(first * C, {rows, C}), dxe);
    end = first;
  }
  const std::vector<float> dxg = to_host(be, to_tokens(r.layout, dxe_all));  // [R,C]
  std::vector<float> dx(N * C, 0.f);
  for (int64_t i = 0; i < R; ++i) {
    float* o = dx.data() + r.row_token[i] * C;
    for (int64_t c = 0; c < C; ++c) o[c] += dxg[i * C + c];
  }

  // Gate: weights w_j = p_j / S over the top k  =>  dp_i = (dw_i - sum_j dw_j w_j) / S;
  // aux: dp_ti += g a E f_i / N; softmax; z-loss: dz_tj += g b 2 lse_t p_tj / N.
  std::vector<float> dz(N * E);
  const double g = r.grad_scale;
  for (int64_t t = 0; t < N; ++t) {
    const double* p = r.probs.data() + t * E;
    std::vector<double> dp(E, 0.0);
    double top = 0, mixed = 0;
    for (int64_t j = 0; j < k; ++j) {
      top += p[r.chosen[t * k + j]];
      mixed += dweight[t * k + j] * r.weight[t * k + j];
    }
    for (int64_t j = 0; j < k; ++j) dp[r.chosen[t * k + j]] += (dweight[t * k + j] - mixed) / top;
    for (int64_t e = 0; e < E; ++e)
      dp[e] += g * spec_.aux_loss_coef * static_cast<double>(E) * r.assigned_share[e] / static_cast<double>(N);
    double pdp = 0;
    for (int64_t e = 0; e < E; ++e) pdp += p[e] * dp[e];
    const double zterm = g * spec_.z_loss_coef * 2.0 * r.lse[t] / static_cast<double>(N);
    for (int64_t e = 0; e < E; ++e) dz[t * E + e] = static_cast<float>(p[e] * (dp[e] - pdp) + zterm * p[e]);
  }
  Tensor dxr = router_.backward(ctx, to_device(be, {N, E}, dz, MemCategory::Workspace));  // [N,C]
  Tensor out = to_device(be, r.shape, dx, MemCategory::Workspace);
  if (N > 0) be.accumulate(out.data<float>(), dxr.data<float>(), N * C);
  ctx.release(this);  // the routing state, last: `r` refers to it
  return out;
}

void MoeMLP::collect_params(std::vector<Param*>& out) {
  router_.collect_params(out);
  for (auto& e : experts_) e->collect_params(out);
}

}  // namespace weft::nn
