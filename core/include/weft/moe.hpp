// Mixture-of-experts MLP (a drop-in for nn::MLP inside a Block):
//   router   z = x Wr^T, Wr [E, C] ("<name>.router.weight", no bias)
//   gate     p = softmax(z); each token picks its top-k experts and weighs
//            them by p renormalised over those k (Mixtral's convention)
//   experts  E MLPs ("<name>.experts.<e>.*") of the shape the model chooses
//            (MoeSpec::make_expert: GPT-2's fc/proj by default, Llama's
//            gate/up/down SwiGLU), each run as one GEMM per Linear over its tokens
//   capacity with capacity_factor f > 0 an expert takes at most
//            ceil(f k N / E) assignments of a microbatch's N tokens, slot 0 of
//            every token first; the rest are dropped (their share of the
//            output is 0: the residual carries the token). f = 0: dropless.
//   losses   load balancing aux = a E sum_i f_i P_i (f_i: share of the N k
//            assignments routed to i before drops, P_i: mean router
//            probability of i) and router z-loss b mean_t logsumexp(z_t)^2,
//            each added to the objective once per microbatch with weight
//            micro / global (the microbatch's share of the step)
//   experts  split over the ep group (weft/expert.hpp): this rank runs experts
//            [ep_rank E/ep, (ep_rank+1) E/ep) over the rows every ep rank
//            routes to them; the Dispatcher moves rows there and back. The
//            model declares all E (checkpoints name them all); only the local
//            ones get storage.
// Routing and the weighted combine run on the host (N x E and N x k values);
// the expert GEMMs on the backend. Letters: N tokens, C width, E experts,
// R routed rows of this rank's tokens, R' rows its experts receive.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/expert.hpp"
#include "weft/layers.hpp"
#include "weft/module.hpp"
#include "weft/nn.hpp"
#include "weft/options.hpp"

namespace weft::nn {

struct MoeSpec {
  std::string name;  // e.g. "blocks.1.mlp"
  int64_t dim = 0;           // C
  int64_t experts = 8;       // E
  int64_t top_k = 2;         // k
  double capacity_factor = 0;  // 0 = dropless
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0;
  float init_std = 0.02f, proj_init_std = 0.02f;
  int ep = 1, ep_rank = 0;           // expert-parallel size and this rank's place
  Dispatcher* dispatcher = nullptr;  // required when ep > 1
  // Builds expert e's MLP [..., C] -> [..., C] named `name` ("<spec.name>.experts.<e>");
  // null: nn::MLP (C -> 4C -> C, GeLU, biases, init_std / proj_init_std).
  std::function<std::unique_ptr<Module>(const std::string& name, LayerProvider& layers)> make_expert;
};

// A model's mixture-of-experts [model] options (gpt and llama take the same):
// moe_experts, moe_top_k, moe_every, moe_capacity_factor, moe_aux_loss_coef, moe_z_loss_coef.
struct MoeOptions {
  int64_t experts = 0, top_k = 2, every = 1;  // blocks i with i % every == 0 when experts > 0
  double capacity_factor = 0, aux_loss_coef = 0.01, z_loss_coef = 0;
  bool is_moe_block(int64_t i) const { return experts > 0 && i % every == 0; }
};
// Their schema; `experts_doc` describes moe_experts (what an expert is in this model).
OptionSchema moe_schema(const std::string& experts_doc);
// Reads and checks them (Options::fail names the key and the numbers): top_k
// at most experts; no MoE blocks under sequence parallelism (`layers` null: one rank).
MoeOptions read_moe_options(const Options& o, const LayerProvider* layers);
// Refuses experts that do not split evenly over the ep ranks of `parallel` (null: one rank).
void check_moe_split(const MoeOptions& m, const Options& o, const ParallelEnv* parallel);
// The MoeSpec of the MLP `name` of width `dim`, with this rank's place in the
// ep group of `parallel` (null: one ep rank); make_expert left to the model.
MoeSpec moe_spec(const MoeOptions& m, const std::string& name, int64_t dim, float init_std, float proj_init_std,
                 const ParallelEnv* parallel);

class MoeMLP : public Module {
 public:
  MoeMLP(const MoeSpec& spec, LayerProvider& layers);

  Tensor forward(Context& ctx, const Tensor& x) override;    // x [..., C] -> [..., C]
  Tensor backward(Context& ctx, const Tensor& dy) override;  // dy [..., C] -> dx [..., C]
  void collect_params(std::vector<Param*>& out) override;

  Linear& router() { return router_; }
  Module& expert(int64_t e) { return *experts_.at(static_cast<size_t>(e)); }

 private:
  struct Routing;  // one microbatch's decisions, kept for backward
  int64_t first_local() const { return spec_.ep_rank * (spec_.experts / spec_.ep); }
  int64_t local_experts() const { return spec_.experts / spec_.ep; }
  DispatchLayout plan(const std::vector<int64_t>& rows_of_expert);
  Tensor to_experts(const DispatchLayout& layout, const Tensor& rows);
  Tensor to_tokens(const DispatchLayout& layout, const Tensor& rows);
  MoeSpec spec_;
  Linear router_;                                 // C -> E
  std::vector<std::unique_ptr<Module>> experts_;  // E expert MLPs [..., C] -> [..., C]
};

}  // namespace weft::nn
